/* catalog.c - the task catalogue (see catalog.h). */
#include "catalog.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
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

static int parse(const char *text, size_t len, const char *path)
{
	json_error_t jerr;
	json_t *root = json_loadb(text, len, 0, &jerr);
	json_t *list = root ? json_object_get(root, "tasks") : NULL;
	if (!json_is_array(list)) {
		log_error("catalog", "worker=\"%s\" msg=\"--describe did not print {\\\"tasks\\\": [...]}\"",
			  path);
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
 * problem when it failed, else warnings. */
static void log_stderr(int fd, int failed)
{
	struct buf b = {0};
	char tmp[4096];
	ssize_t n;
	lseek(fd, 0, SEEK_SET);
	while ((n = read(fd, tmp, sizeof tmp)) > 0 && b.len < 65536)
		buf_add(&b, tmp, (size_t)n);
	for (char *line = b.data, *nl; line && *line; line = nl ? nl + 1 : NULL) {
		nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		static const char prefix[] = "forkpool-worker: ";
		if (!strncmp(line, prefix, sizeof prefix - 1))
			line += sizeof prefix - 1;
		if (!*line)
			continue;
		/* logfmt: the message quoted, its quotes and backslashes escaped */
		struct buf q = {0};
		for (const char *c = line; *c; c++) {
			if (*c == '"' || *c == '\\')
				buf_addc(&q, '\\');
			buf_addc(&q, *c);
		}
		if (failed)
			log_error("config", "msg=\"%s\"", q.data);
		else
			log_warn("worker_stderr", "msg=\"%s\"", q.data);
		buf_free(&q);
	}
	buf_free(&b);
}

int catalog_load(const char *worker_path) { return catalog_load_with(worker_path, NULL); }

int catalog_load_with(const char *worker_path, char *const *extra)
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
	int rc = posix_spawn(&pid, worker_path, &fa, NULL, argv, environ);
	free(argv);
	posix_spawn_file_actions_destroy(&fa);
	close(pfd[1]);
	if (rc != 0) {
		close(pfd[0]);
		if (efd >= 0)
			close(efd);
		log_error("catalog", "worker=\"%s\" msg=\"cannot run it: %s\"", worker_path, strerror(rc));
		return -1;
	}
	struct buf out = {0};
	char tmp[4096];
	ssize_t n;
	while ((n = read(pfd[0], tmp, sizeof tmp)) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		buf_add(&out, tmp, (size_t)n);
	}
	close(pfd[0]);
	int status = 0;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
	if (efd >= 0) {
		log_stderr(efd, !ok);
		close(efd);
	}
	if (!ok) {
		if (WIFEXITED(status) && WEXITSTATUS(status) == WORKER_EXIT_CONFIG)
			log_error("catalog", "worker=\"%s\" msg=\"the plugins or tasks files above are "
					     "not usable; fix them and start again\"", worker_path);
		else if (WIFSIGNALED(status))
			log_error("catalog", "worker=\"%s\" msg=\"--describe was killed by signal %d\"",
				  worker_path, WTERMSIG(status));
		else
			log_error("catalog", "worker=\"%s\" msg=\"--describe exited with status %d\"",
				  worker_path, WEXITSTATUS(status));
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
