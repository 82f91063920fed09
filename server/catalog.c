/* catalog.c - the task catalogue (see catalog.h). */
#include "catalog.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "frame.h"
#include "log.h"

extern char **environ;

const char *const ptype_names[] = {"int", "uint", "number", "unumber", "string", "any"};

static struct task_info *tasks;
static int ntasks;

static int parse_type(const char *s, enum ptype *out)
{
	for (int i = 0; i <= PT_ANY; i++)
		if (!strcmp(s, ptype_names[i])) {
			*out = (enum ptype)i;
			return 0;
		}
	return -1;
}

/* Appends s[0..n) for a logfmt value in quotes: its quotes and backslashes
 * escaped, a newline as \n, other control bytes as '?'. */
static void add_quoted(struct buf *q, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '"' || s[i] == '\\')
			buf_addc(q, '\\');
		if (s[i] == '\n')
			buf_adds(q, "\\n");
		else
			buf_addc(q, (unsigned char)s[i] < 0x20 ? '?' : s[i]);
	}
}

static int parse(const char *text, size_t len, const char *path)
{
	json_error_t jerr;
	json_t *root = json_loadb(text, len, 0, &jerr);
	json_t *list = root ? json_object_get(root, "tasks") : NULL;
	if (!json_is_array(list)) {
		/* A plugin's own output cannot get here (the worker keeps its
		 * stdout for the catalogue): the program is not this version's
		 * worker. What it printed says what it is. */
		struct buf q = {0};
		add_quoted(&q, text, len < 120 ? len : 120);
		log_error("catalog", "worker=\"%s\" msg=\"--describe did not print {\\\"tasks\\\": [...]} "
				     "(is --worker a forkpool-worker of this version?); it printed: %s%s\"",
			  path, q.data ? q.data : "", len > 120 ? "..." : "");
		buf_free(&q);
		json_decref(root);
		return -1;
	}
	ntasks = (int)json_array_size(list);
	tasks = calloc((size_t)ntasks + 1, sizeof *tasks);
	if (!tasks)
		abort();
	size_t i;
	json_t *t;
	json_array_foreach(list, i, t)
	{
		struct task_info *ti = &tasks[i];
		const char *name = json_string_value(json_object_get(t, "name"));
		json_t *params = json_object_get(t, "params");
		if (!name || !*name || strlen(name) >= sizeof ti->name || !json_is_array(params) ||
		    json_array_size(params) > CATALOG_MAX_PARAMS) {
			log_error("catalog", "worker=\"%s\" msg=\"task %zu is malformed\"", path, i);
			json_decref(root);
			return -1;
		}
		snprintf(ti->name, sizeof ti->name, "%s", name);
		const char *doc = json_string_value(json_object_get(t, "doc"));
		ti->doc = strdup(doc ? doc : "");
		ti->nparams = (int)json_array_size(params);
		ti->required = (int)json_integer_value(json_object_get(t, "required"));
		ti->variadic = json_is_true(json_object_get(t, "variadic"));
		ti->timeout = json_number_value(json_object_get(t, "timeout"));
		const char *origin = json_string_value(json_object_get(t, "origin"));
		ti->origin = origin ? strdup(origin) : NULL;
		for (int k = 0; k < ti->nparams; k++) {
			json_t *p = json_array_get(params, (size_t)k);
			const char *pn = json_string_value(json_object_get(p, "name"));
			const char *pt = json_string_value(json_object_get(p, "type"));
			ti->params[k].name = strdup(pn ? pn : "arg");
			if (!pt || parse_type(pt, &ti->params[k].type) < 0) {
				log_error("catalog", "worker=\"%s\" task=%s msg=\"unknown parameter type\"",
					  path, name);
				json_decref(root);
				return -1;
			}
		}
		if (ti->required < 0 || ti->required > ti->nparams || (ti->variadic && !ti->nparams)) {
			log_error("catalog", "worker=\"%s\" task=%s msg=\"bad arity\"", path, name);
			json_decref(root);
			return -1;
		}
		for (size_t j = 0; j < i; j++)
			if (!strcmp(tasks[j].name, ti->name)) {
				log_error("catalog", "worker=\"%s\" task=%s msg=\"named twice\"", path, name);
				json_decref(root);
				return -1;
			}
	}
	json_decref(root);
	return 0;
}

/* Logs what the worker said on stderr, one event per line: a configuration
 * problem when it failed, else warnings. Its "loading ..." lines are not
 * logged: the last one, which says what it was loading when it ended (""
 * once it had loaded everything), goes to last. */
static void log_stderr(int fd, int failed, char *last, size_t lastlen)
{
	struct buf b = {0};
	char tmp[4096];
	ssize_t n;
	last[0] = '\0';
	lseek(fd, 0, SEEK_SET);
	while ((n = read(fd, tmp, sizeof tmp)) > 0 && b.len < 65536)
		buf_add(&b, tmp, (size_t)n);
	for (char *line = b.data, *nl; line && *line; line = nl ? nl + 1 : NULL) {
		nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		static const char prefix[] = "forkpool-worker: ";
		if (!strncmp(line, prefix, sizeof prefix - 1)) {
			line += sizeof prefix - 1;
			if (!strncmp(line, DESCRIBE_LOADING, strlen(DESCRIBE_LOADING))) {
				line += strlen(DESCRIBE_LOADING);
				snprintf(last, lastlen, "%s", strcmp(line, "done") ? line : "");
				continue;
			}
		}
		if (!*line)
			continue;
		struct buf q = {0};
		add_quoted(&q, line, strlen(line));
		if (failed) {
			log_error("config", "msg=\"%s\"", q.data);
		} else if (last[0]) {
			/* A plugin that prints while it loads: say which. */
			struct buf w = {0};
			add_quoted(&w, last, strlen(last));
			log_warn("worker_stderr", "loading=\"%s\" msg=\"%s\"", w.data, q.data);
			buf_free(&w);
		} else {
			log_warn("worker_stderr", "msg=\"%s\"", q.data);
		}
		buf_free(&q);
	}
	buf_free(&b);
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reads the --describe run pid's stdout (out, which this closes) into b
 * until it ends. 0: it ended, its wait status in *status; 1: it was still
 * running at deadline (monotonic ms; < 0: none); CATALOG_STOPPED: stop_fd
 * became readable. Either way it has been reaped, and whatever is left in
 * its process group (it leads one) is killed. */
static int wait_describe(pid_t pid, int out, struct buf *b, int64_t deadline, int stop_fd,
			 int *status)
{
	int rc;
	for (;;) {
		if (out < 0) {
			pid_t r = waitpid(pid, status, WNOHANG);
			if (r == pid || (r < 0 && errno == ECHILD)) {
				if (r < 0)
					*status = 255 << 8; /* reaped by someone else: unknown */
				kill(-pid, SIGKILL);
				return 0;
			}
		}
		/* Once its stdout is closed, only the exit is left to wait for:
		 * a moment, normally. */
		int timeout = out < 0 ? 5 : -1;
		if (deadline >= 0) {
			int64_t left = deadline - mono_ms();
			if (left <= 0) {
				rc = 1;
				break;
			}
			if (timeout < 0 || left < timeout)
				timeout = (int)left;
		}
		struct pollfd pf[2] = {{.fd = stop_fd, .events = POLLIN}, {.fd = out, .events = POLLIN}};
		if (poll(pf, 2, timeout) < 0 && errno != EINTR) {
			rc = 1;
			break;
		}
		if (pf[0].revents) {
			rc = CATALOG_STOPPED;
			break;
		}
		if (out >= 0 && pf[1].revents) {
			char tmp[4096];
			ssize_t n = read(out, tmp, sizeof tmp);
			if (n > 0)
				buf_add(b, tmp, (size_t)n);
			else if (n == 0 || errno != EINTR) {
				close(out);
				out = -1;
			}
		}
	}
	if (out >= 0)
		close(out);
	kill(-pid, SIGKILL);
	while (waitpid(pid, status, 0) < 0 && errno == EINTR)
		;
	return rc;
}

void catalog_worker_spawnattr(posix_spawnattr_t *at)
{
	posix_spawnattr_init(at);
	sigset_t none, all;
	sigemptyset(&none);
	sigfillset(&all);
	posix_spawnattr_setsigmask(at, &none);
	posix_spawnattr_setsigdefault(at, &all);
	posix_spawnattr_setpgroup(at, 0);
	posix_spawnattr_setflags(at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP);
}

int catalog_load(const char *worker_path) { return catalog_load_with(worker_path, NULL, NULL); }

int catalog_load_with(const char *worker_path, char *const *extra, const struct catalog_limits *lim)
{
	int pfd[2];
	if (pipe2(pfd, O_CLOEXEC) < 0)
		return -1;
	/* Its stderr goes to a file we read after it ends (a pipe could fill). */
	int efd = memfd_create("forkpool-describe-stderr", MFD_CLOEXEC);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
	if (efd >= 0)
		posix_spawn_file_actions_adddup2(&fa, efd, 2);
	/* Its own process group: what a plugin started while loading is
	 * killed with it. */
	posix_spawnattr_t at;
	catalog_worker_spawnattr(&at);
	size_t nextra = 0;
	while (extra && extra[nextra])
		nextra++;
	char **argv = calloc(nextra + 3, sizeof *argv);
	if (!argv)
		abort();
	argv[0] = (char *)worker_path;
	for (size_t i = 0; i < nextra; i++)
		argv[i + 1] = extra[i];
	argv[nextra + 1] = "--describe";
	pid_t pid;
	int rc = posix_spawn(&pid, worker_path, &fa, &at, argv, environ);
	free(argv);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	close(pfd[1]);
	if (rc != 0) {
		close(pfd[0]);
		if (efd >= 0)
			close(efd);
		log_error("catalog", "worker=\"%s\" msg=\"cannot run it: %s\"", worker_path, strerror(rc));
		return -1;
	}
	int64_t timeout_ms = lim ? lim->timeout_ms : 0;
	struct buf out = {0};
	int status = 0;
	int waited = wait_describe(pid, pfd[0], &out, timeout_ms > 0 ? mono_ms() + timeout_ms : -1,
				   lim ? lim->stop_fd : -1, &status);
	if (waited == CATALOG_STOPPED) {
		if (efd >= 0)
			close(efd);
		buf_free(&out);
		return CATALOG_STOPPED;
	}
	int ok = !waited && WIFEXITED(status) && WEXITSTATUS(status) == 0;
	char last[PATH_MAX + 32] = ""; /* what it was loading when it ended */
	if (efd >= 0) {
		log_stderr(efd, !ok, last, sizeof last);
		close(efd);
	}
	if (!ok) {
		char how[96];
		if (waited)
			snprintf(how, sizeof how, "did not end within the --start-timeout of %g s",
				 (double)timeout_ms / 1000);
		else if (WIFSIGNALED(status))
			snprintf(how, sizeof how, "was killed by signal %d (%s)", WTERMSIG(status),
				 strsignal(WTERMSIG(status)));
		else
			snprintf(how, sizeof how, "exited with status %d", WEXITSTATUS(status));
		int config = !waited && WIFEXITED(status) && WEXITSTATUS(status) == WORKER_EXIT_CONFIG;
		if (!config && last[0]) {
			/* It hung or crashed in an extension's code: name that one
			 * (last is "plugin /x.so" or "tasks file /t.json"). */
			struct buf what = {0};
			add_quoted(&what, last, strlen(last));
			int plugin = !strncmp(last, "plugin ", 7);
			log_error("config", "msg=\"%s: the worker's --describe %s while loading it%s\"",
				  what.data, how,
				  !plugin  ? ""
				  : waited ? " (it was killed): its constructors and forkpool_plugin() "
					     "must return at once"
					   : " (in its constructors or forkpool_plugin())");
			buf_free(&what);
			config = 1;
		}
		if (config)
			log_error("catalog", "worker=\"%s\" msg=\"the plugins or tasks files above are "
					     "not usable; fix them and start again\"", worker_path);
		else
			log_error("catalog", "worker=\"%s\" msg=\"--describe %s%s\"", worker_path, how,
				  waited ? " (it was killed)" : "");
		buf_free(&out);
		return -1;
	}
	rc = parse(out.data ? out.data : "", out.len, worker_path);
	buf_free(&out);
	if (rc == 0) {
		int added = 0;
		for (int i = 0; i < ntasks; i++)
			added += tasks[i].origin != NULL;
		log_info("catalog", "worker=\"%s\" tasks=%d added=%d", worker_path, ntasks, added);
	}
	return rc;
}

void catalog_free(void)
{
	for (int i = 0; i < ntasks; i++) {
		free(tasks[i].doc);
		free(tasks[i].origin);
		for (int k = 0; k < tasks[i].nparams; k++)
			free(tasks[i].params[k].name);
	}
	free(tasks);
	tasks = NULL;
	ntasks = 0;
}

const struct task_info *catalog_find(const char *name)
{
	for (int i = 0; i < ntasks; i++)
		if (!strcmp(tasks[i].name, name))
			return &tasks[i];
	return NULL;
}

int catalog_count(void) { return ntasks; }
const struct task_info *catalog_at(int i) { return i >= 0 && i < ntasks ? &tasks[i] : NULL; }

static const char *json_kind(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return "an object";
	case JSON_ARRAY: return "an array";
	case JSON_STRING: return "a string";
	case JSON_INTEGER: return "an integer";
	case JSON_REAL: return "a number";
	case JSON_TRUE:
	case JSON_FALSE: return "a boolean";
	default: return "null";
	}
}

/* Whether an integer argument v fits a parameter of type t. */
static int int_ok(enum ptype t, json_int_t v)
{
	switch (t) {
	case PT_INT:
	case PT_NUMBER:
	case PT_ANY: return 1;
	case PT_UINT:
	case PT_UNUMBER: return v >= 0;
	case PT_STRING: return 0;
	}
	return 0;
}

static int type_ok(enum ptype t, const json_t *v)
{
	if (json_is_integer(v))
		return int_ok(t, json_integer_value(v));
	switch (t) {
	case PT_INT:
	case PT_UINT: return 0;
	case PT_NUMBER: return json_is_number(v);
	case PT_UNUMBER: return json_is_number(v) && json_number_value(v) >= 0;
	case PT_STRING: return json_is_string(v);
	case PT_ANY: return 1;
	}
	return 0;
}

/* Whether n arguments are a right count for t. */
static int count_ok(const struct task_info *t, int n)
{
	return n >= t->required && (t->variadic || n <= t->nparams);
}

int catalog_ints_ok(const struct task_info *t, const int64_t *v, int n)
{
	if (!count_ok(t, n))
		return 0;
	for (int i = 0; i < n; i++)
		if (!int_ok(t->params[i < t->nparams ? i : t->nparams - 1].type, v[i]))
			return 0;
	return 1;
}

static const char *const type_words[] = {"an integer", "an integer >= 0", "a number",
					 "a number >= 0", "a string", "any value"};

int catalog_check(const struct task_info *t, const json_t *args, char *err, size_t errlen)
{
	if (!json_is_array(args)) {
		snprintf(err, errlen, "must be an array of arguments, got %s", json_kind(args));
		return -1;
	}
	int n = (int)json_array_size(args);
	int max = t->variadic ? -1 : t->nparams;
	if (!count_ok(t, n)) {
		if (max == t->required)
			snprintf(err, errlen, "%s takes %d argument%s, got %d", t->name, max,
				 max == 1 ? "" : "s", n);
		else if (max < 0)
			snprintf(err, errlen, "%s takes at least %d argument%s, got %d", t->name,
				 t->required, t->required == 1 ? "" : "s", n);
		else
			snprintf(err, errlen, "%s takes %d to %d arguments, got %d", t->name, t->required,
				 max, n);
		return -1;
	}
	for (int i = 0; i < n; i++) {
		int k = i < t->nparams ? i : t->nparams - 1;
		const json_t *v = json_array_get(args, (size_t)i);
		if (!type_ok(t->params[k].type, v)) {
			snprintf(err, errlen, "%s: argument %d (%s) must be %s, got %s", t->name, i,
				 t->params[k].name, type_words[t->params[k].type],
				 json_is_integer(v) && t->params[k].type == PT_UINT ? "a negative integer"
				 : json_is_number(v) && t->params[k].type == PT_UNUMBER
				     ? "a negative number"
				     : json_kind(v));
			return -1;
		}
	}
	return 0;
}
