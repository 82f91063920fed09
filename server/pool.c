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
/* A timed-out item's worker gets SIGTERM, and SIGKILL if it is still there
 * this much later (a task that ignores or handles SIGTERM). */
#define KILL_GRACE_MS 500
/* How often, at most, a busy worker's resident size is read between items
 * (it is always read when a chunk ends). */
#define RSS_CHECK_MS 100

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
	int64_t spawned_mono_ms; /* for the start deadline */
	char task[TASK_NAME_MAX]; /* the chunk's task */
	/* the chunk in flight: its items, from one batch or several (see
	 * send_chunk), all with the same task, timeout and retries */
	struct slot *slot;
	size_t n, done, cap;
	int64_t timeout_ns; /* 0: none */
	int killed;       /* we killed it (timeout) */
	int64_t term_at;  /* monotonic ms of the timeout's SIGTERM; 0: SIGKILL sent or none */
	int64_t retries;  /* the chunk's batch's */
	const char *retire; /* replace it when its chunk ends ("max_memory"), or NULL */
	int64_t rss_checked_ms;
	int cancelled; /* killed by pool_terminate_batch: those of its items become cancelled */
	int64_t kill_pos; /* the item that overran */
	char *fatal;      /* why it cannot serve (its F record), or NULL */
	struct loop_watch errw; /* the read end of its stderr; fd -1 once closed */
	struct buf errline;	/* a line of it not yet ended */
	struct worker *next;
};

/* An item of the chunk a worker runs. */
struct slot {
	int64_t batch, idx;
	int64_t created_ms; /* its batch's submission (metrics: the wait) */
	int cancelled;	    /* its batch was cancelled while it was in the chunk */
};

struct qbatch {
	int64_t id, chunksize, retries;
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
	int nqueued;
	int64_t qmax; /* no queued batch has a larger id */
	int stopping;
	int draining; /* pool_drain: no new chunks, no new workers */
	/* The writes since the last commit (see "the pool's writes" below). */
	struct op *ops;
	size_t nops, capops;
	struct buf optext;
	int op_failed;	    /* a write failed since the last commit */
	int db_down;	    /* a commit failed: writes are only logged until the replay */
	int db_failures;    /* consecutive failed commits */
	int64_t db_retry_at; /* monotonic ms of the next replay */
	int failures;       /* consecutive failed starts (no item run since) */
	int64_t respawn_at; /* monotonic ms; 0: none due */
	char health[512];   /* why the last worker could not start; "": it could */
	struct buf chunk;   /* scratch for building chunk frames */
	int64_t claimed[CHUNK_CAP]; /* scratch: the indexes one claim took */
} P;

static void worker_io(struct loop_watch *lw, uint32_t events);

/* Signals w and everything its tasks started: it leads its own process group
 * (spawn_worker), which a task's children inherit. A kill of the worker alone
 * let a timed-out exec task's own children run on (sh -c "sleep 60"), since
 * only the worker's direct children get its death signal. */
static void signal_worker(const struct worker *w, int sig) { kill(-w->pid, sig); }

static void queue_append(struct qbatch *q)
{
	if (q->id > P.qmax)
		P.qmax = q->id;
	q->next = NULL;
	*(P.qtail ? &P.qtail->next : &P.qhead) = q;
	P.qtail = q;
	P.nqueued++;
}

static void queue_prepend(struct qbatch *q)
{
	if (q->id > P.qmax)
		P.qmax = q->id;
	q->next = P.qhead;
	P.qhead = q;
	if (!P.qtail)
		P.qtail = q;
	P.nqueued++;
}

static void queue_push(const struct qbatch *src)
{
	/* A new submission's id is past every queued one: no need to look
	 * through a queue of thousands of small batches for it. */
	for (struct qbatch *q = src->id > P.qmax ? NULL : P.qhead; q; q = q->next)
		if (q->id == src->id)
			return;
	struct qbatch *q = malloc(sizeof *q);
	if (!q)
		abort();
	*q = *src;
	queue_append(q);
}

/* Takes q (whose predecessor is prev, or NULL) out of the queue. */
static void queue_unlink(struct qbatch *prev, struct qbatch *q)
{
	*(prev ? &prev->next : &P.qhead) = q->next;
	if (P.qtail == q)
		P.qtail = prev;
	q->next = NULL;
	P.nqueued--;
}

static struct qbatch *queue_pop(void)
{
	struct qbatch *q = P.qhead;
	if (q)
		queue_unlink(NULL, q);
	return q;
}

void pool_add_batch(const struct batch *b)
{
	struct qbatch q = {.id = b->id, .chunksize = b->chunksize, .timeout = b->timeout,
			   .retries = b->retries};
	str_copy(q.task, sizeof q.task, b->task);
	q.created_ms = b->created_ms;
	queue_push(&q);
}

/* ---- the pool's writes ----
 *
 * A commit can fail (the disk is full, say) and take every write of the
 * turn with it, while the workers did run those items and will not run them
 * again. So each write the pool makes is also logged here until a commit
 * succeeds. After a failed commit the pool is "down": it sends no chunks,
 * outcomes that arrive are only logged, and after a backoff the whole log is
 * replayed into a new transaction, until a commit takes. Nothing a worker
 * reported is lost while the server runs. */

enum op_kind { OP_CLAIM, OP_FINISH, OP_FAIL, OP_DIED, OP_REQUEUE, OP_CANCEL };

struct op {
	enum op_kind kind;
	enum ferr type;	   /* OP_FAIL, OP_DIED */
	int64_t batch, idx, last; /* OP_CLAIM: indexes idx..last */
	int64_t arg;	   /* OP_CLAIM: the pid; OP_DIED: the batch's retries */
	int64_t started, now;
	size_t text, len;  /* OP_FINISH: the result, OP_FAIL/OP_DIED: the message, in optext */
};

#define DB_RETRY_MIN_MS 250

/* Applies one write to the store. Returns 1 if the item went back to
 * pending (a requeue, or a retry of a died item), 0 if not, -1 on error. */
static int op_apply(const struct op *o)
{
	const char *text = P.optext.data + o->text;
	int rc = 0;
	switch (o->kind) {
	case OP_CLAIM:
		rc = store_claim_range(P.store, o->batch, o->idx, o->last, o->arg, o->now) < 0 ? -1 : 0;
		break;
	case OP_FINISH:
		rc = store_finish(P.store, o->batch, o->idx, text, o->len, o->started, o->now);
		break;
	case OP_FAIL:
		rc = store_fail(P.store, o->batch, o->idx, o->type, text, o->started, o->now);
		break;
	case OP_DIED:
		if (o->arg > 0) {
			rc = store_retry(P.store, o->batch, o->idx, o->arg);
			if (rc != 0)
				return rc;
		}
		rc = store_fail(P.store, o->batch, o->idx, o->type, text, o->started, o->now);
		break;
	case OP_REQUEUE:
		return store_requeue(P.store, o->batch, o->idx) < 0 ? -1 : 1;
	case OP_CANCEL:
		rc = store_cancel_running(P.store, o->batch, o->idx, o->now) < 0 ? -1 : 0;
		break;
	}
	if (rc < 0)
		return -1;
	if (o->kind != OP_CLAIM)
		P.on_change(o->batch);
	return 0;
}

/* Logs a write (text: len bytes, NUL-terminated in the log) and, unless the
 * pool is down, applies it. Returns what op_apply did, or 0 when down. */
static int op_do(struct op o, const char *text, size_t len, int apply)
{
	if (P.nops == P.capops) {
		P.capops = P.capops ? P.capops * 2 : 256;
		P.ops = realloc(P.ops, P.capops * sizeof *P.ops);
		if (!P.ops)
			abort();
	}
	o.text = P.optext.len;
	o.len = len;
	buf_add(&P.optext, text ? text : "", len);
	buf_addc(&P.optext, '\0');
	P.ops[P.nops++] = o;
	if (P.db_down || !apply)
		return 0;
	int rc = op_apply(&P.ops[P.nops - 1]);
	if (rc < 0)
		P.op_failed = 1;
	return rc;
}

/* Replays the log into the store after a failed commit; the turn's commit
 * then decides. Batches whose items went back to pending are queued. A
 * claim whose batch is not there any more was of a submission the failed
 * commit took back (its client was told 503, and its id is never given
 * again): the workers still running its items are stopped, as by a cancel
 * with terminate, rather than left to run work nobody will see. */
static void db_replay(void)
{
	P.db_down = 0;
	log_info("db_replay", "writes=%zu attempt=%d", P.nops, P.db_failures + 1);
	int64_t *gone = NULL;
	size_t ngone = 0;
	for (size_t i = 0; i < P.nops; i++) {
		const struct op *o = &P.ops[i];
		struct batch b;
		if (o->kind == OP_CLAIM && (ngone == 0 || gone[ngone - 1] != o->batch) &&
		    store_batch_get(P.store, o->batch, &b) == 0) {
			gone = realloc(gone, (ngone + 1) * sizeof *gone);
			if (!gone)
				abort();
			gone[ngone++] = o->batch;
		}
		int rc = op_apply(o); /* on a batch not there: nothing */
		if (rc < 0)
			P.op_failed = 1;
		if (rc == 1 && store_batch_get(P.store, o->batch, &b) == 1)
			pool_add_batch(&b);
	}
	/* After the loop: a terminate logs writes of its own (the log grows). */
	for (size_t k = 0; k < ngone; k++) {
		log_info("batch_taken_back", "batch=%lld msg=\"its submission's commit failed; stopping "
					     "the workers that run its items\"",
			 (long long)gone[k]);
		pool_terminate_batch(gone[k]);
	}
	free(gone);
}

void pool_after_commit(int ok)
{
	if (!ok && !P.op_failed && !P.db_down && P.nops == 0) {
		/* None of the pool's writes were in it (a submission's were):
		 * nothing to replay, but /healthz says so until a commit takes. */
		if (!P.health[0])
			snprintf(P.health, sizeof P.health, "the database cannot be written (%s)",
				 store_error(P.store));
		return;
	}
	if (ok && !P.op_failed) {
		if (P.db_down)
			return; /* that commit held none of the pool's writes */
		if (P.db_failures)
			log_info("db_recovered", "failed_commits=%d", P.db_failures);
		P.nops = 0;
		buf_reset(&P.optext);
		P.db_failures = 0;
		if (!strncmp(P.health, "the database", 12))
			P.health[0] = '\0';
		return;
	}
	P.op_failed = 0;
	P.db_down = 1;
	int64_t delay = (int64_t)DB_RETRY_MIN_MS << (P.db_failures < 5 ? P.db_failures : 5);
	if (delay > BACKOFF_MAX_MS)
		delay = BACKOFF_MAX_MS;
	P.db_failures++;
	P.db_retry_at = now_mono_ms() + delay;
	snprintf(P.health, sizeof P.health,
		 "the database cannot be written (%s); %zu outcomes of running items are kept in "
		 "memory and written when it can be",
		 store_error(P.store), P.nops);
	log_error("db_down", "writes_kept=%zu retry_in_ms=%lld msg=\"%s\"", P.nops, (long long)delay,
		  store_error(P.store));
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

/* ---- what workers (and the programs and plugins they run) write to stderr ----
 *
 * Each worker's stderr is a pipe to the server, which logs it a line at a
 * time as event=worker_stderr with the worker's pid, so the server's log stays
 * one logfmt line per event whatever a task prints. */
#define ERR_LINE_MAX 2000 /* a longer line is logged in pieces */

static void log_err_line(const struct worker *w, const char *p, size_t n)
{
	char q[ERR_LINE_MAX * 2 + 1];
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c == '"' || c == '\\')
			q[k++] = '\\';
		q[k++] = c < 0x20 || c == 0x7f ? ' ' : (char)c;
	}
	q[k] = '\0';
	log_warn("worker_stderr", "pid=%d line=\"%s\"", (int)w->pid, q);
}

/* Logs the complete lines of errline (and all of it when flush). */
static void err_lines(struct worker *w, int flush)
{
	if (!w->errline.len)
		return;
	char *p = w->errline.data, *end = p + w->errline.len;
	while (p < end) {
		char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
		if (!nl && !flush && n < ERR_LINE_MAX)
			break;
		if (n > ERR_LINE_MAX)
			n = ERR_LINE_MAX;
		else if (n && p[n - 1] == '\r')
			n--;
		log_err_line(w, p, n);
		p += n;
		if (p < end && *p == '\r')
			p++;
		if (p < end && *p == '\n')
			p++;
	}
	size_t left = (size_t)(end - p);
	memmove(w->errline.data, p, left);
	w->errline.len = left;
}

static void close_err(struct worker *w)
{
	if (w->errw.fd < 0)
		return;
	err_lines(w, 1);
	loop_del(&w->errw);
	close(w->errw.fd);
	w->errw.fd = -1;
}

/* Reads what the pipe holds; closes it at EOF. */
static void drain_err(struct worker *w)
{
	char tmp[4096];
	for (;;) {
		ssize_t n = read(w->errw.fd, tmp, sizeof tmp);
		if (n > 0) {
			buf_add(&w->errline, tmp, (size_t)n);
			err_lines(w, 0);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n == 0 || errno != EAGAIN)
			close_err(w);
		return;
	}
}

static void worker_err_io(struct loop_watch *lw, uint32_t events)
{
	(void)events;
	drain_err(lw->arg);
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
	int ep[2] = {-1, -1};
	if (pipe2(ep, O_CLOEXEC) == 0)
		ep[1] = fd_above(ep[1], 5);
	sv[1] = fd_above(sv[1], 5);
	mfd = fd_above(mfd, 5);
	if (prog == MAP_FAILED || sv[1] < 0 || mfd < 0 || ep[1] < 0) {
		log_error("worker_spawn", "msg=\"progress page or stderr pipe: %s\"", strerror(errno));
		close(sv[0]);
		close(sv[1]);
		close(mfd);
		close(ep[0]);
		close(ep[1]);
		if (prog != MAP_FAILED)
			munmap(prog, 4096);
		return -1;
	}
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, sv[1], WORKER_SOCK_FD);
	posix_spawn_file_actions_adddup2(&fa, mfd, WORKER_PROGRESS_FD);
	posix_spawn_file_actions_adddup2(&fa, ep[1], STDERR_FILENO);
	/* Its own process group: a Ctrl-C at the terminal reaches the server,
	 * which stops the workers itself, and signal_worker reaches what its
	 * tasks started. */
	posix_spawnattr_t at;
	catalog_worker_spawnattr(&at);
	char ppid[24];
	snprintf(ppid, sizeof ppid, "%d", (int)getpid());
	size_t nextra = 0;
	while (P.cfg.worker_args && P.cfg.worker_args[nextra])
		nextra++;
	char **argv = calloc(nextra + 6, sizeof *argv);
	if (!argv)
		abort();
	argv[0] = (char *)P.cfg.worker_path;
	for (size_t i = 0; i < nextra; i++)
		argv[i + 1] = P.cfg.worker_args[i];
	size_t na = nextra + 1;
	char mem[24];
	if (P.cfg.max_memory_mb > 0) {
		snprintf(mem, sizeof mem, "%lld", (long long)P.cfg.max_memory_mb);
		argv[na++] = "--max-memory";
		argv[na++] = mem;
	}
	argv[na++] = "--parent";
	argv[na++] = ppid;
	pid_t pid;
	int rc = posix_spawn(&pid, P.cfg.worker_path, &fa, &at, argv, environ);
	free(argv);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	close(sv[1]);
	close(mfd);
	close(ep[1]);
	if (rc != 0) {
		log_error("worker_spawn", "path=\"%s\" msg=\"%s\"", P.cfg.worker_path, strerror(rc));
		snprintf(P.health, sizeof P.health, "cannot start the worker program %s: %s",
			 P.cfg.worker_path, strerror(rc));
		close(sv[0]);
		close(ep[0]);
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
	w->spawned_mono_ms = now_mono_ms();
	w->next = P.workers;
	P.workers = w;
	P.nworkers++;
	loop_add(&w->watch, EPOLLIN);
	fcntl(ep[0], F_SETFL, fcntl(ep[0], F_GETFL) | O_NONBLOCK);
	w->errw = (struct loop_watch){.fd = ep[0], .fn = worker_err_io, .arg = w};
	loop_add(&w->errw, EPOLLIN);
	log_info("worker_start", "pid=%d", (int)pid);
	metrics_worker_start();
	return 0;
}

/* Starts workers until there are cfg.workers, unless a backoff is running. */
static void fill_pool(void)
{
	if (P.stopping || P.draining || P.respawn_at > now_mono_ms())
		return;
	P.respawn_at = 0;
	while (P.nworkers < P.cfg.workers)
		if (spawn_worker() < 0) {
			P.respawn_at = now_mono_ms() + BACKOFF_MAX_MS;
			if (!P.health[0])
				snprintf(P.health, sizeof P.health,
					 "cannot start a worker (out of file descriptors or memory?)");
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
			signal_worker(w, SIGKILL);
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
	if (!w->retire && P.cfg.max_tasks_per_child > 0 && w->tasks_run >= P.cfg.max_tasks_per_child)
		w->retire = "max_tasks";
	if (w->retire) {
		/* EOF tells it to exit; a replacement starts now. */
		w->state = W_RETIRING;
		close_socket(w);
		P.nworkers--;
		log_info("worker_retire", "pid=%d reason=%s tasks=%lld", (int)w->pid, w->retire,
			 (long long)w->tasks_run);
		fill_pool();
	}
}

int64_t pool_rss_bytes(pid_t pid)
{
	char path[64], s[128];
	snprintf(path, sizeof path, "/proc/%d/statm", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, s, sizeof s - 1);
	close(fd);
	if (n <= 0)
		return 0;
	s[n] = '\0';
	long long size, resident;
	if (sscanf(s, "%lld %lld", &size, &resident) != 2)
		return 0;
	return (int64_t)resident * sysconf(_SC_PAGESIZE);
}

/* After an item: marks a worker whose resident size passed
 * --max-memory-per-child for replacement when its chunk ends (the rest of
 * the chunk is not its items' fault, so it is not cut short). */
static void check_memory(struct worker *w)
{
	int64_t now = now_mono_ms();
	if (P.cfg.max_memory_mb <= 0 || w->retire ||
	    (w->done < w->n && now - w->rss_checked_ms < RSS_CHECK_MS))
		return;
	w->rss_checked_ms = now;
	/* In bytes: a MiB count rounded down would let a worker a little
	 * over the limit pass. */
	int64_t rss = pool_rss_bytes(w->pid);
	if (rss > P.cfg.max_memory_mb * (1 << 20)) {
		w->retire = "max_memory";
		log_info("worker_memory", "pid=%d rss_bytes=%lld limit_mb=%lld", (int)w->pid,
			 (long long)rss, (long long)P.cfg.max_memory_mb);
	}
}

static void worker_broken(struct worker *w, const char *why)
{
	log_error("worker_protocol", "pid=%d msg=\"%s\"", (int)w->pid, why);
	close_socket(w);
	signal_worker(w, SIGKILL);
}

/* A decimal number of at most 18 digits at p (strtoll cost a tenth of the
 * server's time per result); *end past it. -1 if there is none. */
static long long parse_count(const char *p, char **end)
{
	long long v = 0;
	const char *q = p;
	while (*q >= '0' && *q <= '9' && q - p < 18)
		v = v * 10 + (*q++ - '0');
	*end = (char *)q;
	return q == p ? -1 : v;
}

/* One record line from the worker (without its newline). */
static void handle_record(struct worker *w, char *line, size_t len)
{
	line[len] = '\0';
	if (line[0] == 'H') {
		if (w->state == W_STARTING) {
			w->state = W_IDLE;
			P.health[0] = '\0';
		}
		return;
	}
	if (line[0] == 'F' && line[1] == ' ') {
		/* It cannot serve; it exits next, and the reap reports why. Also
		 * after its hello (a persistent program that does not start),
		 * when the item it was running, if any, did not run. */
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
	long long pos = parse_count(p, &end);
	if (pos < 0 || *end != ' ' || pos != (long long)w->done) {
		worker_broken(w, "record out of order");
		return;
	}
	p = end + 1;
	long long micros = parse_count(p, &end);
	if (micros < 0 || *end != ' ') {
		worker_broken(w, "malformed record");
		return;
	}
	p = end + 1;
	/* Ready is not enough to reset the backoff: a worker whose persistent
	 * program does not start says hello, then F at its first item. */
	P.failures = 0;
	int64_t now = now_unix_ms(), started = now - micros / 1000;
	const struct slot *sl = &w->slot[w->done];
	struct op o = {.batch = sl->batch, .idx = sl->idx, .started = started, .now = now};
	if (line[0] == 'R') {
		o.kind = OP_FINISH;
		op_do(o, p, len - (size_t)(p - line), 1);
	} else {
		json_t *msg = json_loadb(p, len - (size_t)(p - line), JSON_DECODE_ANY, NULL);
		const char *m = json_is_string(msg) ? json_string_value(msg) : "task failed";
		o.kind = OP_FAIL;
		o.type = FE_TASK;
		op_do(o, m, strlen(m), 1);
		json_decref(msg);
	}
	metrics_item_done(w->task, line[0] == 'R' ? FS_FINISHED : FS_FAILED,
			  line[0] == 'R' ? FE_NONE : FE_TASK, micros, started - sl->created_ms);
	w->done++;
	check_memory(w);
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
		/* A read that did not fill the room it had took all there was:
		 * the watch is level-triggered, so more wakes the loop again.
		 * (Reading on to EAGAIN was a third of the reads in W3.) */
		if (w->rd.in.len + 1 < w->rd.in.cap)
			return 1;
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
		signal_worker(w, SIGKILL);
	}
}

/* Claims up to max of q's pending items into w's chunk (its slots from
 * w->n on, their arguments onto P.chunk). Returns how many, or -1. */
static int claim_into(struct worker *w, struct qbatch *q, int64_t max, int64_t now)
{
	int n = store_claim(P.store, q->id, max, w->pid, now, P.claimed, &P.chunk);
	if (n < 0) {
		P.op_failed = 1;
		return -1;
	}
	if (n == 0)
		return 0;
	op_do((struct op){.kind = OP_CLAIM, .batch = q->id, .idx = P.claimed[0],
			  .last = P.claimed[n - 1], .arg = w->pid, .now = now},
	      NULL, 0, 0);
	for (int i = 0; i < n; i++)
		w->slot[w->n++] = (struct slot){.batch = q->id, .idx = P.claimed[i],
						.created_ms = q->created_ms};
	return n;
}

/* Whether q's items may share a chunk with first's: the same task, and the
 * same timeout and retries, which a worker applies to its whole chunk. */
static int same_terms(const struct qbatch *q, const struct qbatch *first)
{
	return q->timeout == first->timeout && q->retries == first->retries &&
	       !strcmp(q->task, first->task);
}

/* Claims a chunk and sends it to w: up to q's chunksize of q's pending
 * items and then, while the chunk is smaller than a share of the queue,
 * items of the batches queued behind q on the same terms. Many small
 * batches (single-item calls from many clients) then travel a few chunks
 * a turn instead of one each, and the worker's results come back, and are
 * committed, together. The share is the queue's length over twice the
 * workers (guided self-scheduling): it shrinks as the queue empties, so a
 * worker never holds much that another, idle, could have run. Batches whose
 * last pending items go out leave the queue (q is left to the caller).
 * Returns how many of q's items went, 0 if none was pending, -1 on a
 * database error. */
static int send_chunk(struct worker *w, struct qbatch *q)
{
	int64_t room = CHUNK_CAP;
	if (P.cfg.max_tasks_per_child > 0 && P.cfg.max_tasks_per_child - w->tasks_run < room)
		room = P.cfg.max_tasks_per_child - w->tasks_run;
	if (w->cap < CHUNK_CAP) {
		w->cap = CHUNK_CAP;
		w->slot = realloc(w->slot, w->cap * sizeof *w->slot);
		if (!w->slot)
			abort();
	}
	buf_reset(&P.chunk);
	size_t off = frame_begin(&P.chunk);
	buf_adds(&P.chunk, "C ");
	buf_adds(&P.chunk, q->task);
	buf_addc(&P.chunk, ' ');
	size_t count_at = P.chunk.len;
	buf_adds(&P.chunk, "0000000000\n"); /* the count, filled in below */
	int64_t now = now_unix_ms();
	w->n = 0;
	int first = claim_into(w, q, q->chunksize < room ? q->chunksize : room, now);
	if (first <= 0)
		return first;
	int64_t share = P.nqueued / (2 * (int64_t)(P.cfg.workers > 0 ? P.cfg.workers : 1));
	if (share > room)
		share = room;
	struct qbatch *prev = NULL, *p = P.qhead;
	for (int looked = 0; p && (int64_t)w->n < share && looked < 4 * share; looked++) {
		struct qbatch *next = p->next;
		if (same_terms(p, q)) {
			int64_t want = share - (int64_t)w->n;
			if (p->chunksize < want)
				want = p->chunksize;
			int got = claim_into(w, p, want, now);
			if (got < 0)
				break; /* the commit will tell; what is claimed goes */
			if (got < want) { /* nothing of it is pending any more */
				queue_unlink(prev, p);
				free(p);
				p = next;
				continue;
			}
		}
		prev = p;
		p = next;
	}
	char cnt[12];
	snprintf(cnt, sizeof cnt, "%010d", (int)w->n);
	memcpy(P.chunk.data + count_at, cnt, 10);
	frame_end(&P.chunk, off);
	w->retries = q->retries;
	memcpy(w->task, q->task, sizeof w->task);
	/* A task may bring its own limit (a tasks file's timeout): the lower wins. */
	double timeout = q->timeout;
	const struct task_info *ti = catalog_find(q->task);
	if (ti && ti->timeout > 0 && (timeout <= 0 || ti->timeout < timeout))
		timeout = ti->timeout;
	w->timeout_ns = (int64_t)(timeout * 1e9);
	w->done = 0;
	w->killed = 0;
	w->state = W_BUSY;
	atomic_store_explicit(&w->prog->item, 0, memory_order_release);
	buf_add(&w->out, P.chunk.data, P.chunk.len);
	flush_out(w);
	metrics_chunk((int64_t)w->n);
	return first;
}

void pool_dispatch(void)
{
	if (P.stopping || P.draining || P.db_down)
		return;
	for (struct worker *w = P.workers; w && P.qhead; w = w->next) {
		while (w->state == W_IDLE && w->watch.fd >= 0 && P.qhead) {
			struct qbatch *q = queue_pop();
			if (send_chunk(w, q) < 0) {
				/* The database failed: keep the batch, try after the
				 * commit has told the pool (pool_after_commit). */
				queue_prepend(q);
				return;
			}
			if (w->state == W_BUSY)
				queue_append(q); /* round robin: to the back of the queue */
			else
				free(q); /* nothing pending any more */
		}
	}
}

int pool_collect(void)
{
	int ended = 0;
	for (struct worker *w = P.workers; w; w = w->next) {
		if (w->state != W_BUSY || w->watch.fd < 0)
			continue;
		worker_io(&w->watch, EPOLLIN); /* a read that finds nothing is EAGAIN */
		ended |= w->state != W_BUSY;
	}
	return ended;
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

/* Queues the batch of each slot in [from, to) that went back to pending. */
static void requeue_batches(const struct worker *w, const uint8_t *back, size_t from, size_t to)
{
	for (size_t pos = from; pos < to; pos++) {
		if (!back[pos - from])
			continue;
		int64_t batch = w->slot[pos].batch;
		int seen = 0;
		for (size_t k = from; k < pos && !seen; k++)
			seen = back[k - from] && w->slot[k].batch == batch;
		struct batch b;
		if (!seen && store_batch_get(P.store, batch, &b) == 1)
			pool_add_batch(&b);
	}
}

/* Settles the chunk of a worker that is gone: the item it was running fails
 * (or times out), the rest go back to pending; those of a batch cancelled
 * meanwhile are cancelled. */
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
	uint8_t *back = calloc(w->n - w->done, 1); /* which went back to pending */
	if (!back)
		abort();
	for (size_t pos = w->done; pos < w->n; pos++) {
		const struct slot *sl = &w->slot[pos];
		struct op o = {.batch = sl->batch, .idx = sl->idx, .started = started, .now = now};
		if (sl->cancelled) {
			o.kind = OP_CANCEL;
			op_do(o, NULL, 0, 1);
		} else if ((int64_t)pos != running || P.stopping || w->cancelled || w->fatal ||
			   (w->killed && w->kill_pos != running)) {
			/* Not the item that caused the death (a cancel of another
			 * batch in the chunk kills the worker too; one that could
			 * not serve did not run it): it runs again. */
			o.kind = OP_REQUEUE;
			op_do(o, NULL, 0, 1);
			back[pos - w->done] = 1;
		} else {
			/* The item it was running: retried if its batch allows,
			 * else it fails. */
			o.kind = OP_DIED;
			o.arg = w->retries;
			o.type = w->killed ? FE_TIMEOUT : FE_WORKER_DIED;
			if (w->killed)
				snprintf(why, sizeof why,
					 "item exceeded its timeout of %g s; worker %d was killed",
					 (double)w->timeout_ns / 1e9, (int)w->pid);
			else
				snprintf(why, sizeof why, "worker %d %s while running this item",
					 (int)w->pid, how);
			if (op_do(o, why, strlen(why), 1) == 1) {
				log_info("item_retry", "batch=%lld index=%lld why=%s pid=%d",
					 (long long)sl->batch, (long long)sl->idx, ferr_names[o.type],
					 (int)w->pid);
				back[pos - w->done] = 1;
			} else if (!P.db_down) { /* else the replay decides */
				metrics_item_done(w->task, FS_FAILED, o.type, (now - started) * 1000,
						  started - sl->created_ms);
			}
		}
	}
	requeue_batches(w, back, w->done, w->n);
	free(back);
	w->n = w->done = 0;
}

static void free_worker(struct worker *w)
{
	close_socket(w);
	close_err(w); /* the reap drained it; this logs a last unended line */
	buf_free(&w->errline);
	frame_reader_free(&w->rd);
	buf_free(&w->out);
	munmap(w->prog, 4096);
	free(w->slot);
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
		/* Whatever its tasks left behind in its group goes with it: the
		 * number cannot be anyone else's while the group has members. */
		kill(-pid, SIGKILL);
		if (w->watch.fd >= 0)
			drain(w); /* results it sent before dying still count */
		if (w->errw.fd >= 0)
			drain_err(w); /* and what it said, before its exit line */
		char how[96];
		describe_status(status, how, sizeof how);
		const char *reason = w->state == W_RETIRING ? w->retire
				     : P.stopping	      ? "shutdown"
				     : w->cancelled	      ? "cancelled"
				     : w->killed	      ? "timeout"
				     : w->state == W_STARTING || w->fatal ? "start_failed"
									  : "died";
		log_info("worker_exit", "pid=%d reason=%s status=\"%s\" tasks=%lld", (int)pid, reason,
			 how, (long long)(w->tasks_run + (int64_t)w->done));
		metrics_worker_exit(reason);
		settle_chunk(w, status);
		if (w->state != W_RETIRING)
			P.nworkers--;
		if ((w->state == W_STARTING || w->fatal) && !P.stopping) {
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
		if (w->state == W_STARTING && P.cfg.start_timeout_ms > 0 && !w->fatal) {
			/* A worker that never says hello (a plugin initializer that
			 * hangs) would hold its slot for ever: it is a failed start. */
			int64_t due = w->spawned_mono_ms + P.cfg.start_timeout_ms;
			if (now_ns / 1000000 >= due) {
				char why[160];
				snprintf(why, sizeof why, "worker %d was not ready within %g s of its start",
					 (int)w->pid, (double)P.cfg.start_timeout_ms / 1000);
				w->fatal = strdup(why);
				log_error("worker_start_timeout", "pid=%d", (int)w->pid);
				signal_worker(w, SIGKILL);
			} else if (next < 0 || due < next) {
				next = due;
			}
			continue;
		}
		if (w->term_at) {
			/* It had its SIGTERM; a task that outlives it gets SIGKILL. */
			int64_t kill_at = w->term_at + KILL_GRACE_MS;
			if (now_ns / 1000000 >= kill_at) {
				log_info("worker_kill", "pid=%d msg=\"still there %d ms after SIGTERM\"",
					 (int)w->pid, KILL_GRACE_MS);
				signal_worker(w, SIGKILL);
				w->term_at = 0;
			} else if (next < 0 || kill_at < next) {
				next = kill_at;
			}
			continue;
		}
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
					 (long long)w->slot[item - 1].batch,
					 (long long)w->slot[item - 1].idx);
				signal_worker(w, SIGTERM);
				w->term_at = now_ns / 1000000;
				if (next < 0 || w->term_at + KILL_GRACE_MS < next)
					next = w->term_at + KILL_GRACE_MS;
				continue;
			}
		} else {
			deadline = now_ns + 50 * 1000000LL; /* between items: look again soon */
		}
		int64_t ms = deadline / 1000000 + 1;
		if (next < 0 || ms < next)
			next = ms;
	}
	if (P.db_down && !P.stopping) {
		if (P.db_retry_at <= now_mono_ms())
			db_replay();
		else if (next < 0 || P.db_retry_at < next)
			next = P.db_retry_at;
	}
	if (P.respawn_at) {
		if (P.respawn_at <= now_mono_ms())
			fill_pool();
		if (P.respawn_at && (next < 0 || P.respawn_at < next))
			next = P.respawn_at;
	}
	return next;
}

int pool_terminate_batch(int64_t batch)
{
	int n = 0;
	for (struct worker *w = P.workers; w; w = w->next) {
		if (w->state != W_BUSY || w->done == w->n)
			continue;
		/* Its items of the batch are cancelled now, not when it is
		 * reaped: the answer to the cancel shows them so, and results
		 * still in flight find them no longer running. Items of other
		 * batches in its chunk go back to pending when it is reaped. */
		int64_t now = now_unix_ms();
		int hit = 0;
		for (size_t pos = w->done; pos < w->n; pos++) {
			struct slot *sl = &w->slot[pos];
			if (sl->batch != batch || sl->cancelled)
				continue;
			sl->cancelled = 1;
			hit = 1;
			op_do((struct op){.kind = OP_CANCEL, .batch = batch, .idx = sl->idx, .now = now},
			      NULL, 0, 1);
		}
		if (!hit)
			continue;
		if (!w->cancelled) {
			w->cancelled = 1;
			signal_worker(w, SIGKILL);
			n++;
		}
		log_info("worker_terminate", "pid=%d batch=%lld", (int)w->pid, (long long)batch);
	}
	return n;
}

const char *pool_health_reason(void) { return P.health[0] ? P.health : NULL; }

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
			i.batch = w->slot[item - 1].batch;
			i.index = w->slot[item - 1].idx;
			i.task = w->task;
			i.item_started_ms = now - (now_ns - started) / 1000000;
		}
		fn(arg, &i);
	}
}

void pool_drain(void) { P.draining = 1; }

int pool_busy(void)
{
	int n = 0;
	for (struct worker *w = P.workers; w; w = w->next)
		n += w->state == W_BUSY;
	return n;
}

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

/* How long pool_stop waits for the workers it asked to exit. A worker given
 * EOF runs its plugins' finalizers and exits at once; one with a program
 * plugin gives the program a second (worker/program.c) before killing it. */
#define STOP_ORDERLY_MS 1500

void pool_stop(void)
{
	P.stopping = 1;
	/* A worker not running a chunk ends in an orderly way, as a retired
	 * worker does: EOF on its socket, then its plugins' finalizers, then
	 * exit status 0 (one still starting gets there once its initializers
	 * are done). A worker still running a chunk (the grace is over) is
	 * killed, and so is any left when the wait ends. */
	int asked = 0;
	for (struct worker *w = P.workers; w; w = w->next) {
		if (w->state != W_BUSY) {
			close_socket(w);
			asked++;
		} else {
			signal_worker(w, SIGKILL);
		}
	}
	for (int64_t end = now_mono_ms() + STOP_ORDERLY_MS; asked && P.workers && now_mono_ms() < end;) {
		reap(0);
		if (P.workers)
			usleep(2000);
	}
	for (struct worker *w = P.workers; w; w = w->next)
		signal_worker(w, SIGKILL); /* what is left */
	reap(1);
	if (P.db_down)
		db_replay(); /* a last chance for what is not written yet */
	P.nworkers = 0;
	struct qbatch *q;
	while ((q = queue_pop()))
		free(q);
	buf_free(&P.chunk);
	free(P.ops);
	buf_free(&P.optext);
}
