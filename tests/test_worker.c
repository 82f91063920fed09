/* test_worker.c - the worker program (build/forkpool-worker) on its wire
 * protocol (common/frame.h): spawned the way server/pool.c spawns it, with a
 * socketpair on fd 3 and a memfd progress page on fd 4, and driven frame by
 * frame from the test. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "frame.h"
#include "harness.h"

extern char **environ;

#define WAIT_MS 10000 /* how long any one expected event may take */
#define PAGE_LEN 4096

/* A worker under test: the test's end of the socket, and the progress page. */
struct wk {
	pid_t pid;
	int sock;
	struct progress *prog; /* NULL when started without a page */
	struct frame_reader rd;
	struct buf lines; /* records received but not yet taken, whole lines */
	size_t taken;     /* bytes of lines already taken */
	int status;       /* wait status, once reaped */
	int reaped;
};

/* Moves fd to a number above the worker's fixed fds, keeping it close-on-exec. */
static int fd_high(int fd)
{
	if (fd > WORKER_PROGRESS_FD)
		return fd;
	int nfd = fcntl(fd, F_DUPFD_CLOEXEC, WORKER_PROGRESS_FD + 1);
	CHECK(nfd > WORKER_PROGRESS_FD);
	close(fd);
	return nfd;
}

/* Starts the worker as the pool does, with the arguments extra (NULL:
 * none; else NULL-terminated) after its own; with_page = 0 leaves fd 4
 * closed. */
static void wk_start_with(struct wk *w, int with_page, const char *const *extra)
{
	memset(w, 0, sizeof *w);
	/* An aborting worker must not spend the test's time writing a core. */
	struct rlimit nocore = {0, 0};
	setrlimit(RLIMIT_CORE, &nocore);

	int sv[2];
	CHECK_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	sv[1] = fd_high(sv[1]);
	int mfd = -1;
	if (with_page) {
		mfd = memfd_create("test-progress", MFD_CLOEXEC);
		CHECK(mfd >= 0);
		CHECK_INT(ftruncate(mfd, PAGE_LEN), 0);
		void *m = mmap(NULL, PAGE_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
		CHECK(m != MAP_FAILED);
		w->prog = m;
		mfd = fd_high(mfd);
	}

	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, sv[1], WORKER_SOCK_FD);
	if (with_page)
		posix_spawn_file_actions_adddup2(&fa, mfd, WORKER_PROGRESS_FD);
	else
		posix_spawn_file_actions_addclose(&fa, WORKER_PROGRESS_FD);
	posix_spawnattr_t at;
	posix_spawnattr_init(&at);
	sigset_t none, all;
	sigemptyset(&none);
	sigfillset(&all);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setsigdefault(&at, &all);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

	char path[PATH_MAX], ppid[24];
	snprintf(path, sizeof path, "%s/forkpool-worker", harness_bin_dir());
	snprintf(ppid, sizeof ppid, "%d", (int)getpid());
	char *argv[16] = {path, "--parent", ppid};
	for (int i = 0; extra && extra[i] && i < 12; i++)
		argv[3 + i] = (char *)extra[i];
	int rc = posix_spawn(&w->pid, path, &fa, &at, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	close(sv[1]);
	if (mfd >= 0)
		close(mfd);
	if (rc != 0)
		FAILF("posix_spawn %s: %s", path, strerror(rc));
	w->sock = sv[0];
}

static void wk_start(struct wk *w, int with_page) { wk_start_with(w, with_page, NULL); }

/* Sends one frame holding payload p[0..n). */
static void wk_send_raw(struct wk *w, const char *p, size_t n)
{
	struct buf f = {0};
	size_t off = frame_begin(&f);
	buf_add(&f, p, n);
	frame_end(&f, off);
	CHECK_INT(frame_write_all(w->sock, f.data, f.len), 0);
	buf_free(&f);
}

/* Sends a chunk of task: n items, args[i] the JSON text of item i. */
static void wk_chunk(struct wk *w, const char *task, int n, const char *const *args)
{
	struct buf p = {0};
	buf_printf(&p, "C %s %d\n", task, n);
	for (int i = 0; i < n; i++) {
		buf_adds(&p, args[i]);
		buf_addc(&p, '\n');
	}
	wk_send_raw(w, p.data, p.len);
	buf_free(&p);
}

/* The next record line (without its newline), or NULL on EOF. Fails the test
 * if nothing comes within WAIT_MS. The line stays valid until the next call. */
static const char *wk_line(struct wk *w)
{
	static char line[1 << 16];
	int64_t deadline = harness_now_ms() + WAIT_MS;
	for (;;) {
		const char *s = w->lines.data + w->taken;
		const char *nl = w->lines.len > w->taken ? memchr(s, '\n', w->lines.len - w->taken) : NULL;
		if (nl) {
			size_t len = (size_t)(nl - s);
			if (len >= sizeof line)
				FAILF("record of %zu bytes is too long for the test", len);
			memcpy(line, s, len);
			line[len] = '\0';
			w->taken += len + 1;
			return line;
		}
		const char *p;
		size_t n;
		int r = frame_next(&w->rd, &p, &n);
		CHECK(r >= 0);
		if (r == 1) {
			/* frame.h: a frame carries whole records. */
			if (n == 0 || p[n - 1] != '\n')
				FAILF("a frame of %zu bytes does not end a record: %.*s", n, (int)n, p);
			if (w->taken > 0) {
				memmove(w->lines.data, w->lines.data + w->taken, w->lines.len - w->taken);
				w->lines.len -= w->taken;
				w->taken = 0;
			}
			buf_add(&w->lines, p, n);
			continue;
		}
		int64_t left = deadline - harness_now_ms();
		if (left <= 0)
			FAILF("no record from the worker within %d ms", WAIT_MS);
		struct pollfd pfd = {.fd = w->sock, .events = POLLIN};
		int pr = poll(&pfd, 1, (int)left);
		if (pr < 0 && errno == EINTR)
			continue;
		CHECK(pr >= 0);
		if (pr == 0)
			continue;
		long got = frame_fill(&w->rd, w->sock);
		if (got == 0) {
			if (w->rd.in.len > w->rd.off)
				FAILF("EOF inside a frame (%zu bytes left)", w->rd.in.len - w->rd.off);
			if (w->lines.len > w->taken)
				FAILF("EOF after a partial record");
			return NULL;
		}
		if (got < 0 && errno != ECONNRESET)
			FAILF("read from the worker: %s", strerror(errno));
		if (got < 0)
			return NULL;
	}
}

/* Reaps the worker, failing the test if it has not exited within WAIT_MS. */
static int wk_wait(struct wk *w)
{
	if (w->reaped)
		return w->status;
	int64_t deadline = harness_now_ms() + WAIT_MS;
	for (;;) {
		pid_t r = waitpid(w->pid, &w->status, WNOHANG);
		if (r == w->pid)
			break;
		CHECK(r == 0 || errno == EINTR);
		if (harness_now_ms() > deadline)
			FAILF("worker %d did not exit within %d ms", (int)w->pid, WAIT_MS);
		struct timespec ts = {0, 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	w->reaped = 1;
	return w->status;
}

static void wk_stop(struct wk *w)
{
	if (!w->reaped) {
		kill(w->pid, SIGKILL);
		wk_wait(w);
	}
	if (w->sock >= 0)
		close(w->sock);
	w->sock = -1;
	if (w->prog)
		munmap(w->prog, PAGE_LEN);
	w->prog = NULL;
	frame_reader_free(&w->rd);
	buf_free(&w->lines);
}

/* Reads the hello and checks it names the worker's pid. */
static void wk_hello(struct wk *w)
{
	const char *l = wk_line(w);
	CHECK(l != NULL);
	char want[32];
	snprintf(want, sizeof want, "H %d", (int)w->pid);
	CHECK_STR(l, want);
}

struct rec {
	char kind; /* 'R' or 'E' */
	long pos;
	long long micros;
	char json[4096];
};

/* Parses "R|E <pos> <micros> <json>" strictly. */
static struct rec parse_rec(const char *l)
{
	struct rec r = {0};
	if (!l)
		FAILF("EOF where a record was expected");
	if ((l[0] != 'R' && l[0] != 'E') || l[1] != ' ')
		FAILF("not a result record: %s", l);
	r.kind = l[0];
	char *e;
	const char *s = l + 2;
	if (*s < '0' || *s > '9')
		FAILF("bad position in %s", l);
	r.pos = strtol(s, &e, 10);
	if (*e != ' ')
		FAILF("bad position in %s", l);
	s = e + 1;
	if (*s < '0' || *s > '9')
		FAILF("bad micros in %s", l);
	r.micros = strtoll(s, &e, 10);
	if (*e != ' ')
		FAILF("bad micros in %s", l);
	if (strlen(e + 1) >= sizeof r.json)
		FAILF("result too long: %s", l);
	snprintf(r.json, sizeof r.json, "%s", e + 1);
	return r;
}

static struct rec next_rec(struct wk *w) { return parse_rec(wk_line(w)); }

/* The next record must be item pos's result, with exactly this JSON text. */
static void expect_result(struct wk *w, long pos, const char *json)
{
	struct rec r = next_rec(w);
	if (r.kind != 'R' || r.pos != pos || strcmp(r.json, json) != 0)
		FAILF("got %c %ld %s, expected R %ld %s", r.kind, r.pos, r.json, pos, json);
}

/* The next record must be item pos's error, with exactly this message. */
static void expect_error(struct wk *w, long pos, const char *msg)
{
	struct rec r = next_rec(w);
	json_t *m = json_loads(r.json, JSON_DECODE_ANY, NULL);
	if (r.kind != 'E' || r.pos != pos || !json_is_string(m) || strcmp(json_string_value(m), msg))
		FAILF("got %c %ld %s, expected E %ld \"%s\"", r.kind, r.pos, r.json, pos, msg);
	json_decref(m);
}

/* The worker must now close its socket and exit with status code. */
static void expect_exit(struct wk *w, int code)
{
	const char *l = wk_line(w);
	if (l)
		FAILF("unexpected record before the exit: %s", l);
	int st = wk_wait(w);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != code)
		FAILF("worker ended with status 0x%x, expected exit %d", st, code);
}

/* Polls the progress page until item == want, within WAIT_MS. */
static void wait_item(struct wk *w, uint32_t want)
{
	int64_t deadline = harness_now_ms() + WAIT_MS;
	uint32_t got;
	while ((got = atomic_load_explicit(&w->prog->item, memory_order_acquire)) != want) {
		if (harness_now_ms() > deadline)
			FAILF("progress item is %u after %d ms, expected %u", got, WAIT_MS, want);
		struct timespec ts = {0, 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}

static int64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- Hello and shutdown. ---- */

TEST(worker_hello_names_its_pid)
{
	struct wk w;
	wk_start(&w, 1);
	wk_hello(&w);
	CHECK_INT(atomic_load(&w.prog->item), 0); /* nothing run yet */
	wk_stop(&w);
}

/* Closes the test's end of the socket; the worker must exit 0. */
static void close_expect_exit_0(struct wk *w)
{
	close(w->sock);
	w->sock = -1;
	int st = wk_wait(w);
	CHECK(WIFEXITED(st));
	CHECK_INT(WEXITSTATUS(st), 0);
}

TEST(worker_exits_0_when_the_socket_closes)
{
	struct wk w;
	wk_start(&w, 1);
	wk_hello(&w);
	close_expect_exit_0(&w);
	wk_stop(&w);
}

/* A server that stops while a worker is still starting closes the socket
 * before the worker's hello (its write fails with EPIPE), or just after it
 * with the hello unread (its next read fails with ECONNRESET). Either way
 * the initializers have run, so the worker runs the finalizers too and
 * exits 0, as it does on EOF. */
TEST(worker_closed_while_starting_runs_its_finalizers_and_exits_0)
{
	char cwd[PATH_MAX], spec[2 * PATH_MAX + 64];
	CHECK(getcwd(cwd, sizeof cwd) != NULL);
	snprintf(spec, sizeof spec, "%s/test-plugins/flaky.so={\"log\": \"%s/init.log\"}",
		 harness_bin_dir(), cwd);
	const char *const extra[] = {"--plugin", spec, NULL};
	for (int after = 0; after < 2; after++) {
		struct wk w;
		wk_start_with(&w, 1, extra);
		if (after) { /* the hello has arrived, and is left unread */
			struct pollfd pf = {.fd = w.sock, .events = POLLIN};
			CHECK_INT(poll(&pf, 1, WAIT_MS), 1);
		}
		/* else at once: usually before the hello, on a loaded machine after */
		close_expect_exit_0(&w);
		wk_stop(&w);
	}
	FILE *f = fopen("init.log", "r");
	CHECK(f != NULL);
	char line[64];
	int init = 0, fini = 0;
	while (fgets(line, sizeof line, f)) {
		init += !strncmp(line, "init ", 5);
		fini += !strncmp(line, "fini ", 5);
	}
	fclose(f);
	CHECK_INT(init, 2);
	CHECK_INT(fini, 2);
}

TEST(worker_finishes_its_chunk_then_exits_0_on_eof)
{
	struct wk w;
	wk_start(&w, 1);
	wk_hello(&w);
	static const char *const args[] = {"[0.02]", "[0]"};
	wk_chunk(&w, "sleep", 2, args);
	/* EOF arrives while item 0 still sleeps: the records are still sent. */
	CHECK_INT(shutdown(w.sock, SHUT_WR), 0);
	expect_result(&w, 0, "null");
	expect_result(&w, 1, "null");
	expect_exit(&w, 0);
	wk_stop(&w);
}

TEST(worker_refuses_to_serve_for_a_parent_that_is_not_its_own)
{
	/* --parent names the server; a worker whose parent differs (the server
	 * died before the spawn finished) must not serve. */
	char cmd[PATH_MAX + 64];
	snprintf(cmd, sizeof cmd, "%s/forkpool-worker --parent 1 3>/dev/null >/dev/null 2>&1",
		 harness_bin_dir());
	int st = system(cmd);
	CHECK(WIFEXITED(st));
	CHECK_INT(WEXITSTATUS(st), 1);
}

/* ---- Results. ---- */

TEST(worker_square_chunk_reports_results_in_order)
{
	struct wk w;
	wk_start(&w, 1);
	wk_hello(&w);
	static const char *const args[] = {"[0]", "[1]", "[7]", "[-3]", "[1.5]", "[3037000500]"};
	wk_chunk(&w, "square", 6, args);
	expect_result(&w, 0, "0");
	expect_result(&w, 1, "1");
	expect_result(&w, 2, "49");
	expect_result(&w, 3, "9");
	expect_result(&w, 4, "2.25");
	expect_result(&w, 5, "9223372037000250000"); /* past INT64_MAX */
	CHECK_INT(atomic_load(&w.prog->item), 6);
	/* The worker takes the next chunk; positions restart at 0. */
	static const char *const more[] = {"[12]"};
	wk_chunk(&w, "square", 1, more);
	expect_result(&w, 0, "144");
	wk_stop(&w);
}

TEST(worker_128_bit_results_are_exact)
{
	struct wk w;
	wk_start(&w, 1);
	wk_hello(&w);
	static const char *const sq[] = {"[40000000]", "[0]", "[2]"};
	wk_chunk(&w, "sum_squares", 3, sq);
	expect_result(&w, 0, "21333332533333340000000");
	expect_result(&w, 1, "0");
	expect_result(&w, 2, "1");
	static const char *const cubes[] = {"[4294967296]"};
	wk_chunk(&w, "sum_cubes", 1, cubes);
	expect_result(&w, 0, "85070591690620534613323169079597465600");
	static const char *const pw[] = {"[3, 80]", "[-2, 127]", "[2, 127]"};
	wk_chunk(&w, "power", 3, pw);
	expect_result(&w, 0, "147808829414345923316083210206383297601");
	expect_result(&w, 1, "-170141183460469231731687303715884105728");
	expect_error(&w, 2, "overflow");
	wk_stop(&w);
}

TEST(worker_fail_if_gives_nine_results_and_one_error)
{
	struct wk w;
	wk_start(&w, 1);
	wk_hello(&w);
	char text[10][32];
	const char *args[10];
	for (int i = 0; i < 10; i++) {
		snprintf(text[i], sizeof text[i], "[%d, 3]", i);
		args[i] = text[i];
	}
	wk_chunk(&w, "fail_if", 10, args);
	int results = 0, errors = 0;
	for (int i = 0; i < 10; i++) {
		struct rec r = next_rec(&w);
		CHECK_INT(r.pos, i);
		if (i == 3) {
			CHECK_INT(r.kind, 'E');
			CHECK_STR(r.json, "\"Cannot process 3\"");
			errors++;
		} else {
			char want[16];
			snprintf(want, sizeof want, "%d", i * i);
			CHECK_INT(r.kind, 'R');
			CHECK_STR(r.json, want);
			results++;
		}
	}
	CHECK_INT(results, 9);
	CHECK_INT(errors, 1);
	/* A task error is an answer, not the end of the worker. */
	static const char *const more[] = {"[5, 5.0]", "[4, 5]"};
	wk_chunk(&w, "fail_if", 2, more);
	expect_error(&w, 0, "Cannot process 5");
	expect_result(&w, 1, "16");
	wk_stop(&w);
}

TEST(worker_error_messages_are_json_strings)
{
	struct wk w;
	wk_start(&w, 1);
	wk_hello(&w);
	/* Quotes, a backslash and a newline must not break the line format. */
	static const char *const args[] = {"[\"say \\\"no\\\"\\\\\\nnow\"]", "[\"\"]"};
	wk_chunk(&w, "fail", 2, args);
	expect_error(&w, 0, "say \"no\"\\\nnow");
	expect_error(&w, 1, "task failed"); /* an empty message still says something */
	wk_stop(&w);
}

TEST(worker_crash_if_aborts_after_reporting_earlier_items)
{
	struct wk w;
	wk_start(&w, 1);
	wk_hello(&w);
	static const char *const first[] = {"[0, 3]", "[1, 3]", "[2, 3]"};
	wk_chunk(&w, "crash_if", 3, first);
	expect_result(&w, 0, "0");
	expect_result(&w, 1, "1");
	expect_result(&w, 2, "2");

	/* The server resets the page before each chunk. */
	atomic_store(&w.prog->item, 0);
	static const char *const second[] = {"[5, 3]", "[3, 3]", "[4, 3]"};
	wk_chunk(&w, "crash_if", 3, second);
	/* Item 0's record may or may not have left before the abort (it is
	 * batched for up to a millisecond); nothing after it can have. */
	const char *l = wk_line(&w);
	if (l) {
		struct rec r = parse_rec(l);
		CHECK_INT(r.kind, 'R');
		CHECK_INT(r.pos, 0);
		CHECK_STR(r.json, "5");
		l = wk_line(&w);
		if (l)
			FAILF("a record after the crash: %s", l);
	}
	int st = wk_wait(&w);
	CHECK(WIFSIGNALED(st));
	CHECK_INT(WTERMSIG(st), SIGABRT);
	/* The page names the item that crashed: position 1, stored as 2. */
	CHECK_INT(atomic_load(&w.prog->item), 2);
	wk_stop(&w);
}

TEST(worker_progress_page_shows_the_running_item)
{
	struct wk w;
	wk_start(&w, 1);
	wk_hello(&w);
	static const char *const args[] = {"[0]", "[0.001]", "[30]", "[0]"};
	int64_t sent = mono_ns();
	wk_chunk(&w, "sleep", 4, args);
	wait_item(&w, 3); /* position 2, the long sleep */
	int64_t started = atomic_load(&w.prog->started_ns);
	CHECK(started >= sent);
	CHECK(started <= mono_ns());
	/* The records of the items before it are not held back by it (frame.h
	 * promises about a millisecond; allow a loaded machine far more). */
	int64_t t0 = harness_now_ms();
	expect_result(&w, 0, "null");
	expect_result(&w, 1, "null");
	int64_t waited = harness_now_ms() - t0;
	if (waited > 2000)
		FAILF("the records before a slow item took %lld ms", (long long)waited);
	CHECK_INT(atomic_load(&w.prog->item), 3);
	CHECK_INT(atomic_load(&w.prog->started_ns), started);
	kill(w.pid, SIGKILL);
	CHECK(wk_line(&w) == NULL);
	wk_stop(&w);
}

TEST(worker_records_how_long_an_item_ran)
{
	struct wk w;
	wk_start(&w, 1);
	wk_hello(&w);
	static const char *const args[] = {"[0.05]", "[0]"};
	wk_chunk(&w, "sleep", 2, args);
	struct rec a = next_rec(&w), b = next_rec(&w);
	CHECK_INT(a.pos, 0);
	CHECK(a.micros >= 50000);
	CHECK(a.micros < 5000000);
	CHECK_INT(b.pos, 1);
	CHECK(b.micros < 50000);
	wk_stop(&w);
}

TEST(worker_runs_without_a_progress_page)
{
	struct wk w;
	wk_start(&w, 0);
	wk_hello(&w);
	static const char *const args[] = {"[]"};
	wk_chunk(&w, "getpid", 1, args);
	char pid[24];
	snprintf(pid, sizeof pid, "%d", (int)w.pid);
	expect_result(&w, 0, pid);
	wk_stop(&w);
}

TEST(worker_reads_a_chunk_frame_larger_than_its_read_buffer)
{
	/* About 2 MB in one frame: many reads, and a reader that must grow. */
	enum { N = 2000, PAD = 1000 };
	struct wk w;
	wk_start(&w, 1);
	wk_hello(&w);
	char *pad = malloc(PAD + 1);
	CHECK(pad != NULL);
	memset(pad, 'x', PAD);
	pad[PAD] = '\0';
	struct buf p = {0};
	buf_printf(&p, "C echo %d\n", N);
	for (int i = 0; i < N; i++)
		buf_printf(&p, "[%d,\"%s\"]\n", i, pad);
	wk_send_raw(&w, p.data, p.len);
	buf_free(&p);
	char want[PAD + 32];
	for (int i = 0; i < N; i++) {
		snprintf(want, sizeof want, "[%d,\"%s\"]", i, pad);
		expect_result(&w, i, want);
	}
	free(pad);
	wk_stop(&w);
}

/* ---- Bad input. ---- */

TEST(worker_unknown_task_is_an_error_per_item)
{
	struct wk w;
	wk_start(&w, 1);
	wk_hello(&w);
	static const char *const args[] = {"[1]", "[]"};
	wk_chunk(&w, "nosuch", 2, args);
	expect_error(&w, 0, "unknown task \"nosuch\"");
	expect_error(&w, 1, "unknown task \"nosuch\"");
	/* A name too long for the table is unknown too, not a crash. */
	char name[200];
	memset(name, 'a', sizeof name - 1);
	name[sizeof name - 1] = '\0';
	wk_chunk(&w, name, 1, args);
	struct rec r = next_rec(&w);
	CHECK_INT(r.kind, 'E');
	CHECK_CONTAINS(r.json, "unknown task");
	/* And the worker still serves. */
	wk_chunk(&w, "square", 1, args);
	expect_result(&w, 0, "1");
	wk_stop(&w);
}

TEST(worker_bad_arguments_are_errors_per_item)
{
	struct wk w;
	wk_start(&w, 1);
	wk_hello(&w);
	static const char *const args[] = {"[\"a\"]", "", "[1, 2]", "{}", "[4]"};
	wk_chunk(&w, "square", 5, args);
	expect_error(&w, 0, "square: argument 0 (x) must be a number, got a string");
	struct rec r = next_rec(&w);
	CHECK_INT(r.kind, 'E');
	CHECK_INT(r.pos, 1);
	CHECK_CONTAINS(r.json, "square: arguments are not valid JSON");
	expect_error(&w, 2, "square takes 1 argument, got 2");
	expect_error(&w, 3, "square: arguments must be an array, got an object");
	expect_result(&w, 4, "16");
	wk_stop(&w);
}

TEST(worker_empty_chunk_gets_no_records_and_the_worker_goes_on)
{
	struct wk w;
	wk_start(&w, 1);
	wk_hello(&w);
	wk_chunk(&w, "square", 0, NULL);
	static const char *const args[] = {"[3]"};
	wk_chunk(&w, "square", 1, args);
	expect_result(&w, 0, "9");
	wk_stop(&w);
}

/* Each of these frames must end the worker with exit 2 before any item runs. */
TEST(worker_malformed_chunk_frames_exit_2)
{
	static const struct {
		const char *payload;
		size_t len;
	} bad[] = {
#define BAD(s) {s, sizeof s - 1}
		BAD(""),                       /* an empty frame */
		BAD("X square 1\n[1]\n"),      /* not a chunk */
		BAD("C square 1"),             /* no newline */
		BAD("C  1\n[1]\n"),            /* no task name */
		BAD("C square\n[1]\n"),        /* no count */
		BAD("C square \n[1]\n"),       /* empty count */
		BAD("C square -1\n[1]\n"),     /* negative count */
		BAD("C square 1x\n[1]\n"),     /* junk after the count */
		BAD("C square 99999999999\n"), /* count past 32 bits */
		BAD("C square 4294967295\n"),  /* count of UINT32_MAX */
		BAD("C square 2\n[1]\n"),      /* fewer lines than the count */
		BAD("C square 1\n[1]\n[2]\n"), /* more lines than the count */
		BAD("C square 1\n[1]"),        /* the last line unterminated */
		BAD("C square 1\n[1]\n[2]"),   /* a stray partial line */
		BAD("C square 1\0\n[1]\n"),    /* a NUL in the count */
#undef BAD
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct wk w;
		wk_start(&w, 1);
		wk_hello(&w);
		wk_send_raw(&w, bad[i].payload, bad[i].len);
		const char *l = wk_line(&w);
		if (l)
			FAILF("case %zu: a record for a malformed frame: %s", i, l);
		int st = wk_wait(&w);
		if (!WIFEXITED(st) || WEXITSTATUS(st) != 2)
			FAILF("case %zu: status 0x%x, expected exit 2", i, st);
		CHECK_INT(atomic_load(&w.prog->item), 0); /* no item ran */
		wk_stop(&w);
	}
}

TEST(worker_frame_longer_than_frame_max_exits_2)
{
	struct wk w;
	wk_start(&w, 1);
	wk_hello(&w);
	unsigned char hdr[FRAME_HDR] = {0xff, 0xff, 0xff, 0xff};
	CHECK_INT(frame_write_all(w.sock, hdr, sizeof hdr), 0);
	expect_exit(&w, 2);
	wk_stop(&w);
}

/* Whether thread tid is waiting in a futex (a mutex, a condition). */
static int in_futex(pid_t tid)
{
	char path[64], text[64] = "";
	snprintf(path, sizeof path, "/proc/%d/syscall", (int)tid);
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	if (!fgets(text, sizeof text, f))
		text[0] = '\0';
	fclose(f);
	return atol(text) == SYS_futex;
}

/* Results of 64 MiB pile up in the outbox while the server is slow to read
 * (here: it reads nothing until the last item ran): they go out in several
 * frames, none past FRAME_MAX, instead of one the server would refuse. */
TEST_T(worker_frames_stay_under_frame_max_while_big_results_pile_up, 120)
{
	char spec[PATH_MAX];
	snprintf(spec, sizeof spec, "%s/test-plugins/big.so", harness_bin_dir());
	const char *const extra[] = {"--plugin", spec, NULL};
	struct wk w;
	wk_start_with(&w, 1, extra);
	wk_hello(&w);
	/* The sender takes the first record alone and blocks writing it; the
	 * other five big ones and the small last one then wait together. */
	static const char *const args[] = {"[67108862]", "[67108862]", "[67108862]", "[67108862]",
					   "[67108862]", "[67108862]", "[1]"};
	wk_chunk(&w, "big_string", 7, args);
	/* Read nothing until the worker waits for the socket: its main thread
	 * waiting for the sender (a futex) for good, past the fifth item. */
	int64_t deadline = harness_now_ms() + 60000;
	for (int still = 0; still < 5;) {
		if (harness_now_ms() > deadline)
			FAILF("the worker did not come to wait for the socket");
		still = atomic_load(&w.prog->item) >= 5 && in_futex(w.pid) ? still + 1 : 0;
		struct timespec ts = {0, 20 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	int records = 0, frames = 0;
	while (records < 7) {
		const char *p;
		size_t n;
		int r = frame_next(&w.rd, &p, &n);
		if (r < 0)
			FAILF("a frame longer than FRAME_MAX after %d frames (%d records)", frames, records);
		if (r == 1) {
			frames++;
			for (size_t i = 0; i < n; i++)
				records += p[i] == '\n';
			CHECK(p[0] == 'R');
			continue;
		}
		if (harness_now_ms() > deadline)
			FAILF("%d records in 60 s", records);
		struct pollfd pfd = {.fd = w.sock, .events = POLLIN};
		CHECK(poll(&pfd, 1, WAIT_MS) == 1);
		CHECK(frame_fill(&w.rd, w.sock) > 0);
	}
	CHECK_INT(records, 7);
	CHECK(frames >= 3);
	wk_stop(&w);
}

TEST(worker_malformed_frame_after_a_good_chunk_still_sends_its_records)
{
	struct wk w;
	wk_start(&w, 1);
	wk_hello(&w);
	/* Both frames in one write: the worker parses the bad one right after
	 * running the good one, while that chunk's records may be unsent. */
	struct buf f = {0};
	size_t off = frame_begin(&f);
	buf_adds(&f, "C square 2\n[2]\n[3]\n");
	frame_end(&f, off);
	off = frame_begin(&f);
	buf_adds(&f, "nonsense");
	frame_end(&f, off);
	CHECK_INT(frame_write_all(w.sock, f.data, f.len), 0);
	buf_free(&f);
	expect_result(&w, 0, "4");
	expect_result(&w, 1, "9");
	expect_exit(&w, 2);
	wk_stop(&w);
}

TEST(worker_rejects_unknown_command_line_arguments)
{
	char cmd[PATH_MAX + 64];
	snprintf(cmd, sizeof cmd, "%s/forkpool-worker --bogus 2>/dev/null", harness_bin_dir());
	int st = system(cmd);
	CHECK(WIFEXITED(st));
	CHECK_INT(WEXITSTATUS(st), 2);
	snprintf(cmd, sizeof cmd, "%s/forkpool-worker --parent 12x 2>/dev/null", harness_bin_dir());
	st = system(cmd);
	CHECK(WIFEXITED(st));
	CHECK_INT(WEXITSTATUS(st), 2);
}

/* ---- --describe. ---- */

TEST(worker_describe_prints_the_task_catalogue)
{
	int pfd[2];
	CHECK_INT(pipe2(pfd, O_CLOEXEC), 0);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/forkpool-worker", harness_bin_dir());
	char *argv[] = {path, "--describe", NULL};
	pid_t pid;
	CHECK_INT(posix_spawn(&pid, path, &fa, NULL, argv, environ), 0);
	posix_spawn_file_actions_destroy(&fa);
	close(pfd[1]);
	struct buf out = {0};
	char tmp[4096];
	ssize_t n;
	while ((n = read(pfd[0], tmp, sizeof tmp)) != 0) {
		CHECK(n > 0 || errno == EINTR);
		if (n > 0)
			buf_add(&out, tmp, (size_t)n);
	}
	close(pfd[0]);
	int st;
	CHECK_INT(waitpid(pid, &st, 0), pid);
	CHECK(WIFEXITED(st));
	CHECK_INT(WEXITSTATUS(st), 0);

	CHECK(out.len > 0 && out.data[out.len - 1] == '\n');
	json_error_t jerr;
	json_t *root = json_loadb(out.data, out.len, 0, &jerr);
	if (!root)
		FAILF("--describe is not JSON: %s: %s", jerr.text, out.data);
	json_t *list = json_object_get(root, "tasks");
	CHECK_INT(json_array_size(list), 17);
	json_t *sq = json_array_get(list, 0);
	CHECK_STR(json_string_value(json_object_get(sq, "name")), "square");
	CHECK_INT(json_integer_value(json_object_get(sq, "required")), 1);
	CHECK(json_is_false(json_object_get(sq, "variadic")));
	json_t *p0 = json_array_get(json_object_get(sq, "params"), 0);
	CHECK_STR(json_string_value(json_object_get(p0, "name")), "x");
	CHECK_STR(json_string_value(json_object_get(p0, "type")), "number");
	static const char *const names[] = {"sum_squares", "monte_carlo_pi", "sleep",  "fail_if",
					    "crash_if",    "getpid",         "echo"};
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
		size_t k;
		json_t *t;
		int found = 0;
		json_array_foreach(list, k, t)
		{
			found += !strcmp(json_string_value(json_object_get(t, "name")), names[i]);
		}
		if (found != 1)
			FAILF("task %s listed %d times", names[i], found);
	}
	json_t *echo = json_array_get(list, 15);
	CHECK_STR(json_string_value(json_object_get(echo, "name")), "echo");
	CHECK(json_is_true(json_object_get(echo, "variadic")));
	json_decref(root);
	buf_free(&out);
}
