/* pool.c - the prefork pool (see pool.h).
 *
 * A worker's life: STARTING (spawned, no hello yet) -> IDLE <-> BUSY (a chunk
 * in flight) -> RETIRING (task limit reached: its socket is closed and it exits)
 * -> reaped. A death is seen twice, as EOF on the socket and as SIGCHLD; only
 * the reap acts on it, after draining what the socket still holds, so results
 * sent before the death are kept and the exit status names the cause. */
#include "pool.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "buf.h"
#include "catalog.h"
#include "frame.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"

extern char **environ;

/* Chunks are also capped so that one claim never holds the loop for long. */
#define CHUNK_CAP 10000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

enum wstate { W_STARTING, W_IDLE, W_BUSY, W_RETIRING };

struct worker {
	struct loop_watch watch; /* fd: the server's end of the socketpair; -1 once closed */
	pid_t pid;
	enum wstate state;
	struct progress *prog;
	struct frame_reader rd;
	struct buf out; /* frame bytes not yet written */
	size_t out_off;
	int64_t tasks_run, started_ms;
	char task[TASK_NAME_MAX]; /* the chunk's task and its batch's submission (metrics) */
	int64_t batch_created_ms;
	/* the chunk in flight */
	int64_t batch;
	int64_t timeout_ns; /* 0: none */
	int64_t *idx;
	size_t n, done, cap;
	int killed;       /* we killed it (timeout) */
	int cancelled; /* killed by pool_terminate_batch: its items become cancelled */
	int64_t kill_pos; /* the item that overran */
	char *fatal;      /* why it cannot serve (its F record), or NULL */
	struct worker *next;
};

struct qbatch {
	int64_t id, chunksize;
	double timeout;
	int64_t created_ms;
	char task[TASK_NAME_MAX];
	struct qbatch *next;
};

static struct {
	struct store *store;
	struct pool_config cfg;
	pool_change_fn on_change;
	struct worker *workers;
	int nworkers; /* not counting RETIRING ones */
	struct qbatch *qhead, *qtail;
	int stopping;
	int failures;       /* consecutive deaths before hello */
	int64_t respawn_at; /* monotonic ms; 0: none due */
	char health[512];   /* why the last worker could not start; "": it could */
	struct buf chunk;   /* scratch for building chunk frames */
} P;

static void worker_io(struct loop_watch *lw, uint32_t events);

static void queue_push(const struct qbatch *src)
{
	for (struct qbatch *q = P.qhead; q; q = q->next)
		if (q->id == src->id)
			return;
	struct qbatch *q = malloc(sizeof *q);
	if (!q)
		abort();
	*q = *src;
	q->next = NULL;
	if (P.qtail)
		P.qtail->next = q;
	else
		P.qhead = q;
	P.qtail = q;
}

static struct qbatch *queue_pop(void)
{
	struct qbatch *q = P.qhead;
	if (q) {
		P.qhead = q->next;
		if (!P.qhead)
			P.qtail = NULL;
	}
	return q;
}

void pool_add_batch(const struct batch *b)
{
	struct qbatch q = {.id = b->id, .chunksize = b->chunksize, .timeout = b->timeout};
	snprintf(q.task, sizeof q.task, "%s", b->task);
	q.created_ms = b->created_ms;
	queue_push(&q);
}

/* Moves fd to a number >= min so that dup2 onto 3 and 4 in the child cannot
 * clobber it. */
static int fd_above(int fd, int min)
{
	if (fd >= min)
		return fd;
	int nfd = fcntl(fd, F_DUPFD_CLOEXEC, min);
	close(fd);
	return nfd;
}

static int spawn_worker(void)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		log_error("worker_spawn", "msg=\"socketpair: %s\"", strerror(errno));
		return -1;
	}
	int mfd = memfd_create("forkpool-progress", MFD_CLOEXEC);
	struct progress *prog = MAP_FAILED;
	if (mfd >= 0 && ftruncate(mfd, 4096) == 0)
		prog = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	sv[1] = fd_above(sv[1], 5);
	mfd = fd_above(mfd, 5);
	if (prog == MAP_FAILED || sv[1] < 0 || mfd < 0) {
		log_error("worker_spawn", "msg=\"progress page: %s\"", strerror(errno));
		close(sv[0]);
		close(sv[1]);
		close(mfd);
		if (prog != MAP_FAILED)
			munmap(prog, 4096);
		return -1;
	}
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, sv[1], WORKER_SOCK_FD);
	posix_spawn_file_actions_adddup2(&fa, mfd, WORKER_PROGRESS_FD);
	posix_spawnattr_t at;
	posix_spawnattr_init(&at);
	sigset_t none, all;
	sigemptyset(&none);
	sigfillset(&all);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setsigdefault(&at, &all);
	/* Its own process group: a Ctrl-C at the terminal reaches the server,
	 * which stops the workers itself. */
	posix_spawnattr_setpgroup(&at, 0);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
					  POSIX_SPAWN_SETPGROUP);
	char ppid[24];
	snprintf(ppid, sizeof ppid, "%d", (int)getpid());
	size_t nextra = 0;
	while (P.cfg.worker_args && P.cfg.worker_args[nextra])
		nextra++;
	char **argv = calloc(nextra + 4, sizeof *argv);
	if (!argv)
		abort();
	argv[0] = (char *)P.cfg.worker_path;
	for (size_t i = 0; i < nextra; i++)
		argv[i + 1] = P.cfg.worker_args[i];
	argv[nextra + 1] = "--parent";
	argv[nextra + 2] = ppid;
	pid_t pid;
	int rc = posix_spawn(&pid, P.cfg.worker_path, &fa, &at, argv, environ);
	free(argv);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	close(sv[1]);
	close(mfd);
	if (rc != 0) {
		log_error("worker_spawn", "path=\"%s\" msg=\"%s\"", P.cfg.worker_path, strerror(rc));
		close(sv[0]);
		munmap(prog, 4096);
		return -1;
	}
	fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
	struct worker *w = calloc(1, sizeof *w);
	if (!w)
		abort();
	w->watch = (struct loop_watch){.fd = sv[0], .fn = worker_io, .arg = w};
	w->pid = pid;
	w->prog = prog;
	w->state = W_STARTING;
	w->started_ms = now_unix_ms();
	w->next = P.workers;
	P.workers = w;
	P.nworkers++;
	loop_add(&w->watch, EPOLLIN);
	log_info("worker_start", "pid=%d", (int)pid);
	metrics_worker_start();
	return 0;
}

/* Starts workers until there are cfg.workers, unless a backoff is running. */
static void fill_pool(void)
{
	if (P.stopping || P.respawn_at > now_mono_ms())
		return;
	P.respawn_at = 0;
	while (P.nworkers < P.cfg.workers)
		if (spawn_worker() < 0) {
			P.respawn_at = now_mono_ms() + BACKOFF_MAX_MS;
			return;
		}
}

static void close_socket(struct worker *w)
{
	if (w->watch.fd < 0)
		return;
	loop_del(&w->watch);
	close(w->watch.fd);
	w->watch.fd = -1;
}

/* Writes what it can of the output buffer; watches for writability if more
 * is left. */
static void flush_out(struct worker *w)
{
	while (w->watch.fd >= 0 && w->out_off < w->out.len) {
		ssize_t k = send(w->watch.fd, w->out.data + w->out_off, w->out.len - w->out_off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				loop_mod(&w->watch, EPOLLIN | EPOLLOUT);
				return;
			}
			/* The peer is gone; the reap will deal with its chunk. */
			close_socket(w);
			kill(w->pid, SIGKILL);
			return;
		}
		w->out_off += (size_t)k;
	}
	if (w->out_off == w->out.len && w->out.len) {
		buf_reset(&w->out);
		w->out_off = 0;
		if (w->watch.fd >= 0)
			loop_mod(&w->watch, EPOLLIN);
	}
}

static void chunk_done(struct worker *w)
{
	w->tasks_run += (int64_t)w->n;
	w->n = w->done = 0;
	w->state = W_IDLE;
	if (P.cfg.max_tasks_per_child > 0 && w->tasks_run >= P.cfg.max_tasks_per_child) {
		/* EOF tells it to exit; a replacement starts now. */
		w->state = W_RETIRING;
		close_socket(w);
		P.nworkers--;
		log_info("worker_retire", "pid=%d tasks=%lld", (int)w->pid, (long long)w->tasks_run);
		fill_pool();
	}
}

static void worker_broken(struct worker *w, const char *why)
{
	log_error("worker_protocol", "pid=%d msg=\"%s\"", (int)w->pid, why);
	close_socket(w);
	kill(w->pid, SIGKILL);
}

/* One record line from the worker (without its newline). */
static void handle_record(struct worker *w, char *line, size_t len)
{
	line[len] = '\0';
	if (line[0] == 'H') {
		if (w->state == W_STARTING) {
			w->state = W_IDLE;
			P.failures = 0;
			P.health[0] = '\0';
		}
		return;
	}
	if (line[0] == 'F' && line[1] == ' ' && w->state == W_STARTING) {
		/* It cannot serve; it exits next, and the reap reports why. */
		json_t *msg = json_loads(line + 2, JSON_DECODE_ANY, NULL);
		free(w->fatal);
		w->fatal = strdup(json_is_string(msg) ? json_string_value(msg) : line + 2);
		json_decref(msg);
		return;
	}
	if ((line[0] != 'R' && line[0] != 'E') || line[1] != ' ' || w->state != W_BUSY) {
		worker_broken(w, "unexpected record");
		return;
	}
	char *p = line + 2, *end;
	long long pos = strtoll(p, &end, 10);
	if (end == p || *end != ' ' || pos != (long long)w->done) {
		worker_broken(w, "record out of order");
		return;
	}
	p = end + 1;
	long long micros = strtoll(p, &end, 10);
	if (end == p || *end != ' ') {
		worker_broken(w, "malformed record");
		return;
	}
	p = end + 1;
	int64_t now = now_unix_ms(), started = now - micros / 1000;
	int64_t idx = w->idx[w->done];
	if (line[0] == 'R') {
		store_finish(P.store, w->batch, idx, p, len - (size_t)(p - line), started, now);
	} else {
		json_t *msg = json_loadb(p, len - (size_t)(p - line), JSON_DECODE_ANY, NULL);
		store_fail(P.store, w->batch, idx, FE_TASK,
			   json_is_string(msg) ? json_string_value(msg) : "task failed", started, now);
		json_decref(msg);
	}
	metrics_item_done(w->task, line[0] == 'R' ? FS_FINISHED : FS_FAILED,
			  line[0] == 'R' ? FE_NONE : FE_TASK, micros, started - w->batch_created_ms);
	w->done++;
	P.on_change(w->batch);
	if (w->done == w->n)
		chunk_done(w);
}

static void handle_frame(struct worker *w, const char *p, size_t n)
{
	/* Records are lines; the frame buffer is ours to edit until the next fill. */
	char *s = (char *)p, *e = s + n;
	while (s < e && w->watch.fd >= 0) {
		char *nl = memchr(s, '\n', (size_t)(e - s));
		if (!nl) {
			worker_broken(w, "record without newline");
			return;
		}
		handle_record(w, s, (size_t)(nl - s));
		s = nl + 1;
	}
}

/* Reads and handles everything the socket holds now. Returns 0 on EOF or a
 * broken peer (the socket is then closed), 1 otherwise. */
static int drain(struct worker *w)
{
	for (;;) {
		long got = frame_fill(&w->rd, w->watch.fd);
		if (got < 0 && errno == EAGAIN)
			return 1;
		if (got <= 0) {
			close_socket(w);
			return 0;
		}
		const char *p;
		size_t n;
		int r;
		while ((r = frame_next(&w->rd, &p, &n)) == 1) {
			handle_frame(w, p, n);
			if (w->watch.fd < 0)
				return 0;
		}
		if (r < 0) {
			worker_broken(w, "frame too long");
			return 0;
		}
	}
}

static void worker_io(struct loop_watch *lw, uint32_t events)
{
	struct worker *w = lw->arg;
	if (events & EPOLLOUT)
		flush_out(w);
	if (w->watch.fd >= 0 && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !drain(w) &&
	    w->state != W_RETIRING) {
		/* EOF: it is dying or dead. Make sure, and let the reap decide. (A
		 * worker retired by its last record exits on its own, running its
		 * plugins' finalizers.) */
		kill(w->pid, SIGKILL);
	}
}

static void send_chunk(struct worker *w, struct qbatch *q)
{
	int64_t max = q->chunksize < CHUNK_CAP ? q->chunksize : CHUNK_CAP;
	if (P.cfg.max_tasks_per_child > 0 && P.cfg.max_tasks_per_child - w->tasks_run < max)
		max = P.cfg.max_tasks_per_child - w->tasks_run;
	if ((size_t)max > w->cap) {
		w->cap = (size_t)max;
		w->idx = realloc(w->idx, w->cap * sizeof *w->idx);
		if (!w->idx)
			abort();
	}
	buf_reset(&P.chunk);
	size_t off = frame_begin(&P.chunk);
	buf_printf(&P.chunk, "C %s ", q->task);
	size_t count_at = P.chunk.len;
	buf_adds(&P.chunk, "0000000000\n"); /* the count, filled in below */
	int n = store_claim(P.store, q->id, max, w->pid, now_unix_ms(), w->idx, &P.chunk);
	if (n <= 0)
		return;
	char cnt[12];
	snprintf(cnt, sizeof cnt, "%010d", n);
	memcpy(P.chunk.data + count_at, cnt, 10);
	frame_end(&P.chunk, off);
	w->batch = q->id;
	memcpy(w->task, q->task, sizeof w->task);
	w->batch_created_ms = q->created_ms;
	/* A task may bring its own limit (a tasks file's timeout): the lower wins. */
	double timeout = q->timeout;
	const struct task_info *ti = catalog_find(q->task);
	if (ti && ti->timeout > 0 && (timeout <= 0 || ti->timeout < timeout))
		timeout = ti->timeout;
	w->timeout_ns = (int64_t)(timeout * 1e9);
	w->n = (size_t)n;
	w->done = 0;
	w->killed = 0;
	w->state = W_BUSY;
	atomic_store_explicit(&w->prog->item, 0, memory_order_release);
	buf_add(&w->out, P.chunk.data, P.chunk.len);
	flush_out(w);
}

void pool_dispatch(void)
{
	if (P.stopping)
		return;
	for (struct worker *w = P.workers; w && P.qhead; w = w->next) {
		while (w->state == W_IDLE && w->watch.fd >= 0 && P.qhead) {
			struct qbatch *q = queue_pop();
			send_chunk(w, q);
			if (w->state == W_BUSY) {
				/* Round robin: the batch goes to the back of the queue. */
				q->next = NULL;
				if (P.qtail)
					P.qtail->next = q;
				else
					P.qhead = q;
				P.qtail = q;
			} else {
				free(q); /* nothing pending any more */
			}
		}
	}
}

static void describe_status(int status, char *out, size_t len)
{
	if (WIFSIGNALED(status))
		snprintf(out, len, "killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
	else if (WIFEXITED(status))
		snprintf(out, len, "exited with status %d", WEXITSTATUS(status));
	else
		snprintf(out, len, "ended with wait status %d", status);
}

/* Settles the chunk of a worker that is gone: the item it was running fails
 * (or times out), the rest go back to pending. */
static void settle_chunk(struct worker *w, int status)
{
	if (w->state != W_BUSY || w->done == w->n)
		return;
	uint32_t item = atomic_load_explicit(&w->prog->item, memory_order_acquire);
	int64_t running = item > 0 ? (int64_t)item - 1 : -1;
	int64_t started_ns = atomic_load_explicit(&w->prog->started_ns, memory_order_relaxed);
	int64_t now = now_unix_ms();
	int64_t started = now - (now_mono_ns() - started_ns) / 1000000;
	char why[160], how[96];
	describe_status(status, how, sizeof how);
	int requeued = 0;
	for (size_t pos = w->done; pos < w->n; pos++) {
		int64_t idx = w->idx[pos];
		if (w->cancelled) {
			store_cancel_running(P.store, w->batch, idx, now);
			P.on_change(w->batch);
		} else if ((int64_t)pos != running || P.stopping || (w->killed && w->kill_pos != running)) {
			store_requeue(P.store, w->batch, idx);
			requeued++;
		} else if (w->killed) {
			snprintf(why, sizeof why, "item exceeded its timeout of %g s; worker %d was killed",
				 (double)w->timeout_ns / 1e9, (int)w->pid);
			store_fail(P.store, w->batch, idx, FE_TIMEOUT, why, started, now);
			metrics_item_done(w->task, FS_FAILED, FE_TIMEOUT, (now - started) * 1000,
					  started - w->batch_created_ms);
			P.on_change(w->batch);
		} else {
			snprintf(why, sizeof why, "worker %d %s while running this item", (int)w->pid, how);
			store_fail(P.store, w->batch, idx, FE_WORKER_DIED, why, started, now);
			metrics_item_done(w->task, FS_FAILED, FE_WORKER_DIED, (now - started) * 1000,
					  started - w->batch_created_ms);
			P.on_change(w->batch);
		}
	}
	if (requeued) {
		struct batch b;
		if (store_batch_get(P.store, w->batch, &b) == 1)
			pool_add_batch(&b);
	}
	w->n = w->done = 0;
}

static void free_worker(struct worker *w)
{
	close_socket(w);
	frame_reader_free(&w->rd);
	buf_free(&w->out);
	munmap(w->prog, 4096);
	free(w->idx);
	free(w->fatal);
	free(w);
}

/* Reaps exited workers (blocking: waits until none is left). */
static void reap(int block)
{
	int status;
	pid_t pid;
	while (P.workers && (pid = waitpid(-1, &status, block ? 0 : WNOHANG)) != 0) {
		if (pid < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		struct worker **pp = &P.workers, *w;
		while ((w = *pp) && w->pid != pid)
			pp = &w->next;
		if (!w)
			continue; /* not ours (a --describe run) */
		*pp = w->next;
		if (w->watch.fd >= 0)
			drain(w); /* results it sent before dying still count */
		char how[96];
		describe_status(status, how, sizeof how);
		const char *reason = w->state == W_RETIRING ? "max_tasks"
				     : P.stopping	      ? "shutdown"
				     : w->cancelled	      ? "cancelled"
				     : w->killed	      ? "timeout"
				     : w->state == W_STARTING ? "start_failed"
							      : "died";
		log_info("worker_exit", "pid=%d reason=%s status=\"%s\" tasks=%lld", (int)pid, reason,
			 how, (long long)(w->tasks_run + (int64_t)w->done));
		metrics_worker_exit(reason);
		settle_chunk(w, status);
		if (w->state != W_RETIRING)
			P.nworkers--;
		if (w->state == W_STARTING && !P.stopping) {
			/* It could not even start: back off rather than spin. */
			int64_t delay = BACKOFF_MIN_MS << (P.failures < 6 ? P.failures : 6);
			P.failures++;
			if (delay > BACKOFF_MAX_MS)
				delay = BACKOFF_MAX_MS;
			P.respawn_at = now_mono_ms() + delay;
			if (w->fatal)
				snprintf(P.health, sizeof P.health, "%s", w->fatal);
			else
				snprintf(P.health, sizeof P.health, "worker %d %s before it was ready",
					 (int)pid, how);
			char q[sizeof P.health]; /* for logfmt: no double quotes */
			snprintf(q, sizeof q, "%s", P.health);
			for (char *c = q; *c; c++)
				if (*c == '"' || *c == '\n')
					*c = '\'';
			log_error("worker_start_failed", "pid=%d retry_in_ms=%lld msg=\"%s\"", (int)pid,
				  (long long)delay, q);
		}
		free_worker(w);
	}
}

void pool_reap(void)
{
	reap(0);
	fill_pool();
}

int64_t pool_tick(void)
{
	int64_t next = -1, now_ns = now_mono_ns();
	for (struct worker *w = P.workers; w; w = w->next) {
		if (w->state != W_BUSY || w->timeout_ns <= 0 || w->killed || w->cancelled)
			continue;
		uint32_t item = atomic_load_explicit(&w->prog->item, memory_order_acquire);
		int64_t started = atomic_load_explicit(&w->prog->started_ns, memory_order_relaxed);
		int64_t deadline;
		if (item > w->done) {
			deadline = started + w->timeout_ns;
			if (now_ns >= deadline) {
				w->killed = 1;
				w->kill_pos = (int64_t)item - 1;
				log_info("item_timeout", "pid=%d batch=%lld index=%lld", (int)w->pid,
					 (long long)w->batch, (long long)w->idx[item - 1]);
				kill(w->pid, SIGKILL);
				continue;
			}
		} else {
			deadline = now_ns + 50 * 1000000LL; /* between items: look again soon */
		}
		int64_t ms = deadline / 1000000 + 1;
		if (next < 0 || ms < next)
			next = ms;
	}
	if (P.respawn_at) {
		if (P.respawn_at <= now_mono_ms())
			fill_pool();
		if (P.respawn_at && (next < 0 || P.respawn_at < next))
			next = P.respawn_at;
	}
	return next;
}

static const char *const wstate_names[] = {"starting", "idle", "busy", "retiring"};

void pool_workers(void (*fn)(void *arg, const struct pool_worker_info *w), void *arg)
{
	int64_t now = now_unix_ms(), now_ns = now_mono_ns();
	for (struct worker *w = P.workers; w; w = w->next) {
		struct pool_worker_info i = {.pid = (int)w->pid, .state = wstate_names[w->state],
					     .tasks_run = w->tasks_run + (int64_t)w->done,
					     .started_ms = w->started_ms, .index = -1};
		uint32_t item = atomic_load_explicit(&w->prog->item, memory_order_acquire);
		if (w->state == W_BUSY && item > w->done && item <= w->n) {
			int64_t started = atomic_load_explicit(&w->prog->started_ns, memory_order_relaxed);
			i.batch = w->batch;
			i.index = w->idx[item - 1];
			i.task = w->task;
			i.item_started_ms = now - (now_ns - started) / 1000000;
		}
		fn(arg, &i);
	}
}

int pool_terminate_batch(int64_t batch)
{
	int n = 0;
	for (struct worker *w = P.workers; w; w = w->next) {
		if (w->state != W_BUSY || w->batch != batch || w->cancelled || w->done == w->n)
			continue;
		w->cancelled = 1;
		kill(w->pid, SIGKILL);
		/* Its items are cancelled now, not when it is reaped: the answer
		 * to the cancel shows them so, and results still in flight
		 * find them no longer running. */
		int64_t now = now_unix_ms();
		for (size_t pos = w->done; pos < w->n; pos++)
			store_cancel_running(P.store, w->batch, w->idx[pos], now);
		P.on_change(batch);
		log_info("worker_terminate", "pid=%d batch=%lld", (int)w->pid, (long long)batch);
		n++;
	}
	return n;
}

const char *pool_health_reason(void) { return P.health[0] ? P.health : NULL; }

int pool_ready(void)
{
	int n = 0;
	for (struct worker *w = P.workers; w; w = w->next)
		n += w->state == W_IDLE || w->state == W_BUSY;
	return n;
}

int pool_start(struct store *s, const struct pool_config *c, pool_change_fn on_change)
{
	P.store = s;
	P.cfg = *c;
	P.on_change = on_change;
	int64_t *ids;
	size_t n;
	if (store_pending_batches(s, &ids, &n) < 0)
		return -1;
	for (size_t i = 0; i < n; i++) {
		struct batch b;
		if (store_batch_get(s, ids[i], &b) == 1)
			pool_add_batch(&b);
	}
	free(ids);
	fill_pool();
	return P.nworkers > 0 ? 0 : -1;
}

void pool_stop(void)
{
	P.stopping = 1;
	for (struct worker *w = P.workers; w; w = w->next)
		kill(w->pid, SIGKILL);
	reap(1);
	P.nworkers = 0;
	struct qbatch *q;
	while ((q = queue_pop()))
		free(q);
	buf_free(&P.chunk);
}
