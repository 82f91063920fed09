/* bench.h - forkpool-bench, the program behind `make bench`: forkpool's
 * workloads W1..W7 (issues 5 and 3) against Python's ProcessPoolExecutor in the same
 * run, and the table they make.
 *
 *   server.c    starts the real forkpoold on a fresh database, reads its
 *               peak RSS, CPU time and database size, stops it
 *   client.c    batches in with libcurl (NDJSON, or a JSON array where the
 *               server has no NDJSON input), results out as NDJSON streams
 *   rounds.c    single-item round trips, one after another and many at
 *               once, over raw kept-alive sockets: the client costs a few
 *               microseconds per call, so it is not what is measured; and
 *               W7's thousands of long-polls on one batch
 *   executor.c  runs the embedded executor.py (the Python baseline)
 *   main.c      the knobs, the workloads, the table
 *
 * Functions return 0 / -1 and say why on stderr; only main exits. */
#ifndef FORKPOOL_BENCH_H
#define FORKPOOL_BENCH_H

#include <limits.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- server.c ---- */

struct fpserver {
	pid_t pid;
	int port;
	char dir[PATH_MAX]; /* a fresh temporary directory: the database and the log */
	char db[PATH_MAX + 16];
	char log[PATH_MAX + 16];
	char base[64]; /* http://127.0.0.1:PORT */
};

/* Starts bin (forkpoold) with --listen 127.0.0.1:0, --sync normal, a fresh
 * database in a new temporary directory, and the extra arguments (argv style,
 * NULL-terminated, may be NULL); waits for its event=listen line. */
int fpserver_start(struct fpserver *s, const char *bin, const char *const *extra);
/* The server's peak resident set (VmHWM) in KiB, or -1. */
long fpserver_peak_rss_kib(const struct fpserver *s);
/* The CPU seconds (user + system) the server process has used so far, or -1. */
double fpserver_cpu_s(const struct fpserver *s);
/* The CPU seconds its live workers (the server's children) have used. */
double fpserver_workers_cpu_s(const struct fpserver *s);
/* The server's context switches so far: voluntary (it waited) and not
 * (it was preempted: the machine is busy). 0, or -1. */
int fpserver_switches(const struct fpserver *s, long long *vol, long long *invol);
/* The size of the database and its WAL in bytes. */
long long fpserver_db_bytes(const struct fpserver *s);
/* SIGTERM, waits for the exit, removes the directory. 0 on a clean exit. */
int fpserver_stop(struct fpserver *s);

/* ---- client.c ---- */

/* Seconds on the monotonic clock. */
double now_s(void);

/* How batches go in. */
enum input_mode { INPUT_NDJSON, INPUT_JSON };

/* Whether the server takes NDJSON batches: POSTs a one-line body. Returns
 * INPUT_NDJSON (201), INPUT_JSON (415), or -1 for any other answer. */
int client_probe_ndjson(const struct fpserver *s);

struct map_run {
	double seconds;  /* first byte sent to last result received */
	double ingest_s; /* first byte sent to the last 201 */
	long long items; /* results read, all checked */
};

/* Runs square over 0..n-1 as one batch (NDJSON in; as JSON arrays of at
 * most max_batch items each when mode is INPUT_JSON) with the given
 * chunksize, then reads every result from NDJSON streams and checks the sum
 * of the squares. */
int client_map_square(const struct fpserver *s, enum input_mode mode, long long n, long chunksize,
		      long long max_batch, struct map_run *out);

/* One GET of path; as client_post. */
long client_get(const struct fpserver *s, const char *path, char **resp);
/* One POST of body to path; the answer's body (malloc'd) in *resp when
 * resp is not NULL. Returns the status, or -1 when no answer came. */
long client_post(const struct fpserver *s, const char *path, const char *body, char **resp);

/* ---- rounds.c ---- */

struct latencies {
	double *ms; /* one per round trip, sorted */
	long n;
	double seconds;
};
/* The p-th percentile (0..100) of sorted latencies, or -1 when empty. */
double latencies_pct(const struct latencies *l, double p);
void latencies_free(struct latencies *l);

/* n sequential single-item POST /v1/batches?wait=5 of echo on one kept-alive
 * connection, after a few untimed ones. */
int rounds_sequential(const struct fpserver *s, long n, struct latencies *out);
/* clients concurrent kept-alive connections, each posting single-item
 * batches of square with ?wait=5 (the answer carries the result) for
 * seconds. */
int rounds_concurrent(const struct fpserver *s, int clients, double seconds, struct latencies *out);
/* The same clients asking GET /healthz, which stores nothing and waits for
 * nothing: what the client and the HTTP stack manage on this machine when
 * forkpool does no work (W3's control). */
int rounds_healthz(const struct fpserver *s, int clients, double seconds, struct latencies *out);

/* W7: n long-polls (GET /v1/batches/{id}?wait=60, HTTP/1.1 on raw sockets)
 * on a batch of one `sleep item_s` item, all parked before it ends; how long
 * after the item's finished_at the first and the last answer arrived, and
 * how much the server's peak RSS grew for them. */
struct poll_run {
	int n;
	double first_ms, last_ms;
	long rss_growth_kib;
};
int polls_wake(const struct fpserver *s, int n, double item_s, struct poll_run *out);

/* ---- executor.c ---- */

struct executor_run {
	double seconds;
	long long items;
	double p50_ms, p99_ms; /* -1 when the workload has none */
	long rss_kib;
};

/* The python3 to use (Debian's /usr/bin/python3 first), or NULL. */
const char *executor_python(void);
/* Runs workload ("W1", "W2", "W3") with n items on a ProcessPoolExecutor
 * of `workers` processes. */
int executor_run(const char *python, const char *workload, long long n, int workers,
		 struct executor_run *out);
/* The Python version the last run reported, e.g. "3.11.2", or "?". */
const char *executor_version(void);

#endif
