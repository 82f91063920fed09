/* metrics.c - counters, histograms and the observability endpoints (see
 * metrics.h).
 *
 * Per-task series are kept in a small table found by linear search: there
 * are tens of tasks, not thousands. A task name never seen in the catalogue
 * cannot reach here (submissions are validated), but the table is capped
 * anyway so that a plugin with very many tasks cannot grow it without bound:
 * past the cap, events count under task="_other". */
#include "metrics.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "log.h"
#include "loop.h"
#include "pool.h"

#define MAX_TASKS 256
#define MAX_REASONS 16

/* Seconds. Run times span a microsecond task to an hour-long one; queue
 * waits, an idle pool to a backlog of hours. */
static const double run_bounds[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
				    1,     2.5,   5,    10,    30,   60,  300,  1800};
static const double wait_bounds[] = {0.001, 0.005, 0.01, 0.05, 0.1,  0.5,  1,    5,
				     10,    30,    60,   300,  900,  1800, 3600, 14400};
#define NRUN (sizeof run_bounds / sizeof run_bounds[0])
#define NWAIT (sizeof wait_bounds / sizeof wait_bounds[0])

struct hist {
	uint64_t n, *b; /* b[i]: observations <= bound i (not cumulative until written) */
	double sum;
};

struct task_series {
	char name[TASK_NAME_MAX];
	uint64_t batches, accepted;
	uint64_t turn_batches, turn_items; /* accepted in the turn, counted at its commit */
	uint64_t done[FS_NSTATES]; /* by final state */
	uint64_t errors[4];	   /* by enum ferr */
	uint64_t run_b[NRUN], wait_b[NWAIT];
	struct hist run, wait;
};

static struct {
	struct store *store;
	char *db_path;
	int64_t start_ms;
	struct task_series *tasks;
	int ntasks;
	uint64_t worker_starts;
	uint64_t chunks, chunk_items;
	struct {
		char name[24];
		uint64_t n;
	} exits[MAX_REASONS];
	uint64_t http[600];
	uint64_t ret_batches, ret_items;
	uint64_t commits, commits_failed;
} M;

void metrics_init(struct store *s, const char *db_path)
{
	M.store = s;
	free(M.db_path);
	M.db_path = db_path ? strdup(db_path) : NULL;
	M.start_ms = now_unix_ms();
}

void metrics_free(void)
{
	free(M.tasks);
	free(M.db_path);
	memset(&M, 0, sizeof M);
}

static struct task_series *task(const char *name)
{
	if (!name || !*name)
		name = "_other";
	for (int i = 0; i < M.ntasks; i++)
		if (!strcmp(M.tasks[i].name, name))
			return &M.tasks[i];
	if (M.ntasks == MAX_TASKS) /* the last slot is _other */
		return &M.tasks[MAX_TASKS - 1];
	if (!M.tasks) {
		M.tasks = calloc(MAX_TASKS, sizeof *M.tasks);
		if (!M.tasks)
			abort();
	}
	struct task_series *t = &M.tasks[M.ntasks++];
	snprintf(t->name, sizeof t->name, "%s", M.ntasks == MAX_TASKS ? "_other" : name);
	t->run.b = t->run_b;
	t->wait.b = t->wait_b;
	return t;
}

static void observe(struct hist *h, const double *bounds, size_t nb, double v)
{
	h->n++;
	h->sum += v;
	for (size_t i = 0; i < nb; i++)
		if (v <= bounds[i]) {
			h->b[i]++;
			return;
		}
}

void metrics_batch_accepted(const char *name, int64_t items)
{
	struct task_series *t = task(name);
	t->turn_batches++;
	t->turn_items += (uint64_t)items;
}

void metrics_item_done(const char *name, enum fstate state, enum ferr err, int64_t run_us,
		       int64_t wait_ms)
{
	struct task_series *t = task(name);
	if (state < FS_NSTATES)
		t->done[state]++;
	if (state == FS_FAILED)
		t->errors[err > FE_NONE && err <= FE_WORKER_DIED ? err : FE_TASK]++;
	if (run_us >= 0)
		observe(&t->run, run_bounds, NRUN, (double)run_us / 1e6);
	if (wait_ms >= 0)
		observe(&t->wait, wait_bounds, NWAIT, (double)wait_ms / 1000.0);
}

void metrics_items_cancelled(const char *name, int64_t n)
{
	if (n > 0)
		task(name)->done[FS_CANCELLED] += (uint64_t)n;
}

void metrics_worker_start(void) { M.worker_starts++; }

void metrics_chunk(int64_t items)
{
	M.chunks++;
	M.chunk_items += (uint64_t)items;
}

void metrics_worker_exit(const char *reason)
{
	int i;
	for (i = 0; i < MAX_REASONS && M.exits[i].name[0]; i++)
		if (!strcmp(M.exits[i].name, reason))
			break;
	if (i == MAX_REASONS)
		i = MAX_REASONS - 1; /* cannot happen: the pool has six reasons */
	if (!M.exits[i].name[0])
		snprintf(M.exits[i].name, sizeof M.exits[i].name, "%s", reason);
	M.exits[i].n++;
}

void metrics_http(unsigned status)
{
	if (status < 600)
		M.http[status]++;
}

void metrics_commit(int ok)
{
	if (ok)
		M.commits++;
	else
		M.commits_failed++;
	/* A submission is accepted when its commit takes; one that a failed
	 * commit took back was answered 503. */
	for (int i = 0; i < M.ntasks; i++) {
		struct task_series *t = &M.tasks[i];
		if (ok) {
			t->batches += t->turn_batches;
			t->accepted += t->turn_items;
		}
		t->turn_batches = t->turn_items = 0;
	}
}

void metrics_retention(int64_t batches, int64_t items)
{
	M.ret_batches += (uint64_t)batches;
	M.ret_items += (uint64_t)items;
}

/* ---- the text format ---- */

static void family(struct buf *o, const char *name, const char *type, const char *help)
{
	buf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Label values here are task names, reasons and states: [A-Za-z0-9_.-],
 * but escape anyway, as the format asks. */
static void label(struct buf *o, const char *s)
{
	buf_addc(o, '"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			buf_addc(o, '\\');
		if (*s == '\n')
			buf_adds(o, "\\n");
		else
			buf_addc(o, *s);
	}
	buf_addc(o, '"');
}

static void num(struct buf *o, double v)
{
	char s[40];
	snprintf(s, sizeof s, "%.17g", v);
	/* Shortest form that reads back: try fewer digits first. */
	for (int p = 6; p < 17; p++) {
		char t[40];
		snprintf(t, sizeof t, "%.*g", p, v);
		if (strtod(t, NULL) == v) {
			memcpy(s, t, sizeof s);
			break;
		}
	}
	buf_adds(o, s);
}

static void hist(struct buf *o, const char *name, const char *task_name, const struct hist *h,
		 const double *bounds, size_t nb)
{
	uint64_t cum = 0;
	for (size_t i = 0; i < nb; i++) {
		cum += h->b[i];
		buf_printf(o, "%s_bucket{task=", name);
		label(o, task_name);
		buf_adds(o, ",le=\"");
		num(o, bounds[i]);
		buf_printf(o, "\"} %llu\n", (unsigned long long)cum);
	}
	buf_printf(o, "%s_bucket{task=", name);
	label(o, task_name);
	buf_printf(o, ",le=\"+Inf\"} %llu\n%s_sum{task=", (unsigned long long)h->n, name);
	label(o, task_name);
	buf_adds(o, "} ");
	num(o, h->sum);
	buf_printf(o, "\n%s_count{task=", name);
	label(o, task_name);
	buf_printf(o, "} %llu\n", (unsigned long long)h->n);
}

/* Items by state and batches stored, summed over the batches' counters (one
 * pass over the batches table, not the items' segments). */
static int db_totals(int64_t counts[FS_NSTATES], int64_t *batches, int64_t *open)
{
	sqlite3 *db = store_sqlite(M.store);
	sqlite3_stmt *st;
	if (!db || sqlite3_prepare_v2(db,
				      "SELECT count(*), total(n_pending), total(n_running), total(n_finished),"
				      " total(n_failed), total(n_cancelled),"
				      " total(n_pending + n_running > 0) FROM batches"
				      " WHERE size >= 0", /* not the uploads still arriving */
				      -1, &st, NULL) != SQLITE_OK)
		return -1;
	int rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*batches = sqlite3_column_int64(st, 0);
		for (int k = 0; k < FS_NSTATES; k++)
			counts[k] = (int64_t)sqlite3_column_double(st, 1 + k);
		*open = (int64_t)sqlite3_column_double(st, 6);
	}
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? 0 : -1;
}

static int64_t pragma_int(const char *q)
{
	sqlite3 *db = store_sqlite(M.store);
	sqlite3_stmt *st;
	int64_t v = -1;
	if (db && sqlite3_prepare_v2(db, q, -1, &st, NULL) == SQLITE_OK) {
		if (sqlite3_step(st) == SQLITE_ROW)
			v = sqlite3_column_int64(st, 0);
		sqlite3_finalize(st);
	}
	return v;
}

static int64_t file_size(const char *path, const char *suffix)
{
	char p[4096];
	struct stat st;
	snprintf(p, sizeof p, "%s%s", path, suffix);
	return stat(p, &st) == 0 ? (int64_t)st.st_size : 0;
}


static const char *const wstates[] = {"starting", "idle", "busy", "retiring"};

struct wcount {
	int64_t n[4], rss;
};

static void count_worker(void *arg, const struct pool_worker_info *w)
{
	struct wcount *c = arg;
	for (int i = 0; i < 4; i++)
		if (!strcmp(w->state, wstates[i]))
			c->n[i]++;
	c->rss += pool_rss_bytes(w->pid);
}

void metrics_handle(struct http_req *r)
{
	struct buf o = {0};
	int64_t counts[FS_NSTATES] = {0}, batches = 0, open_batches = 0;
	int db_ok = db_totals(counts, &batches, &open_batches) == 0;

	family(&o, "forkpool_start_time_seconds", "gauge", "When the server started, Unix seconds.");
	buf_adds(&o, "forkpool_start_time_seconds ");
	num(&o, (double)M.start_ms / 1000.0);
	buf_addc(&o, '\n');

	family(&o, "forkpool_items", "gauge", "Futures stored, by state.");
	for (int k = 0; k < FS_NSTATES && db_ok; k++)
		buf_printf(&o, "forkpool_items{state=\"%s\"} %lld\n", fstate_names[k], (long long)counts[k]);
	family(&o, "forkpool_batches", "gauge", "Batches stored, by state (open: some items pending or running).");
	if (db_ok)
		buf_printf(&o, "forkpool_batches{state=\"open\"} %lld\nforkpool_batches{state=\"done\"} %lld\n",
			   (long long)open_batches, (long long)(batches - open_batches));

	family(&o, "forkpool_batches_accepted_total", "counter", "Batches accepted (committed), by task.");
	for (int i = 0; i < M.ntasks; i++) {
		buf_adds(&o, "forkpool_batches_accepted_total{task=");
		label(&o, M.tasks[i].name);
		buf_printf(&o, "} %llu\n", (unsigned long long)M.tasks[i].batches);
	}
	family(&o, "forkpool_items_accepted_total", "counter", "Futures accepted (committed), by task.");
	for (int i = 0; i < M.ntasks; i++) {
		buf_adds(&o, "forkpool_items_accepted_total{task=");
		label(&o, M.tasks[i].name);
		buf_printf(&o, "} %llu\n", (unsigned long long)M.tasks[i].accepted);
	}
	family(&o, "forkpool_items_completed_total", "counter",
	       "Futures that reached a final state, by task and state (finished, failed, cancelled).");
	for (int i = 0; i < M.ntasks; i++)
		for (int k = FS_FINISHED; k < FS_NSTATES; k++) {
			buf_adds(&o, "forkpool_items_completed_total{task=");
			label(&o, M.tasks[i].name);
			buf_printf(&o, ",state=\"%s\"} %llu\n", fstate_names[k],
				   (unsigned long long)M.tasks[i].done[k]);
		}
	family(&o, "forkpool_item_failures_total", "counter",
	       "Failed futures, by task and error type (task_error, timeout, worker_died).");
	for (int i = 0; i < M.ntasks; i++)
		for (int e = FE_TASK; e <= FE_WORKER_DIED; e++) {
			buf_adds(&o, "forkpool_item_failures_total{task=");
			label(&o, M.tasks[i].name);
			buf_printf(&o, ",error=\"%s\"} %llu\n", ferr_names[e],
				   (unsigned long long)M.tasks[i].errors[e]);
		}
	family(&o, "forkpool_item_run_seconds", "histogram", "How long a future ran in its worker, by task.");
	for (int i = 0; i < M.ntasks; i++)
		hist(&o, "forkpool_item_run_seconds", M.tasks[i].name, &M.tasks[i].run, run_bounds, NRUN);
	family(&o, "forkpool_item_wait_seconds", "histogram",
	       "From a batch's submission to the start of its future's (last) run, by task.");
	for (int i = 0; i < M.ntasks; i++)
		hist(&o, "forkpool_item_wait_seconds", M.tasks[i].name, &M.tasks[i].wait, wait_bounds, NWAIT);

	struct wcount wc = {0};
	pool_workers(count_worker, &wc);
	family(&o, "forkpool_workers", "gauge", "Worker processes, by state.");
	for (int i = 0; i < 4; i++)
		buf_printf(&o, "forkpool_workers{state=\"%s\"} %lld\n", wstates[i], (long long)wc.n[i]);
	family(&o, "forkpool_workers_resident_bytes", "gauge", "Resident memory of all worker processes.");
	buf_printf(&o, "forkpool_workers_resident_bytes %lld\n", (long long)wc.rss);
	family(&o, "forkpool_chunks_total", "counter",
	       "Chunks sent to workers (one may gather the items of several small batches).");
	buf_printf(&o, "forkpool_chunks_total %llu\n", (unsigned long long)M.chunks);
	family(&o, "forkpool_chunk_items_total", "counter", "Items sent to workers in chunks.");
	buf_printf(&o, "forkpool_chunk_items_total %llu\n", (unsigned long long)M.chunk_items);
	family(&o, "forkpool_worker_starts_total", "counter", "Worker processes started.");
	buf_printf(&o, "forkpool_worker_starts_total %llu\n", (unsigned long long)M.worker_starts);
	family(&o, "forkpool_worker_exits_total", "counter",
	       "Worker processes reaped, by reason (max_tasks, timeout, died, cancelled, start_failed, shutdown).");
	for (int i = 0; i < MAX_REASONS && M.exits[i].name[0]; i++) {
		buf_adds(&o, "forkpool_worker_exits_total{reason=");
		label(&o, M.exits[i].name);
		buf_printf(&o, "} %llu\n", (unsigned long long)M.exits[i].n);
	}

	struct http_counts hc;
	http_counts(&hc);
	family(&o, "forkpool_http_connections", "gauge",
	       "Open HTTP connections, and the requests among them parked (long-polls, idle streams) "
	       "or streaming.");
	buf_printf(&o, "forkpool_http_connections{state=\"open\"} %u\n", hc.connections);
	buf_printf(&o, "forkpool_http_connections{state=\"parked\"} %d\n", hc.parked);
	buf_printf(&o, "forkpool_http_connections{state=\"streaming\"} %d\n", hc.streams);

	family(&o, "forkpool_http_requests_total", "counter", "HTTP answers sent, by status code.");
	for (unsigned c = 100; c < 600; c++)
		if (M.http[c])
			buf_printf(&o, "forkpool_http_requests_total{code=\"%u\"} %llu\n", c,
				   (unsigned long long)M.http[c]);

	family(&o, "forkpool_db_commits_total", "counter",
	       "Transactions the event loop committed (one a turn, for all the turn's writes), by result.");
	buf_printf(&o, "forkpool_db_commits_total{result=\"ok\"} %llu\n", (unsigned long long)M.commits);
	buf_printf(&o, "forkpool_db_commits_total{result=\"failed\"} %llu\n",
		   (unsigned long long)M.commits_failed);

	int64_t pages = pragma_int("PRAGMA page_count"), psize = pragma_int("PRAGMA page_size"),
		freep = pragma_int("PRAGMA freelist_count");
	family(&o, "forkpool_db_size_bytes", "gauge",
	       "Size of the database files (main: the database, wal: its write-ahead log).");
	if (M.db_path) {
		buf_printf(&o, "forkpool_db_size_bytes{file=\"main\"} %lld\n", (long long)file_size(M.db_path, ""));
		buf_printf(&o, "forkpool_db_size_bytes{file=\"wal\"} %lld\n",
			   (long long)file_size(M.db_path, "-wal"));
	}
	family(&o, "forkpool_db_free_bytes", "gauge",
	       "Free pages inside the database file, reused before the file grows.");
	if (pages >= 0 && psize > 0 && freep >= 0)
		buf_printf(&o, "forkpool_db_free_bytes %lld\n", (long long)(freep * psize));

	family(&o, "forkpool_retention_deleted_batches_total", "counter",
	       "Batches deleted by retention (--result-ttl) or purge.");
	buf_printf(&o, "forkpool_retention_deleted_batches_total %llu\n", (unsigned long long)M.ret_batches);
	family(&o, "forkpool_retention_deleted_items_total", "counter",
	       "Futures deleted by retention (--result-ttl) or purge.");
	buf_printf(&o, "forkpool_retention_deleted_items_total %llu", (unsigned long long)M.ret_items);
	/* http_reply ends the text with its newline. */

	http_add_header(r, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
	http_reply(r, 200, &o);
}

/* ---- GET /v1/workers ---- */

struct wlist {
	struct buf *o;
	int n;
};

static void worker_json(void *arg, const struct pool_worker_info *w)
{
	struct wlist *l = arg;
	struct buf *o = l->o;
	buf_printf(o, "%s{\"pid\":%d,\"state\":\"%s\",\"tasks_run\":%lld,\"rss_bytes\":%lld,\"started_at\":",
		   l->n++ ? "," : "", w->pid, w->state, (long long)w->tasks_run, (long long)pool_rss_bytes(w->pid));
	buf_json_time(o, w->started_ms);
	buf_adds(o, ",\"current\":");
	if (w->index >= 0) {
		buf_printf(o, "{\"batch\":%lld,\"index\":%lld,\"task\":", (long long)w->batch,
			   (long long)w->index);
		buf_json_cstr(o, w->task);
		buf_adds(o, ",\"started_at\":");
		buf_json_time(o, w->item_started_ms);
		buf_addc(o, '}');
	} else {
		buf_adds(o, "null");
	}
	buf_addc(o, '}');
}

void metrics_workers(struct http_req *r)
{
	struct buf o = {0};
	buf_adds(&o, "{\"workers\":[");
	struct wlist l = {.o = &o};
	pool_workers(worker_json, &l);
	buf_adds(&o, "]}");
	http_reply(r, 200, &o);
}
