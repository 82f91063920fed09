/* main.c - forkpool-worker: runs the items of the chunks the server sends and
 * reports each one (the protocol is in common/frame.h).
 *
 *   forkpool-worker [EXT...] --describe        prints the task catalogue, exits 0
 *   forkpool-worker [EXT...] [--serve] [--parent PID] [--max-memory MB]
 *                                           serves chunks on fd 3, with the
 *                                           progress page on fd 4 (optional);
 *                                           --max-memory caps the address space
 *                                           at the start-up size + MB MiB
 *   EXT: --plugin PATH.so[=INITARGS_JSON]   a C plugin's tasks (plugin.h)
 *        --tasks-file PATH                  programs as tasks (program.h)
 *
 * --describe names each extension on stderr before it loads it, so that the
 * server can name one that hangs or crashes it (DESCRIBE_LOADING, frame.h).
 * Bad extensions (a plugin that does not load, a tasks file that is wrong)
 * end either mode with status WORKER_EXIT_CONFIG and one line on stderr that
 * says what and where. A serving worker then runs the plugins' initializers
 * and starts the persistent programs before its hello; if that fails, it
 * sends the reason as an F record instead (see frame.h) and exits the same
 * way, so that the server can show it and retry.
 *
 * Two threads. The main thread reads chunk frames and runs the items one
 * after another, appending each finished item's record to the outbox. The
 * sender thread turns the outbox into frames: once a record is waiting it
 * gives the main thread OUTBOX_WAIT_NS to add more, so the records of fast
 * items share a frame while the record of an item followed by a slow one
 * still leaves within about a millisecond. The last record of a chunk is
 * sent at once. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "frame.h"
#include "plugin.h"
#include "program.h"
#include "tasks.h"

#define OUTBOX_WAIT_NS 1000000 /* how long a waiting record waits for company */
_Static_assert(TASK_RESULT_MAX + 4096 < FRAME_MAX, "a result's record fits in a frame");

/* The outbox, shared by the two threads under mu. box always holds a frame
 * being filled: a length placeholder, then records; it is empty when it holds
 * FRAME_HDR bytes. */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv; /* box became non-empty, or quit was set */
	struct buf box;
	bool quit;  /* send what is left and stop */
	pthread_t thread;
} O = {.mu = PTHREAD_MUTEX_INITIALIZER};

static struct progress *prog; /* NULL when fd 4 is not a progress page */
static size_t prog_len;
static struct frame_reader rd;
static struct buf res, err, rec;

static int64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Whoever writes a frame holds wmu, taken before mu is let go: frames go out
 * in the order their boxes were taken, and never interleave. */
static pthread_mutex_t wmu = PTHREAD_MUTEX_INITIALIZER;

/* Swaps the box for spare (emptied, with a new placeholder) and returns what
 * the box held. Under mu. */
static struct buf take_box(struct buf *spare)
{
	struct buf full = O.box;
	O.box = *spare;
	buf_reset(&O.box);
	frame_begin(&O.box);
	*spare = (struct buf){0};
	return full;
}

/* Writes a taken box as a frame, then releases wmu; the frame's memory goes
 * back to *spare. */
static void write_box(struct buf full, struct buf *spare)
{
	frame_end(&full, 0);
	if (frame_write_all(WORKER_SOCK_FD, full.data, full.len) < 0) {
		/* The server is gone; nobody is left to report to. */
		fprintf(stderr, "forkpool-worker: write to the server: %s\n", strerror(errno));
		_exit(1);
	}
	pthread_mutex_unlock(&wmu);
	*spare = full;
}

static void *sender(void *arg)
{
	(void)arg;
	struct buf spare = {0};
	pthread_mutex_lock(&O.mu);
	for (;;) {
		while (O.box.len == FRAME_HDR && !O.quit)
			pthread_cond_wait(&O.cv, &O.mu);
		if (O.box.len == FRAME_HDR)
			break; /* quit, and nothing left to send */
		struct timespec dl;
		clock_gettime(CLOCK_MONOTONIC, &dl);
		dl.tv_nsec += OUTBOX_WAIT_NS;
		if (dl.tv_nsec >= 1000000000) {
			dl.tv_sec++;
			dl.tv_nsec -= 1000000000;
		}
		while (!O.quit && O.box.len > FRAME_HDR &&
		       pthread_cond_timedwait(&O.cv, &O.mu, &dl) != ETIMEDOUT)
			;
		if (O.box.len == FRAME_HDR)
			continue; /* the chunk's end came and post() sent it all */
		struct buf full = take_box(&spare);
		pthread_mutex_lock(&wmu);
		pthread_mutex_unlock(&O.mu);
		write_box(full, &spare);
		pthread_mutex_lock(&O.mu);
	}
	pthread_mutex_unlock(&O.mu);
	buf_free(&spare);
	return NULL;
}

/* Hands a record (whole lines) to the sender; last ends the chunk, and then
 * this thread sends what is waiting itself, at once: the server is waiting
 * for the chunk's end, and waking the sender for it cost a thread switch per
 * chunk (most of a single-item chunk's round trip). */
static void post(const struct buf *r, bool last)
{
	static struct buf spare;
	pthread_mutex_lock(&O.mu);
	if (O.box.len > FRAME_HDR && O.box.len - FRAME_HDR + r->len > FRAME_MAX) {
		/* Big results pile up while the server is slow to read them; what
		 * waits goes first, so that no frame passes FRAME_MAX (a record,
		 * at most TASK_RESULT_MAX and a little, always fits one). */
		struct buf full = take_box(&spare);
		pthread_mutex_lock(&wmu);
		pthread_mutex_unlock(&O.mu);
		write_box(full, &spare);
		pthread_mutex_lock(&O.mu);
	}
	bool was_empty = O.box.len == FRAME_HDR;
	buf_add(&O.box, r->data, r->len);
	if (last) {
		struct buf full = take_box(&spare);
		pthread_mutex_lock(&wmu);
		pthread_mutex_unlock(&O.mu);
		write_box(full, &spare);
		return;
	}
	if (was_empty)
		pthread_cond_signal(&O.cv);
	pthread_mutex_unlock(&O.mu);
}

static int start_sender(void)
{
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&O.cv, &ca);
	pthread_condattr_destroy(&ca);
	frame_begin(&O.box);
	int rc = pthread_create(&O.thread, NULL, sender, NULL);
	if (rc != 0) {
		fprintf(stderr, "forkpool-worker: pthread_create: %s\n", strerror(rc));
		return -1;
	}
	return 0;
}

/* Sends what is left, stops the sender, frees everything, exits. */
static __attribute__((noreturn)) void finish(int status)
{
	program_stop_all();
	plugin_fini_all();
	pthread_mutex_lock(&O.mu);
	O.quit = true;
	pthread_cond_signal(&O.cv);
	pthread_mutex_unlock(&O.mu);
	pthread_join(O.thread, NULL);
	pthread_cond_destroy(&O.cv);
	buf_free(&O.box);
	buf_free(&res);
	buf_free(&err);
	buf_free(&rec);
	frame_reader_free(&rd);
	if (prog)
		munmap(prog, prog_len);
	exit(status);
}

static __attribute__((noreturn)) void malformed(const char *why)
{
	fprintf(stderr, "forkpool-worker: malformed chunk frame: %s\n", why);
	finish(2);
}

/* A persistent program could not start, found out after the hello (between
 * chunks, or in one): the worker cannot serve. The records of the items
 * before stand; an F record after them says why, and that the item running
 * did not run (frame.h); then the worker ends as one that could not start. */
static __attribute__((noreturn)) void cannot_go_on(const struct buf *why)
{
	buf_reset(&rec);
	buf_adds(&rec, "F ");
	buf_json_str(&rec, why->data, why->len);
	buf_addc(&rec, '\n');
	post(&rec, true);
	finish(WORKER_EXIT_CONFIG);
}

/* Runs item pos of a chunk, which starts at t0 (monotonic ns), and appends
 * its record to rec; returns when it ended, the next item's start (one clock
 * read an item: they were a tenth of a square's cost). t is NULL for a task
 * the table does not have. */
static int64_t run_item(const struct task *t, const char *tname, size_t pos, const char *args,
			size_t len, int64_t t0)
{
	if (prog) {
		atomic_store_explicit(&prog->started_ns, t0, memory_order_relaxed);
		atomic_store_explicit(&prog->item, (uint32_t)pos + 1, memory_order_release);
	}
	buf_reset(&res);
	buf_reset(&err);
	int rc = t ? task_run(t, args, len, &res, &err)
		   : task_error(&err, "unknown task \"%s\"", tname);
	if (rc < 0 && program_cannot_serve())
		cannot_go_on(&err);
	int64_t t1 = mono_ns();
	long long micros = (t1 - t0) / 1000;
	/* "R|E <pos> <micros> ", without printf: it was a fifth of a square's cost. */
	buf_addc(&rec, rc == 0 ? 'R' : 'E');
	buf_addc(&rec, ' ');
	buf_json_i64(&rec, (int64_t)pos);
	buf_addc(&rec, ' ');
	buf_json_i64(&rec, micros);
	buf_addc(&rec, ' ');
	if (rc == 0)
		buf_add(&rec, res.data, res.len);
	else
		buf_json_str(&rec, err.data, err.len);
	buf_addc(&rec, '\n');
	return t1;
}

/* Runs a chunk frame: "C <task> <n>\n" then n lines of arguments. The whole
 * frame is checked before the first item runs; a malformed one ends the
 * worker (exit 2), since the stream can no longer be trusted. */
static void run_chunk(const char *p, size_t n)
{
	const char *end = p + n, *nl = memchr(p, '\n', n);
	if (!nl || n < 2 || p[0] != 'C' || p[1] != ' ')
		malformed("no \"C <task> <n>\" line");
	const char *name = p + 2, *sp = memchr(name, ' ', (size_t)(nl - name));
	if (!sp || sp == name)
		malformed("no task name");
	size_t count = 0;
	const char *d = sp + 1;
	if (d == nl)
		malformed("no item count");
	for (; d < nl; d++) {
		if (*d < '0' || *d > '9' || count > UINT32_MAX / 10)
			malformed("bad item count");
		count = count * 10 + (size_t)(*d - '0');
	}
	if (count >= UINT32_MAX)
		malformed("bad item count");
	const char *items = nl + 1;
	size_t lines = 0;
	for (const char *s = items; s < end; s++)
		lines += *s == '\n';
	if (lines != count || (end > items && end[-1] != '\n'))
		malformed("the item lines do not match the count");

	char tname[TASK_NAME_LEN];
	size_t nlen = (size_t)(sp - name);
	snprintf(tname, sizeof tname, "%.*s", (int)(nlen < sizeof tname ? nlen : sizeof tname - 1),
		 name);
	const struct task *t = nlen < sizeof tname ? task_find(tname) : NULL;

	const char *s = items;
	int64_t at = mono_ns();
	for (size_t pos = 0; pos < count; pos++) {
		const char *e = memchr(s, '\n', (size_t)(end - s));
		buf_reset(&rec);
		at = run_item(t, tname, pos, s, (size_t)(e - s), at);
		post(&rec, pos + 1 == count);
		s = e + 1;
	}
}

/* Blocks until the socket has bytes (or EOF) to read. Not in read(): a
 * reader asleep on a Unix socket is woken whenever the peer reads and frees
 * write space on it (unix_write_space wakes every sleeper), so each result
 * the server took woke this worker for nothing, an IPI and two context
 * switches (perf of W2: 3.5% of the server's own time went into those
 * wake-ups). poll's waiter asks for POLLIN and sleeps through them. */
static void wait_readable(int fd)
{
	/* Also a persistent program ending before its first item: the worker
	 * cannot serve, and says so now rather than fail at the next chunk. */
	struct pollfd p[1 + 16] = {{.fd = fd, .events = POLLIN}};
	nfds_t n = 1 + (nfds_t)program_unproven_fds(p + 1, 16);
	while (poll(p, n, -1) < 0 && errno == EINTR)
		;
	struct buf why = {0};
	if (n > 1 && program_check_unproven(&why) < 0)
		cannot_go_on(&why);
}

static struct progress *map_progress(void)
{
	struct stat st;
	if (fstat(WORKER_PROGRESS_FD, &st) < 0)
		return NULL; /* no page: fine, the server just learns less when we die */
	if (st.st_size < (off_t)sizeof(struct progress)) {
		fprintf(stderr, "forkpool-worker: fd %d is not a progress page; running without\n",
			WORKER_PROGRESS_FD);
		return NULL;
	}
	long page = sysconf(_SC_PAGESIZE);
	prog_len = (sizeof(struct progress) + (size_t)page - 1) / (size_t)page * (size_t)page;
	void *m = mmap(NULL, prog_len, PROT_READ | PROT_WRITE, MAP_SHARED, WORKER_PROGRESS_FD, 0);
	if (m == MAP_FAILED) {
		fprintf(stderr, "forkpool-worker: mmap of the progress page: %s\n", strerror(errno));
		return NULL;
	}
	return m;
}

/* Whatever the server's process happened to leave open is not ours. */
static void close_extra_fds(void)
{
#ifdef SYS_close_range
	if (syscall(SYS_close_range, WORKER_PROGRESS_FD + 1, ~0U, 0) == 0)
		return;
#endif
	long max = sysconf(_SC_OPEN_MAX);
	if (max < 0 || max > 65536)
		max = 65536;
	for (int fd = WORKER_PROGRESS_FD + 1; fd < max; fd++)
		close(fd);
}

/* The extensions named on the command line, in order. */
static const char **ext_args;
static size_t next_args;

/* Says on stderr which extension a --describe run loads next (its path, not
 * its initargs, which may hold secrets): a plugin whose constructors or
 * forkpool_plugin() hang or crash runs in this process, and the server names
 * it from the last such line (server/catalog.c). */
static void announce(bool plugin, const char *spec)
{
	char path[PATH_MAX], abs[PATH_MAX];
	const char *eq = plugin ? strchr(spec, '=') : NULL;
	snprintf(path, sizeof path, "%.*s", (int)(eq ? (size_t)(eq - spec) : strlen(spec)), spec);
	fprintf(stderr, "forkpool-worker: " DESCRIBE_LOADING "%s %s\n",
		plugin ? "plugin" : "tasks file", realpath(path, abs) ? abs : path);
}

/* Loads them; announced says which on stderr first (see announce). */
static int load_extensions(struct buf *why, bool announced)
{
	int rc = 0;
	for (size_t i = 0; i < next_args; i += 2) {
		bool plugin = !strcmp(ext_args[i], "--plugin");
		if (announced)
			announce(plugin, ext_args[i + 1]);
		/* Every extension's problems, a line each: not only the first. */
		struct buf one = {0};
		if ((plugin ? plugin_load(ext_args[i + 1], &one)
			    : program_load_file(ext_args[i + 1], &one)) < 0) {
			if (rc < 0)
				buf_addc(why, '\n');
			buf_add(why, one.data, one.len);
			rc = -1;
		}
		buf_free(&one);
	}
	return rc;
}

/* The worker cannot serve: says why to the server (an F record, in place of
 * the hello) and on stderr, and exits. */
static __attribute__((noreturn)) void cannot_serve(struct buf *why)
{
	struct buf f = {0};
	size_t off = frame_begin(&f);
	buf_adds(&f, "F ");
	buf_json_str(&f, why->data, why->len);
	buf_addc(&f, '\n');
	frame_end(&f, off);
	if (frame_write_all(WORKER_SOCK_FD, f.data, f.len) < 0) /* else the server logs it */
		fprintf(stderr, "forkpool-worker: %s\n", why->data);
	buf_free(&f);
	buf_free(why);
	program_stop_all();
	plugin_fini_all();
	fflush(stderr);
	_exit(WORKER_EXIT_CONFIG);
}

static long max_memory_mb; /* --max-memory: 0, none */

/* Caps the address space at what the worker uses now (program, libraries,
 * plugins, the sender thread) plus --max-memory MiB, so that an item that
 * allocates past it gets ENOMEM instead of taking the machine's memory. Not
 * under AddressSanitizer, whose shadow memory is terabytes of address space:
 * there the server's check of the resident size is the only limit. */
static void cap_memory(void)
{
	if (max_memory_mb <= 0)
		return;
#if defined(__SANITIZE_ADDRESS__)
	fprintf(stderr, "forkpool-worker: --max-memory: no address space cap under ASan\n");
#else
	long long pages = 0;
	FILE *f = fopen("/proc/self/statm", "re");
	if (!f || fscanf(f, "%lld", &pages) != 1)
		pages = 0;
	if (f)
		fclose(f);
	struct rlimit rl;
	rl.rlim_cur = rl.rlim_max =
	    (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + ((rlim_t)max_memory_mb << 20);
	if (setrlimit(RLIMIT_AS, &rl) < 0)
		fprintf(stderr, "forkpool-worker: setrlimit(RLIMIT_AS): %s\n", strerror(errno));
#endif
}

static int serve(long parent)
{
	/* Never outlive the server: die with it, or now if it is already gone. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	pid_t pp = getppid();
	/* The server may be pid 1 itself (in a container). */
	if (parent > 0 ? pp != (pid_t)parent : pp == 1) {
		fprintf(stderr, "forkpool-worker: the server (pid %ld) is gone\n", parent);
		return 1;
	}
	close_extra_fds();
	/* Writes to a program that has gone fail with EPIPE instead. */
	signal(SIGPIPE, SIG_IGN);
	prog = map_progress();

	struct buf why = {0};
	if (load_extensions(&why, false) < 0 || plugin_init_all(&why) < 0 || program_start_all(&why) < 0)
		cannot_serve(&why);

	struct buf hello = {0};
	size_t off = frame_begin(&hello);
	buf_printf(&hello, "H %d\n", (int)getpid());
	frame_end(&hello, off);
	int rc = frame_write_all(WORKER_SOCK_FD, hello.data, hello.len);
	buf_free(&hello);
	if (rc < 0) {
		/* EPIPE: the server closed before we were ready (it is stopping),
		 * which ends us as EOF later would, in order. The initializers ran,
		 * so the finalizers do too. */
		int closed = errno == EPIPE;
		if (!closed)
			fprintf(stderr, "forkpool-worker: write to fd %d: %s\n", WORKER_SOCK_FD,
				strerror(errno));
		program_stop_all();
		plugin_fini_all();
		return closed ? 0 : 1;
	}
	/* glibc gives a second thread (the sender) its own malloc arena, and
	 * reserves 64 MiB of address space for it at its first malloc: under
	 * the cap that reservation would eat an item's whole allowance, or not,
	 * depending on when the sender first allocates. One arena keeps the
	 * cap about the items. */
	if (max_memory_mb > 0)
		mallopt(M_ARENA_MAX, 1);
	if (start_sender() < 0)
		return 1;
	cap_memory();

	for (;;) {
		const char *p;
		size_t n;
		int r;
		while ((r = frame_next(&rd, &p, &n)) == 1)
			run_chunk(p, n);
		if (r < 0)
			malformed("frame longer than FRAME_MAX");
		wait_readable(WORKER_SOCK_FD);
		long got = frame_fill(&rd, WORKER_SOCK_FD);
		/* The server closed: we are done. ECONNRESET says the same when
		 * it closed with our last bytes unread (a stop right after our
		 * hello, say). */
		if (got == 0 || (got < 0 && errno == ECONNRESET))
			finish(0);
		if (got < 0) {
			fprintf(stderr, "forkpool-worker: read from the server: %s\n", strerror(errno));
			finish(1);
		}
	}
}

static int describe(void)
{
	/* Die with the server should it be killed while a plugin hangs here. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	/* stdout is for the catalogue alone: what a plugin prints while it
	 * loads (against the rules, but it happens) goes to stderr, the
	 * server's log, rather than garble it. */
	int cat = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, WORKER_PROGRESS_FD + 1);
	if (cat < 0 || dup2(STDERR_FILENO, STDOUT_FILENO) < 0) {
		fprintf(stderr, "forkpool-worker: --describe: stdout: %s\n", strerror(errno));
		return 1;
	}
	struct buf why = {0};
	if (load_extensions(&why, true) < 0) {
		for (char *line = strtok(why.data, "\n"); line; line = strtok(NULL, "\n"))
			fprintf(stderr, "forkpool-worker: %s\n", line);
		fflush(stderr);
		_exit(WORKER_EXIT_CONFIG); /* nothing to clean up: skip the leak report */
	}
	fflush(stdout);
	fprintf(stderr, "forkpool-worker: " DESCRIBE_LOADING "done\n");
	struct buf out = {0};
	task_describe(&out);
	buf_addc(&out, '\n');
	FILE *f = fdopen(cat, "w");
	bool ok = f && fwrite(out.data, 1, out.len, f) == out.len;
	ok = f && fclose(f) == 0 && ok;
	buf_free(&out);
	return ok ? 0 : 1;
}

static int usage(void)
{
	fprintf(stderr, "usage: forkpool-worker [EXT...] --describe\n"
			"       forkpool-worker [EXT...] [--serve] [--parent PID] [--max-memory MB]\n"
			"EXT:   --plugin PATH.so[=INITARGS_JSON]  --tasks-file PATH  (repeatable)\n");
	return 2;
}

int main(int argc, char **argv)
{
	long parent = 0;
	bool desc = false;
	ext_args = calloc((size_t)argc, sizeof *ext_args);
	if (!ext_args)
		return 1;
	for (int i = 1; i < argc; i++) {
		if ((!strcmp(argv[i], "--plugin") || !strcmp(argv[i], "--tasks-file")) && i + 1 < argc) {
			ext_args[next_args++] = argv[i];
			ext_args[next_args++] = argv[++i];
		} else if (!strcmp(argv[i], "--describe")) {
			desc = true;
		} else if (!strcmp(argv[i], "--serve")) {
			continue;
		} else if (!strcmp(argv[i], "--max-memory") && i + 1 < argc) {
			char *e;
			errno = 0;
			max_memory_mb = strtol(argv[++i], &e, 10);
			if (errno || *e || e == argv[i] || max_memory_mb <= 0 || max_memory_mb > (1L << 30))
				return usage();
		} else if (!strcmp(argv[i], "--parent") && i + 1 < argc) {
			char *e;
			errno = 0;
			parent = strtol(argv[++i], &e, 10);
			if (errno || *e || e == argv[i] || parent <= 0 || parent > INT_MAX)
				return usage();
		} else {
			return usage();
		}
	}
	return desc ? describe() : serve(parent);
}
