/* program.c - programs as tasks (see program.h).
 *
 * Children are started with fork + execve rather than posix_spawn because
 * each must ask for PR_SET_PDEATHSIG between the two: a worker killed for a
 * timeout (SIGKILL) cannot clean up, and its programs must not outlive it.
 * The death signal is tied to the thread that forked, so only the worker's
 * main thread (which lives as long as the process) starts programs. Between
 * fork and execve the child makes only async-signal-safe calls (the worker
 * has a second thread); an exec failure travels back on a CLOEXEC pipe, so a
 * program that cannot start is known at once, with its errno. */
#include "program.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "jsontext.h"
#include "jsonw.h"
#include "tasks.h"

#define OUT_MAX TASK_RESULT_MAX /* the most a program may write as one result */
#define TAIL_MAX 4096         /* bytes of stderr kept for error messages */
#define TAIL_LINES 10         /* lines of it quoted in a message */
#define STOP_GRACE_MS 1000    /* how long a persistent program has to exit on EOF */
#define MAX_TIMEOUT_S 1e7

/* The end of a program's stderr, kept for error messages. A persistent
 * program's stderr is read by a thread of its own (it may write at any time,
 * also between items); both the thread and the program hold a reference. */
struct tail {
	pthread_mutex_t mu;
	pthread_cond_t cv; /* eof became true */
	char data[TAIL_MAX];
	size_t len;
	int refs;
	bool eof;
	int fd; /* read by the thread; -1 once closed */
};

struct program {
	struct task task;
	char *where; /* "tasks file /x/t.json: tasks[1] (\"name\")" */
	bool persistent;
	char **argv; /* argv[0] is the program's absolute path */
	size_t argc;
	char *cwd;
	char **envp;
	/* a persistent program's state */
	pid_t pid; /* 0: not running */
	bool served; /* it has answered an item since it started */
	int in, out;
	struct buf rd; /* stdout bytes read but not consumed */
	struct tail *tail;
};

static struct program **programs;
static size_t nprograms;
static bool cannot_serve; /* see program_cannot_serve */

static __attribute__((format(printf, 2, 3))) int fail(struct buf *err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char msg[2048];
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	return task_error(err, "%s", msg);
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size);
	if (!p)
		abort();
	return p;
}

static char *xstrdup(const char *s)
{
	char *d = strdup(s);
	if (!d)
		abort();
	return d;
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- Text for messages ---- */

/* Appends s[0..n) with every byte that is not part of valid UTF-8 (and every
 * NUL) replaced by '?', so that a message is always a valid JSON string. */
static void add_utf8(struct buf *b, const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	for (size_t i = 0; i < n;) {
		size_t k = u[i] < 0x80 ? 1 : (u[i] & 0xE0) == 0xC0 ? 2 : (u[i] & 0xF0) == 0xE0 ? 3
					     : (u[i] & 0xF8) == 0xF0 ? 4 : 0;
		bool ok = k > 0 && i + k <= n && u[i] != 0 && !(k == 2 && u[i] < 0xC2);
		for (size_t j = 1; ok && j < k; j++)
			ok = (u[i + j] & 0xC0) == 0x80;
		if (ok && k == 3)
			ok = !(u[i] == 0xE0 && u[i + 1] < 0xA0) && !(u[i] == 0xED && u[i + 1] >= 0xA0);
		if (ok && k == 4)
			ok = !(u[i] == 0xF0 && u[i + 1] < 0x90) && !(u[i] == 0xF4 && u[i + 1] >= 0x90) &&
			     u[i] <= 0xF4;
		if (ok) {
			buf_add(b, s + i, k);
			i += k;
		} else {
			buf_addc(b, '?');
			i++;
		}
	}
}

/* Appends the last TAIL_LINES lines of s[0..n) (trailing newlines dropped). */
static void add_last_lines(struct buf *b, const char *s, size_t n)
{
	while (n && (s[n - 1] == '\n' || s[n - 1] == '\r'))
		n--;
	size_t start = n;
	for (int lines = 0; start > 0; start--)
		if (s[start - 1] == '\n' && ++lines == TAIL_LINES)
			break;
	add_utf8(b, s + start, n - start);
}

static void describe_status(int status, struct buf *b)
{
	if (WIFEXITED(status))
		buf_printf(b, "exited with status %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		buf_printf(b, "was killed by signal %d (%s)", WTERMSIG(status),
			   strsignal(WTERMSIG(status)));
	else
		buf_printf(b, "ended with wait status %d", status);
}

/* "<task>: <program> <how>: <stderr tail>" as a task error. */
static int program_failed(const struct program *p, const char *how, const char *tail, size_t tlen,
			  struct buf *err)
{
	buf_printf(err, "%s: %s %s", p->task.name, p->argv[0], how);
	size_t before = err->len;
	buf_adds(err, ": ");
	add_last_lines(err, tail, tlen);
	if (err->len == before + 2) {
		err->len = before;
		buf_adds(err, " (nothing on stderr)");
	}
	return -1;
}

/* ---- Starting a child ---- */

static void close_from(int lowfd)
{
#ifdef SYS_close_range
	if (syscall(SYS_close_range, (unsigned)lowfd, ~0U, 0) == 0)
		return;
#endif
	for (int fd = lowfd; fd < 4096; fd++)
		close(fd);
}

/* In the child after fork: tells the parent the stage and errno, ends. */
static __attribute__((noreturn)) void child_fail(int report, int stage)
{
	int msg[2] = {stage, errno};
	ssize_t n = write(report, msg, sizeof msg);
	(void)n;
	_exit(127);
}

enum { STAGE_SETUP = 1, STAGE_CWD, STAGE_EXEC };

/* Starts argv in p's cwd and environment with pipes on its fds 0, 1 and 2;
 * fds receives the worker's ends (stdin to write, stdout and stderr to read;
 * all CLOEXEC). Returns the pid, or -1 with why appended to err. */
static pid_t spawn(const struct program *p, char *const argv[], int fds[3], struct buf *err)
{
	int in[2] = {-1, -1}, out[2] = {-1, -1}, er[2] = {-1, -1}, rep[2] = {-1, -1};
	if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(er, O_CLOEXEC) < 0 ||
	    pipe2(rep, O_CLOEXEC) < 0) {
		fail(err, "%s: cannot start %s: pipe: %s", p->task.name, argv[0], strerror(errno));
		goto fail;
	}
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0) {
		fail(err, "%s: cannot start %s: fork: %s", p->task.name, argv[0], strerror(errno));
		goto fail;
	}
	if (pid == 0) {
		/* Move the report pipe out of the way of fds 0-2 first. */
		int report = fcntl(rep[1], F_DUPFD_CLOEXEC, 10);
		if (report < 0 || dup2(in[0], 0) < 0 || dup2(out[1], 1) < 0 || dup2(er[1], 2) < 0)
			child_fail(report < 0 ? rep[1] : report, STAGE_SETUP);
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
			_exit(127); /* the worker is already gone */
		struct sigaction dfl = {.sa_handler = SIG_DFL};
		for (int sig = 1; sig < NSIG; sig++)
			sigaction(sig, &dfl, NULL); /* SIGPIPE is ignored in the worker */
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		if (chdir(p->cwd) < 0)
			child_fail(report, STAGE_CWD);
		/* Nothing of the worker's but the three pipes: not its socket to
		 * the server, not its progress page, not other programs' pipes. */
		if (report != 3) {
			if (dup2(report, 3) < 0)
				child_fail(report, STAGE_SETUP);
			report = 3;
		}
		fcntl(report, F_SETFD, FD_CLOEXEC);
		close_from(4);
		execve(argv[0], argv, p->envp);
		child_fail(report, STAGE_EXEC);
	}
	close(in[0]);
	close(out[1]);
	close(er[1]);
	close(rep[1]);
	int msg[2];
	ssize_t n;
	while ((n = read(rep[0], msg, sizeof msg)) < 0 && errno == EINTR)
		;
	close(rep[0]);
	if (n == (ssize_t)sizeof msg) {
		int status;
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		fail(err, "%s: cannot %s %s: %s", p->task.name,
		     msg[0] == STAGE_CWD ? "enter the directory" : "run",
		     msg[0] == STAGE_CWD ? p->cwd : argv[0], strerror(msg[1]));
		close(in[1]);
		close(out[0]);
		close(er[0]);
		return -1;
	}
	fds[0] = in[1];
	fds[1] = out[0];
	fds[2] = er[0];
	return pid;
fail:
	for (int i = 0; i < 2; i++) {
		if (in[i] >= 0)
			close(in[i]);
		if (out[i] >= 0)
			close(out[i]);
		if (er[i] >= 0)
			close(er[i]);
		if (rep[i] >= 0)
			close(rep[i]);
	}
	return -1;
}

/* Waits for pid: for as long as it takes when grace_ms < 0, else for up to
 * grace_ms before it kills it (and says so in *killed). The wait status. */
static int reap(pid_t pid, int grace_ms, bool *killed)
{
	int status = 0;
	if (killed)
		*killed = false;
	if (grace_ms < 0) {
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		return status;
	}
	int64_t end = mono_ms() + grace_ms;
	for (;;) {
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid || (r < 0 && errno != EINTR))
			return status;
		if (r == 0 && mono_ms() >= end)
			break;
		struct timespec ts = {0, 2 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	kill(pid, SIGKILL);
	if (killed)
		*killed = true;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	return status;
}

static void tail_add(char *data, size_t *len, const char *s, size_t n)
{
	if (n >= TAIL_MAX) {
		memcpy(data, s + n - TAIL_MAX, TAIL_MAX);
		*len = TAIL_MAX;
		return;
	}
	if (*len + n > TAIL_MAX) {
		size_t drop = *len + n - TAIL_MAX;
		memmove(data, data + drop, *len - drop);
		*len -= drop;
	}
	memcpy(data + *len, s, n);
	*len += n;
}

/* ---- exec mode ---- */

/* Argument k of an item as a program argument: a string as it is, anything
 * else as its compact JSON text. -1 for a string holding a NUL byte. */
static int arg_text(const json_t *v, struct buf *b)
{
	if (json_is_string(v)) {
		if (memchr(json_string_value(v), '\0', json_string_length(v)))
			return -1;
		buf_add(b, json_string_value(v), json_string_length(v));
	} else {
		jsonw_value(b, v);
	}
	buf_addc(b, '\0');
	return 0;
}

/* Builds the argv of one item into a (offsets of NUL-terminated strings in
 * text). Returns the count, or -1 with why in err. */
static int build_argv(const struct program *p, const json_t *args, struct buf *text,
		      size_t **offs, struct buf *err)
{
	/* Each element is one entry, or all the arguments for a "{*}". */
	size_t nargs = json_array_size(args), cap = p->argc * (nargs + 1) + 1, n = 0;
	*offs = xcalloc(cap, sizeof **offs);
	for (size_t i = 0; i < p->argc; i++) {
		const char *a = p->argv[i];
		if (i > 0 && !strcmp(a, "{*}")) {
			for (size_t k = 0; k < nargs; k++) {
				(*offs)[n++] = text->len;
				if (arg_text(json_array_get(args, k), text) < 0)
					return fail(err, "%s: argument %zu holds a NUL byte, which cannot be "
						    "passed in argv", p->task.name, k);
			}
			continue;
		}
		size_t start = text->len;
		bool whole = false, absent = false;
		for (const char *s = a; *s;) {
			char *end;
			if (i > 0 && s[0] == '{' && s[1] >= '0' && s[1] <= '9') {
				unsigned long k = strtoul(s + 1, &end, 10);
				if (*end == '}') {
					whole = s == a && end[1] == '\0';
					absent = k >= nargs;
					if (k < nargs) {
						if (arg_text(json_array_get(args, k), text) < 0)
							return fail(err, "%s: argument %lu holds a NUL byte, which "
								    "cannot be passed in argv", p->task.name, k);
						text->len--; /* drop the NUL: more may follow */
					}
					s = end + 1;
					continue;
				}
			}
			buf_addc(text, *s++);
		}
		if (whole && absent)
			continue; /* "{k}" for an optional argument not given: no argv entry */
		buf_addc(text, '\0');
		(*offs)[n++] = start;
	}
	return (int)n;
}

/* Turns a successful program's stdout into the result's JSON text: JSON as
 * written (not through jansson: its numbers stop at 64 bits), else a string. */
static int exec_result(const struct program *p, const char *s, size_t n, struct buf *res,
		       struct buf *err)
{
	if (jsontext_compact(res, s, n) == 0)
		return 0;
	/* Not JSON: text, without its trailing newlines (as $(...) does). */
	while (n && (s[n - 1] == '\n' || s[n - 1] == '\r'))
		n--;
	json_t *v = json_stringn(s, n);
	if (!v)
		return fail(err, "%s: %s wrote %zu bytes to stdout that are neither JSON nor "
			    "UTF-8 text", p->task.name, p->argv[0], n);
	jsonw_value(res, v);
	json_decref(v);
	return 0;
}

/* Whether the JSON string text s[0..n) (quotes included) is word. */
static bool json_string_is(const char *s, size_t n, const char *word)
{
	json_t *v = json_loadb(s, n, JSON_DECODE_ANY, NULL);
	bool is = json_is_string(v) && !strcmp(json_string_value(v), word);
	json_decref(v);
	return is;
}

static int run_exec(const struct task *t, const json_t *args, struct buf *res, struct buf *err)
{
	const struct program *p = t->ctx;
	struct buf text = {0}, input = {0}, out = {0};
	size_t *offs = NULL;
	char **argv = NULL;
	int rc = -1, fds[3] = {-1, -1, -1};
	int n = build_argv(p, args, &text, &offs, err);
	if (n < 0)
		goto done;
	argv = xcalloc((size_t)n + 1, sizeof *argv);
	argv[0] = p->argv[0];
	for (int i = 1; i < n; i++)
		argv[i] = text.data + offs[i];
	pid_t pid = spawn(p, argv, fds, err);
	if (pid < 0)
		goto done;
	jsonw_value(&input, args);
	buf_addc(&input, '\n');
	for (int i = 0; i < 3; i++)
		fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
	char tail[TAIL_MAX], chunk[65536];
	size_t tlen = 0, in_off = 0;
	bool too_much = false;
	while (fds[1] >= 0 || fds[2] >= 0) {
		struct pollfd pf[3] = {{fds[0], POLLOUT, 0}, {fds[1], POLLIN, 0}, {fds[2], POLLIN, 0}};
		if (poll(pf, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (fds[0] >= 0 && pf[0].revents) {
			ssize_t k = write(fds[0], input.data + in_off, input.len - in_off);
			if (k > 0)
				in_off += (size_t)k;
			/* All written, or it stopped reading (EPIPE): it has its input. */
			if (in_off == input.len || (k < 0 && errno != EAGAIN && errno != EINTR)) {
				close(fds[0]);
				fds[0] = -1;
			}
		}
		for (int i = 1; i < 3; i++) {
			if (fds[i] < 0 || !pf[i].revents)
				continue;
			ssize_t k = read(fds[i], chunk, sizeof chunk);
			if (k < 0 && (errno == EAGAIN || errno == EINTR))
				continue;
			if (k <= 0) {
				close(fds[i]);
				fds[i] = -1;
			} else if (i == 2) {
				tail_add(tail, &tlen, chunk, (size_t)k);
			} else if (out.len + (size_t)k > OUT_MAX) {
				too_much = true;
				kill(pid, SIGKILL);
				close(fds[1]);
				fds[1] = -1;
			} else {
				buf_add(&out, chunk, (size_t)k);
			}
		}
	}
	int status = reap(pid, -1, NULL);
	if (too_much) {
		fail(err, "%s: %s wrote more than %u MiB to stdout; it was killed", t->name, p->argv[0],
		     OUT_MAX >> 20);
	} else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		struct buf how = {0};
		describe_status(status, &how);
		program_failed(p, how.data, tail, tlen, err);
		buf_free(&how);
	} else {
		rc = exec_result(p, out.data ? out.data : "", out.len, res, err);
	}
done:
	for (int i = 0; i < 3; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	free(argv);
	free(offs);
	buf_free(&text);
	buf_free(&input);
	buf_free(&out);
	return rc;
}

/* ---- persistent mode ---- */

static void tail_unref(struct tail *t)
{
	pthread_mutex_lock(&t->mu);
	int left = --t->refs;
	pthread_mutex_unlock(&t->mu);
	if (left == 0) {
		pthread_mutex_destroy(&t->mu);
		pthread_cond_destroy(&t->cv);
		free(t);
	}
}

/* Copies stderr to the worker's stderr (the server's log) and keeps its end. */
static void *tail_reader(void *arg)
{
	struct tail *t = arg;
	char chunk[4096];
	for (;;) {
		ssize_t k = read(t->fd, chunk, sizeof chunk);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		ssize_t w = write(2, chunk, (size_t)k);
		(void)w;
		pthread_mutex_lock(&t->mu);
		tail_add(t->data, &t->len, chunk, (size_t)k);
		pthread_mutex_unlock(&t->mu);
	}
	pthread_mutex_lock(&t->mu);
	close(t->fd);
	t->fd = -1;
	t->eof = true;
	pthread_cond_signal(&t->cv);
	pthread_mutex_unlock(&t->mu);
	tail_unref(t);
	return NULL;
}

static int persistent_start(struct program *p, struct buf *err)
{
	int fds[3];
	pid_t pid = spawn(p, p->argv, fds, err);
	if (pid < 0)
		return -1;
	struct tail *t = xcalloc(1, sizeof *t);
	pthread_mutex_init(&t->mu, NULL);
	pthread_cond_init(&t->cv, NULL);
	t->fd = fds[2];
	t->refs = 2;
	pthread_attr_t at;
	pthread_attr_init(&at);
	pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
	pthread_t th;
	int rc = pthread_create(&th, &at, tail_reader, t);
	pthread_attr_destroy(&at);
	if (rc != 0) {
		/* Without a reader its stderr could fill up and block it: refuse. */
		close(fds[0]);
		close(fds[1]);
		close(fds[2]);
		kill(pid, SIGKILL);
		reap(pid, -1, NULL);
		free(t);
		return fail(err, "%s: cannot start a thread for %s: %s", p->task.name, p->argv[0],
			    strerror(rc));
	}
	p->pid = pid;
	p->served = false;
	p->in = fds[0];
	p->out = fds[1];
	p->tail = t;
	buf_reset(&p->rd);
	return 0;
}

/* Stops p's program (EOF first, then SIGKILL after grace_ms); returns its wait
 * status and, when tail is given, the end of its stderr. */
static int persistent_stop(struct program *p, int grace_ms, struct buf *tail, bool *killed)
{
	if (p->in >= 0)
		close(p->in);
	int status = reap(p->pid, grace_ms, killed);
	close(p->out);
	p->pid = 0;
	p->in = p->out = -1;
	struct tail *t = p->tail;
	p->tail = NULL;
	pthread_mutex_lock(&t->mu);
	/* A child of the program may still hold stderr open: wait only a little. */
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_nsec += 200 * 1000000L;
	if (dl.tv_nsec >= 1000000000L) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000L;
	}
	while (!t->eof && pthread_cond_timedwait(&t->cv, &t->mu, &dl) == 0)
		;
	if (tail)
		buf_add(tail, t->data, t->len);
	pthread_mutex_unlock(&t->mu);
	tail_unref(t);
	return status;
}

/* The program died or broke the protocol: stop it, fail the item. */
static int persistent_died(struct program *p, const char *what, struct buf *err)
{
	struct buf tail = {0}, how = {0};
	bool killed;
	int status = persistent_stop(p, what ? 0 : STOP_GRACE_MS, &tail, &killed);
	if (what)
		buf_adds(&how, what);
	else if (killed)
		buf_adds(&how, "closed its stdout");
	else
		describe_status(status, &how);
	buf_adds(&how, " while running this item (it starts again for the next one)");
	program_failed(p, how.data, tail.data ? tail.data : "", tail.len, err);
	buf_free(&tail);
	buf_free(&how);
	return -1;
}

/* Writes s[0..n) to fd; *done says how much went. */
static int write_all(int fd, const char *s, size_t n, size_t *done)
{
	*done = 0;
	while (*done < n) {
		ssize_t k = write(fd, s + *done, n - *done);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		*done += (size_t)k;
	}
	return 0;
}

/* Whether p's program read any of the written bytes of an item's line: what
 * it has not read is still in the pipe, even once it is gone. A program that
 * could not start (a missing script, a model that does not load) ends
 * without reading its stdin; one that a particular item kills has read it. */
static bool took_it(const struct program *p, size_t written)
{
	int unread;
	if (ioctl(p->in, FIONREAD, &unread) < 0)
		return true; /* cannot tell: as if it had */
	return (size_t)unread < written;
}

/* p's program ended (or closed its stdin or stdout) without reading this
 * item. One that had been serving gets the item in a new process (1); one
 * that never read an item cannot start: the item did not run, the worker
 * cannot serve (program_cannot_serve), and err says why (-1). */
static int not_taken(struct program *p, struct buf *err)
{
	bool served = p->served, killed;
	struct buf tail = {0}, how = {0};
	int status = persistent_stop(p, STOP_GRACE_MS, &tail, &killed);
	if (killed)
		buf_adds(&how, "stopped reading its stdin");
	else
		describe_status(status, &how);
	int rc = 1;
	if (served) {
		fprintf(stderr, "forkpool-worker: %s: %s %s between items; starting it again\n",
			p->task.name, p->argv[0], how.data);
	} else {
		buf_adds(&how, " before it read its first item");
		program_failed(p, how.data, tail.data ? tail.data : "", tail.len, err);
		cannot_serve = true;
		rc = -1;
	}
	buf_free(&tail);
	buf_free(&how);
	return rc;
}

/* Gives p's program one item's line and reads its answer: 0 with the
 * result in res, -1 with err (the item failed), or 1 when the program
 * ended without reading the line and is to be started again for it. */
static int ask(struct program *p, const struct buf *line, struct buf *res, struct buf *err)
{
	struct pollfd pf = {.fd = p->out, .events = POLLIN};
	if (p->pid && poll(&pf, 1, 0) == 1 && (pf.revents & POLLIN)) {
		/* Output after its last answer: it would be taken for this
		 * item's answer. Out of step, as with a second line. */
		fprintf(stderr, "forkpool-worker: %s: %s wrote to stdout between items; "
				"restarting it\n", p->task.name, p->argv[0]);
		persistent_stop(p, 0, NULL, NULL);
	}
	if (!p->pid && persistent_start(p, err) < 0) {
		cannot_serve = true; /* it did not run; nor will anything else here */
		return -1;
	}
	size_t written;
	if (write_all(p->in, line->data, line->len, &written) < 0) /* EPIPE: it is gone */
		return took_it(p, written) ? persistent_died(p, NULL, err) : not_taken(p, err);
	/* Read one line. Bytes past it (a second line) mean it is out of step. */
	char *nl;
	size_t scanned = 0;
	while (!(nl = p->rd.len > scanned ? memchr(p->rd.data + scanned, '\n', p->rd.len - scanned)
					   : NULL)) {
		scanned = p->rd.len;
		if (p->rd.len > OUT_MAX)
			return persistent_died(p, "wrote a line longer than 64 MiB; it was killed", err);
		buf_reserve(&p->rd, 65536);
		ssize_t k = read(p->out, p->rd.data + p->rd.len, 65536);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return p->rd.len || took_it(p, written) ? persistent_died(p, NULL, err)
								  : not_taken(p, err);
		p->rd.len += (size_t)k;
		p->rd.data[p->rd.len] = '\0';
	}
	size_t llen = (size_t)(nl - p->rd.data);
	/* The reply, checked and compact with its numbers as written. */
	struct buf reply = {0};
	const char *key, *val;
	size_t klen, vlen;
	bool one = jsontext_compact(&reply, p->rd.data, llen) == 0 &&
		   jsontext_only_member(reply.data, reply.len, &key, &klen, &val, &vlen);
	int rc;
	if (one && json_string_is(key, klen, "result")) {
		buf_add(res, val, vlen);
		rc = 0;
	} else if (one && json_string_is(key, klen, "error")) {
		struct buf msg = {0};
		json_t *e = json_loadb(val, vlen, JSON_DECODE_ANY, NULL);
		if (json_is_string(e))
			add_utf8(&msg, json_string_value(e), json_string_length(e));
		else
			buf_add(&msg, val, vlen); /* its JSON text as the message */
		json_decref(e);
		rc = task_error(err, "%s", msg.len ? msg.data : "task failed");
		buf_free(&msg);
	} else {
		struct buf what = {0};
		buf_adds(&what, "broke the protocol: it wrote \"");
		add_utf8(&what, p->rd.data, llen < 200 ? llen : 200);
		buf_adds(&what, llen > 200 ? "...\"" : "\"");
		buf_adds(&what, " where one line {\"result\": ...} or {\"error\": \"...\"} was due; "
				"it was stopped");
		buf_free(&reply);
		rc = persistent_died(p, what.data, err);
		buf_free(&what);
		return rc;
	}
	buf_free(&reply);
	p->served = true;
	size_t rest = p->rd.len - llen - 1;
	memmove(p->rd.data, nl + 1, rest);
	p->rd.len = rest;
	p->rd.data[rest] = '\0';
	if (rest) {
		/* Unasked-for output: the next answer could not be trusted. */
		fprintf(stderr, "forkpool-worker: %s: %s wrote more than one line for an item; "
				"restarting it\n", p->task.name, p->argv[0]);
		persistent_stop(p, 0, NULL, NULL);
	}
	return rc;
}

static int run_persistent(const struct task *t, const json_t *args, struct buf *res,
			  struct buf *err)
{
	struct program *p = (struct program *)t->ctx;
	struct buf line = {0};
	jsonw_value(&line, args);
	buf_addc(&line, '\n');
	int rc = ask(p, &line, res, err);
	if (rc == 1) /* it went between items: once more, in a new process (never 1 again) */
		rc = ask(p, &line, res, err);
	buf_free(&line);
	return rc;
}

bool program_cannot_serve(void) { return cannot_serve; }

size_t program_unproven_fds(struct pollfd *pf, size_t max)
{
	size_t n = 0;
	for (size_t i = 0; i < nprograms && n < max; i++)
		if (programs[i]->pid && !programs[i]->served)
			pf[n++] = (struct pollfd){.fd = programs[i]->out}; /* no events: hang-ups only */
	return n;
}

int program_check_unproven(struct buf *err)
{
	for (size_t i = 0; i < nprograms; i++) {
		struct program *p = programs[i];
		struct pollfd pf = {.fd = p->out};
		if (p->pid && !p->served && poll(&pf, 1, 0) == 1 && (pf.revents & (POLLHUP | POLLERR)))
			return not_taken(p, err);
	}
	return 0;
}

int program_start_all(struct buf *err)
{
	for (size_t i = 0; i < nprograms; i++)
		if (programs[i]->persistent && !programs[i]->pid &&
		    persistent_start(programs[i], err) < 0)
			return -1;
	return 0;
}

void program_stop_all(void)
{
	/* EOF to all first, so that they wind down together. */
	for (size_t i = 0; i < nprograms; i++)
		if (programs[i]->pid) {
			close(programs[i]->in);
			programs[i]->in = -1;
		}
	for (size_t i = 0; i < nprograms; i++)
		if (programs[i]->pid)
			persistent_stop(programs[i], STOP_GRACE_MS, NULL, NULL);
}

/* ---- The tasks file ---- */

static const char *const type_names[] = {"int", "uint", "number", "unumber", "string", "any"};

/* Finds prog (no '/') in the directories of pathvar. */
static int search_path(const char *prog, const char *pathvar, char *out, size_t outlen)
{
	for (const char *d = pathvar; d && *d;) {
		const char *colon = strchr(d, ':');
		size_t dl = colon ? (size_t)(colon - d) : strlen(d);
		int n = snprintf(out, outlen, "%.*s/%s", (int)(dl ? dl : 1), dl ? d : ".", prog);
		struct stat st;
		if (n > 0 && (size_t)n < outlen && stat(out, &st) == 0 && S_ISREG(st.st_mode) && access(out, X_OK) == 0)
			return 0;
		d = colon ? colon + 1 : NULL;
	}
	return -1;
}

static int load_params(struct program *p, json_t *params, struct buf *err)
{
	if (!params)
		return 0;
	if (!json_is_array(params) || json_array_size(params) > TASK_MAX_PARAMS)
		return fail(err, "%s: params must be an array of at most %d {\"name\", \"type\"} objects",
			    p->where, TASK_MAX_PARAMS);
	size_t k;
	json_t *v;
	json_array_foreach(params, k, v)
	{
		const char *name = json_is_string(v) ? json_string_value(v)
					: json_string_value(json_object_get(v, "name"));
		const char *type = json_is_object(v) ? json_string_value(json_object_get(v, "type")) : "any";
		if (!name || !*name || (json_is_object(v) && json_object_get(v, "type") && !type) ||
		    (json_is_object(v) && json_object_size(v) > (json_object_get(v, "type") ? 2u : 1u)))
			return fail(err, "%s: params[%zu] must be {\"name\": \"...\", \"type\": \"...\"} "
				    "(or just a name)", p->where, k);
		int ti = -1;
		for (int i = 0; i <= TASK_ANY; i++)
			if (!strcmp(type ? type : "any", type_names[i]))
				ti = i;
		if (ti < 0)
			return fail(err, "%s: params[%zu] (%s): unknown type \"%s\" (int, uint, number, "
				    "unumber, string or any)", p->where, k, name, type);
		for (size_t j = 0; j < k; j++)
			if (!strcmp(p->task.params[j].name, name))
				return fail(err, "%s: params[%zu] (%s): params[%zu] has that name too",
					    p->where, k, name, j);
		p->task.params[k].name = xstrdup(name);
		p->task.params[k].type = (enum task_type)ti;
	}
	return 0;
}

static int load_env(struct program *p, json_t *env, json_t *pass, struct buf *err)
{
	if (env && !json_is_object(env))
		return fail(err, "%s: env must be an object of strings {\"NAME\": \"value\"}", p->where);
	if (pass && !json_is_array(pass))
		return fail(err, "%s: pass_env must be an array of variable names", p->where);
	p->envp = xcalloc(json_object_size(env) + json_array_size(pass) + 1, sizeof *p->envp);
	size_t n = 0;
	const char *key;
	json_t *v;
	json_object_foreach(env, key, v)
	{
		if (!*key || strchr(key, '=') || !json_is_string(v))
			return fail(err, "%s: env: \"%s\" must be a name without '=' with a string value",
				    p->where, key);
		size_t len = strlen(key) + json_string_length(v) + 2;
		p->envp[n] = malloc(len);
		if (!p->envp[n])
			abort();
		snprintf(p->envp[n++], len, "%s=%s", key, json_string_value(v));
	}
	size_t i;
	json_array_foreach(pass, i, v)
	{
		const char *name = json_string_value(v);
		if (!name || !*name || strchr(name, '='))
			return fail(err, "%s: pass_env[%zu] must be a variable name", p->where, i);
		const char *val = getenv(name);
		if (!val || json_object_get(env, name))
			continue; /* not set here, or env gives it */
		size_t len = strlen(name) + strlen(val) + 2;
		p->envp[n] = malloc(len);
		if (!p->envp[n])
			abort();
		snprintf(p->envp[n++], len, "%s=%s", name, val);
	}
	return 0;
}

static const char *env_get(char **envp, const char *name)
{
	size_t n = strlen(name);
	for (; *envp; envp++)
		if (!strncmp(*envp, name, n) && (*envp)[n] == '=')
			return *envp + n + 1;
	return NULL;
}

static int load_argv(struct program *p, json_t *argv, struct buf *err)
{
	if (!json_is_array(argv) || json_array_size(argv) == 0)
		return fail(err, "%s: argv must be a non-empty array of strings, the program first",
			    p->where);
	p->argc = json_array_size(argv);
	p->argv = xcalloc(p->argc + 1, sizeof *p->argv);
	int np = task_nparams(&p->task);
	size_t i;
	json_t *v;
	json_array_foreach(argv, i, v)
	{
		const char *a = json_string_value(v);
		if (!a)
			return fail(err, "%s: argv[%zu] must be a string", p->where, i);
		p->argv[i] = xstrdup(a);
		for (const char *s = strchr(a, '{'); i > 0 && s; s = strchr(s + 1, '{')) {
			char *end;
			if (!strcmp(a, "{*}") || !(s[1] >= '0' && s[1] <= '9'))
				continue;
			unsigned long k = strtoul(s + 1, &end, 10);
			if (*end != '}')
				continue;
			if (p->persistent)
				return fail(err, "%s: argv[%zu]: a persistent program gets its arguments on "
					    "stdin; placeholders such as {%lu} work in exec mode only",
					    p->where, i, k);
			if (!p->task.variadic && k >= (unsigned long)np)
				return fail(err, "%s: argv[%zu] refers to {%lu}, but the task has %d "
					    "parameter%s", p->where, i, k, np, np == 1 ? "" : "s");
		}
		if (i > 0 && !strcmp(a, "{*}") && p->persistent)
			return fail(err, "%s: argv[%zu]: {*} works in exec mode only", p->where, i);
	}
	/* The program itself: a path (relative to cwd), or a name to find in PATH. */
	const char *prog = p->argv[0];
	char found[PATH_MAX];
	if (!*prog)
		return fail(err, "%s: argv[0] is empty", p->where);
	if (strchr(prog, '/')) {
		int n = snprintf(found, sizeof found, "%s%s%s", prog[0] == '/' ? "" : p->cwd,
				 prog[0] == '/' ? "" : "/", prog);
		if (n < 0 || (size_t)n >= sizeof found)
			return fail(err, "%s: argv[0]: the path is too long", p->where);
		struct stat st;
		if (stat(found, &st) < 0)
			return fail(err, "%s: argv[0]: program %s: %s", p->where, found, strerror(errno));
		if (!S_ISREG(st.st_mode) || access(found, X_OK) < 0)
			return fail(err, "%s: argv[0]: program %s is not an executable file", p->where,
				    found);
	} else {
		const char *path = env_get(p->envp, "PATH");
		if (!path)
			path = getenv("PATH");
		if (!path)
			path = "/usr/local/bin:/usr/bin:/bin";
		if (search_path(prog, path, found, sizeof found) < 0)
			return fail(err, "%s: argv[0]: program \"%s\" was not found in PATH (%s)",
				    p->where, prog, path);
	}
	char abs[PATH_MAX];
	free(p->argv[0]);
	p->argv[0] = xstrdup(realpath(found, abs) ? abs : found);
	return 0;
}

static const char *const task_keys[] = {"name", "doc", "mode", "argv", "params", "required",
					"variadic", "timeout", "cwd", "env", "pass_env", NULL};

static int load_task(const char *file, const char *dir, size_t idx, json_t *o, struct buf *err)
{
	struct program *p = xcalloc(1, sizeof *p);
	p->in = p->out = -1;
	const char *name = json_string_value(json_object_get(o, "name"));
	char where[PATH_MAX + 160];
	snprintf(where, sizeof where, "tasks file %s: tasks[%zu]%s%s%s", file, idx,
		 name ? " (\"" : "", name ? name : "", name ? "\")" : "");
	p->where = xstrdup(where);
	/* Must stay valid: a program is never freed (the table points to it). */
	if (!json_is_object(o))
		return fail(err, "%s: must be an object", p->where);
	const char *key;
	json_t *v;
	json_object_foreach(o, key, v)
	{
		bool known = false;
		for (int i = 0; task_keys[i]; i++)
			known |= !strcmp(key, task_keys[i]);
		if (!known)
			return fail(err, "%s: unknown field \"%s\" (a task has name, doc, mode, argv, "
				    "params, required, variadic, timeout, cwd, env, pass_env)", p->where,
				    key);
	}
	if (!name)
		return fail(err, "%s: name is required (a string)", p->where);
	if (!task_name_ok(name))
		return fail(err, "%s: name must be 1 to %d letters, digits, _ . or -", p->where,
			    TASK_NAME_LEN - 1);
	const char *mode = json_string_value(json_object_get(o, "mode"));
	if (!mode || (strcmp(mode, "exec") && strcmp(mode, "persistent")))
		return fail(err, "%s: mode must be \"exec\" or \"persistent\"", p->where);
	p->persistent = !strcmp(mode, "persistent");
	v = json_object_get(o, "doc");
	if (v && !json_is_string(v))
		return fail(err, "%s: doc must be a string", p->where);
	p->task.name = xstrdup(name);
	p->task.doc = xstrdup(v ? json_string_value(v) : "");
	if (load_params(p, json_object_get(o, "params"), err) < 0)
		return -1;
	int np = task_nparams(&p->task);
	v = json_object_get(o, "variadic");
	if (v && !json_is_boolean(v))
		return fail(err, "%s: variadic must be true or false", p->where);
	p->task.variadic = json_is_true(v);
	if (p->task.variadic && np == 0)
		return fail(err, "%s: variadic needs a parameter to repeat", p->where);
	v = json_object_get(o, "required");
	p->task.required = p->task.variadic ? np - 1 : np;
	if (v) {
		if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > np)
			return fail(err, "%s: required must be an integer from 0 to %d (the parameters)",
				    p->where, np);
		p->task.required = (int)json_integer_value(v);
	}
	v = json_object_get(o, "timeout");
	if (v && !json_is_null(v)) {
		if (!json_is_number(v) || !(json_number_value(v) > 0) ||
		    json_number_value(v) > MAX_TIMEOUT_S)
			return fail(err, "%s: timeout must be a number of seconds above 0 (at most %g)",
				    p->where, MAX_TIMEOUT_S);
		p->task.timeout = json_number_value(v);
	}
	/* cwd: relative to the tasks file's directory, which is also the default. */
	v = json_object_get(o, "cwd");
	if (v && (!json_is_string(v) || !json_string_length(v)))
		return fail(err, "%s: cwd must be a directory path", p->where);
	char cwd[PATH_MAX], abs[PATH_MAX];
	const char *c = v ? json_string_value(v) : ".";
	int n = snprintf(cwd, sizeof cwd, "%s%s%s", c[0] == '/' ? "" : dir, c[0] == '/' ? "" : "/", c);
	if (n < 0 || (size_t)n >= sizeof cwd)
		return fail(err, "%s: cwd: the path is too long", p->where);
	struct stat st;
	if (!realpath(cwd, abs))
		return fail(err, "%s: cwd %s: %s", p->where, cwd, strerror(errno));
	if (stat(abs, &st) < 0 || !S_ISDIR(st.st_mode))
		return fail(err, "%s: cwd %s: not a directory", p->where, cwd);
	p->cwd = xstrdup(abs);
	if (load_env(p, json_object_get(o, "env"), json_object_get(o, "pass_env"), err) < 0 ||
	    load_argv(p, json_object_get(o, "argv"), err) < 0)
		return -1;
	p->task.call = p->persistent ? run_persistent : run_exec;
	p->task.ctx = p;
	size_t flen = strlen(file) + 48;
	char *origin = malloc(flen);
	if (!origin)
		abort();
	snprintf(origin, flen, "tasks file %s (tasks[%zu])", file, idx);
	p->task.origin = origin;
	if (task_add(&p->task, err) < 0)
		return -1;
	struct program **np2 = realloc(programs, (nprograms + 1) * sizeof *np2);
	if (!np2)
		abort();
	programs = np2;
	programs[nprograms++] = p;
	return 0;
}

int program_load_file(const char *path, struct buf *err)
{
	static char **loaded; /* the files so far, by real path */
	static size_t nloaded;
	char file[PATH_MAX];
	if (!realpath(path, file))
		return fail(err, "tasks file %s: %s", path, strerror(errno));
	for (size_t i = 0; i < nloaded; i++)
		if (!strcmp(loaded[i], file))
			return fail(err, "tasks file %s is given twice", file);
	char **nl = realloc(loaded, (nloaded + 1) * sizeof *nl);
	if (!nl)
		abort();
	loaded = nl;
	loaded[nloaded++] = xstrdup(file);
	json_error_t jerr;
	json_t *root = json_load_file(file, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return fail(err, "tasks file %s: not valid JSON: %s (line %d, column %d)", file,
			    jerr.text, jerr.line, jerr.column);
	int rc = -1;
	json_t *list = json_object_get(root, "tasks");
	if (!json_is_object(root) || json_object_size(root) != 1 || !json_is_array(list)) {
		fail(err, "tasks file %s: must be an object {\"tasks\": [...]} and nothing else", file);
		goto out;
	}
	char dir[PATH_MAX];
	snprintf(dir, sizeof dir, "%s", file);
	*strrchr(dir, '/') = '\0'; /* realpath's answer is absolute */
	if (!dir[0])
		strcpy(dir, "/");
	/* Every task's problem, one line each: not only the first. */
	rc = 0;
	size_t i;
	json_t *t;
	json_array_foreach(list, i, t)
	{
		struct buf one = {0};
		if (load_task(file, dir, i, t, &one) < 0) {
			if (rc < 0)
				buf_addc(err, '\n');
			buf_add(err, one.data, one.len);
			rc = -1;
		}
		buf_free(&one);
	}
out:
	json_decref(root);
	return rc;
}
