/* main.c - forkpool-bench: runs the workloads of issue 5 against the real
 * server and against Python's ProcessPoolExecutor, alternately, and prints
 * the table (also written into docs/benchmarks.md).
 *
 *   forkpool-bench [--quick] [--out FILE] [--server PATH]
 *
 * Sizes come from the environment (see usage); --quick is the tiny run that
 * `make test` does so that the bench never rots. */
#include "bench.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "tasks.h"

#define MAX_REPS            32
#define MAX_SIZES           16
#define DEFAULT_BATCH_LIMIT 1000000 /* forkpoold's --max-items default */
#define MIB(kib)            ((double)(kib) / 1024.0)

static const char usage[] =
	"usage: forkpool-bench [--quick] [--out FILE] [--server PATH]\n"
	"  --quick        a tiny run of each workload (what `make test` does): one repetition,\n"
	"                 fixed sizes; only BENCH_WORKLOADS is read\n"
	"  --out FILE     also write the table into FILE, between its bench markers\n"
	"                 (make bench: docs/benchmarks.md)\n"
	"  --server PATH  the forkpoold to measure (default: beside this program)\n"
	"Environment (defaults in brackets; the sizes of W1, W4, W5 and W6 are multiplied by\n"
	"BENCH_SCALE [1], e.g. make bench BENCH_SCALE=0.1; W2 and W3 are short and keep theirs):\n"
	"  BENCH_REPS [3]  BENCH_WORKLOADS [W1,W2,W3,W4,W5,W6,W7]  BENCH_CHUNKSIZE [10000]\n"
	"  BENCH_W1_ITEMS [1000000]  BENCH_W2_CALLS [2000]  BENCH_W3_CLIENTS [64]\n"
	"  BENCH_W3_SECONDS [10]  BENCH_W3_CALLS [20000] (the executor's)  BENCH_W4_END [1e10]\n"
	"  BENCH_W4_RANGES [64]  BENCH_W5_ITEMS [10000000]\n"
	"  BENCH_W6_SIZES [1000,10000,100000,1000000,10000000]  BENCH_W6_WORKERS [1,2]  BENCH_W6_REPS [1]\n"
	"  BENCH_W7_POLLS [2000] (long-polls on one batch)\n"
	"  BENCH_PYTHON [/usr/bin/python3, else python3 on PATH; none: the executor is skipped]\n";

/* ---- the knobs ---- */

struct knobs {
	double scale;
	int reps, w6_reps;
	char workloads[64];
	long chunksize;
	long long w1_items, w5_items, w4_end;
	long w2_calls, w3_calls;
	int w3_clients, w4_ranges, w7_polls;
	double w3_seconds;
	long long w6_sizes[MAX_SIZES];
	int w6_nsizes;
	int w6_workers[MAX_SIZES];
	int w6_nworkers;
};

static double env_num(const char *name, double def, double min, double max)
{
	const char *v = getenv(name);
	if (!v || !*v)
		return def;
	char *end;
	double d = strtod(v, &end);
	if (*end || !(d >= min && d <= max)) {
		fprintf(stderr, "forkpool-bench: %s=%s: expected a number from %g to %g\n", name, v, min,
			max);
		exit(2);
	}
	return d;
}

/* A size scaled, at least min. */
static long long scaled(const char *name, double def, double scale, long long min)
{
	double v = env_num(name, def * scale, 1, 1e15);
	return v < (double)min ? min : (long long)llround(v);
}

/* A comma-separated list of numbers into out[]; returns how many. */
static int env_list(const char *name, const char *def, long long *out, double scale, long long min)
{
	const char *v = getenv(name);
	if (!v || !*v)
		v = def;
	else
		scale = 1; /* given explicitly: taken as is */
	int n = 0;
	for (const char *p = v; *p && n < MAX_SIZES;) {
		char *end;
		double d = strtod(p, &end);
		if (end == p || d < 1) {
			fprintf(stderr, "forkpool-bench: %s=%s: expected numbers separated by commas\n", name,
				v);
			exit(2);
		}
		long long x = llround(d * scale);
		out[n++] = x < min ? min : x;
		p = *end == ',' ? end + 1 : end;
	}
	return n;
}

static void knobs_read(struct knobs *k, int quick)
{
	memset(k, 0, sizeof *k);
	long long w[MAX_SIZES];
	if (quick) {
		*k = (struct knobs){.scale = 0,
				    .reps = 1,
				    .w6_reps = 1,
				    .chunksize = 500,
				    .w1_items = 2000,
				    .w5_items = 5000,
				    .w4_end = 400000,
				    .w2_calls = 50,
				    .w3_calls = 200,
				    .w3_clients = 4,
				    .w4_ranges = 8,
				    .w3_seconds = 0.5,
				    .w6_sizes = {100, 1000},
				    .w6_nsizes = 2,
				    .w6_workers = {1, 2},
				    .w6_nworkers = 2,
				    .w7_polls = 100};
	}
	const char *wl = getenv("BENCH_WORKLOADS");
	snprintf(k->workloads, sizeof k->workloads, "%s", wl && *wl ? wl : "W1,W2,W3,W4,W5,W6,W7");
	if (quick)
		return; /* the sizes are fixed; only the choice of workloads is taken */
	double s = k->scale = env_num("BENCH_SCALE", 1, 1e-4, 100);
	k->reps = (int)env_num("BENCH_REPS", 3, 1, MAX_REPS);
	k->w6_reps = (int)env_num("BENCH_W6_REPS", 1, 1, MAX_REPS);
	k->chunksize = (long)env_num("BENCH_CHUNKSIZE", 10000, 1, 1e9);
	k->w1_items = scaled("BENCH_W1_ITEMS", 1e6, s, 100);
	k->w5_items = scaled("BENCH_W5_ITEMS", 1e7, s, 100);
	k->w2_calls = (long)scaled("BENCH_W2_CALLS", 2000, 1, 20);
	k->w3_calls = (long)scaled("BENCH_W3_CALLS", 20000, 1, 100);
	k->w3_clients = (int)env_num("BENCH_W3_CLIENTS", 64, 1, 1000);
	k->w3_seconds = env_num("BENCH_W3_SECONDS", 10, 0.1, 3600);
	/* Not the 2e7: the workers' segmented sieve counts the primes
	 * below 2e7 in about 20 ms, which measures round trips, not parallel
	 * speedup. Below 1e10 it takes seconds. */
	k->w4_end = scaled("BENCH_W4_END", 1e10, s, 1000);
	k->w4_ranges = (int)env_num("BENCH_W4_RANGES", 64, 1, 100000);
	k->w6_nsizes = env_list("BENCH_W6_SIZES", "1000,10000,100000,1000000,10000000", k->w6_sizes, s, 100);
	k->w6_nworkers = env_list("BENCH_W6_WORKERS", "1,2", w, 1, 1);
	k->w7_polls = (int)env_num("BENCH_W7_POLLS", 2000, 1, 20000);
	for (int i = 0; i < k->w6_nworkers; i++)
		k->w6_workers[i] = (int)w[i];
}

static int wanted(const struct knobs *k, const char *w)
{
	for (const char *p = k->workloads; (p = strstr(p, w)); p += strlen(w))
		if (p[strlen(w)] < '0' || p[strlen(w)] > '9')
			return 1;
	return 0;
}

/* ---- the numbers ---- */

enum unit { U_RATE, U_S, U_MS, U_MIB, U_BYTES, U_X };

struct series {
	double v[MAX_REPS];
	int n, failed;
};

struct row {
	const char *work, *metric;
	enum unit unit;
	struct series fp, ex;
	char target[128], met[16];
};

static struct row rows[64];
static int nrows;

static struct row *row(const char *work, const char *metric, enum unit unit)
{
	for (int i = 0; i < nrows; i++)
		if (!strcmp(rows[i].work, work) && !strcmp(rows[i].metric, metric))
			return &rows[i];
	if (nrows == (int)(sizeof rows / sizeof rows[0]))
		abort();
	rows[nrows] = (struct row){.work = work, .metric = metric, .unit = unit};
	return &rows[nrows++];
}

static void add(struct series *s, double v)
{
	if (s->n < MAX_REPS && v >= 0)
		s->v[s->n++] = v;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(const struct series *s)
{
	if (!s->n)
		return NAN;
	double v[MAX_REPS];
	memcpy(v, s->v, sizeof v);
	qsort(v, (size_t)s->n, sizeof v[0], cmp_double);
	return s->n % 2 ? v[s->n / 2] : (v[s->n / 2 - 1] + v[s->n / 2]) / 2;
}

static double smin(const struct series *s)
{
	double m = NAN;
	for (int i = 0; i < s->n; i++)
		if (isnan(m) || s->v[i] < m)
			m = s->v[i];
	return m;
}

static double smax(const struct series *s)
{
	double m = NAN;
	for (int i = 0; i < s->n; i++)
		if (isnan(m) || s->v[i] > m)
			m = s->v[i];
	return m;
}

/* v as text in the row's unit; "" for no value. */
static const char *fmt(enum unit u, double v, char *out, size_t cap)
{
	if (isnan(v)) {
		snprintf(out, cap, "—");
		return out;
	}
	switch (u) {
	case U_RATE: {
		/* Thousands separated: 1,234,567 */
		char digits[32];
		snprintf(digits, sizeof digits, "%.0f", v);
		size_t n = strlen(digits), o = 0;
		for (size_t i = 0; i < n && o + 2 < cap; i++) {
			if (i && (n - i) % 3 == 0)
				out[o++] = ',';
			out[o++] = digits[i];
		}
		out[o] = '\0';
		return out;
	}
	case U_S:
		snprintf(out, cap, "%.3f", v);
		return out;
	case U_MS:
		snprintf(out, cap, "%.3f", v);
		return out;
	case U_MIB:
		snprintf(out, cap, "%.1f", v);
		return out;
	case U_BYTES:
		snprintf(out, cap, "%.1f", v);
		return out;
	case U_X:
		snprintf(out, cap, "%.2f", v);
		return out;
	}
	return out;
}

/* ---- the runs ---- */

static const char *server_bin;
static const char *python;
static enum input_mode input_mode;
static int cores;
static int failures;

__attribute__((format(printf, 1, 2))) static void progress(const char *f, ...)
{
	va_list ap;
	va_start(ap, f);
	vfprintf(stderr, f, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* Starts a fresh server with `workers` workers (0: the default) that takes a
 * batch of `items` items, and waits until every worker is up. */
static int start(struct fpserver *s, int workers, long long items)
{
	char wstr[16], istr[32];
	const char *extra[8];
	int n = 0;
	if (workers > 0) {
		snprintf(wstr, sizeof wstr, "%d", workers);
		extra[n++] = "--workers";
		extra[n++] = wstr;
	}
	if (items > DEFAULT_BATCH_LIMIT && input_mode == INPUT_NDJSON) {
		snprintf(istr, sizeof istr, "%lld", items);
		extra[n++] = "--max-items";
		extra[n++] = istr;
	}
	extra[n] = NULL;
	if (fpserver_start(s, server_bin, extra) < 0)
		return -1;
	int want = workers > 0 ? workers : cores;
	double deadline = now_s() + 20;
	for (;;) {
		char *body = NULL;
		long st = client_get(s, "/healthz", &body);
		json_t *j = st == 200 ? json_loads(body, 0, NULL) : NULL;
		int up = j ? (int)json_integer_value(json_object_get(j, "workers")) : 0;
		json_decref(j);
		free(body);
		if (up >= want)
			return 0;
		if (now_s() > deadline) {
			fprintf(stderr, "bench: only %d of %d workers came up\n", up, want);
			fpserver_stop(s);
			return -1;
		}
		usleep(10000);
	}
}

/* The CPU seconds this process (the client) has used so far. */
static double self_cpu_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

struct map_stats {
	struct map_run run;
	double client_cpu_s;
	long rss_kib;
	long long db_bytes;
	double cpu_s;
	long long vol, invol; /* the server's context switches */
};

/* One forkpool run of square over n items on a fresh server. */
static int fp_map(long long n, long chunksize, int workers, struct map_stats *ms)
{
	struct fpserver s;
	if (start(&s, workers, n) < 0)
		return -1;
	double c0 = self_cpu_s();
	int rc = client_map_square(&s, input_mode, n, chunksize, DEFAULT_BATCH_LIMIT, &ms->run);
	ms->client_cpu_s = self_cpu_s() - c0;
	ms->rss_kib = fpserver_peak_rss_kib(&s);
	ms->db_bytes = fpserver_db_bytes(&s);
	ms->cpu_s = fpserver_cpu_s(&s);
	ms->vol = ms->invol = -1;
	fpserver_switches(&s, &ms->vol, &ms->invol);
	if (fpserver_stop(&s) < 0)
		rc = -1;
	return rc;
}

/* What one run of square cost, on stderr: enough to judge a run on a busy
 * machine (preemptions) and to see that the client is not the bottleneck. */
static void progress_map(const char *label, int rep, int reps, const struct map_stats *ms)
{
	progress("%s %d/%d forkpool: %lld items in %.3f s (ingest %.3f s) = %.0f items/s; peak RSS %.1f MiB; "
		 "db %.1f B/item",
		 label, rep, reps, ms->run.items, ms->run.seconds, ms->run.ingest_s,
		 (double)ms->run.items / ms->run.seconds, MIB(ms->rss_kib),
		 (double)ms->db_bytes / (double)ms->run.items);
	progress("    server CPU %.2f s (%lld waits, %lld preemptions), client CPU %.2f s", ms->cpu_s,
		 ms->vol, ms->invol, ms->client_cpu_s);
}

static void fail(struct series *s, const char *what)
{
	s->failed++;
	failures++;
	progress("  %s FAILED", what);
}

static void w1(const struct knobs *k)
{
	for (int rep = 1; rep <= k->reps; rep++) {
		struct map_stats ms;
		if (fp_map(k->w1_items, k->chunksize, 0, &ms) == 0) {
			double rate = (double)ms.run.items / ms.run.seconds;
			add(&row("W1", "items/s", U_RATE)->fp, rate);
			add(&row("W1", "seconds, first byte sent to last result", U_S)->fp, ms.run.seconds);
			add(&row("W1", "seconds to the 201 (ingest)", U_S)->fp, ms.run.ingest_s);
			add(&row("W1", "peak RSS MiB (server / executor's parent)", U_MIB)->fp,
			    MIB(ms.rss_kib));
			add(&row("W1", "database bytes per item", U_BYTES)->fp,
			    (double)ms.db_bytes / (double)ms.run.items);
			add(&row("W1", "server CPU seconds", U_S)->fp, ms.cpu_s);
			progress_map("W1", rep, k->reps, &ms);
		} else {
			fail(&row("W1", "items/s", U_RATE)->fp, "W1 forkpool");
		}
		if (!python)
			continue;
		struct executor_run er;
		if (executor_run(python, "W1", k->w1_items, cores, &er) == 0) {
			add(&row("W1", "items/s", U_RATE)->ex, (double)er.items / er.seconds);
			add(&row("W1", "seconds, first byte sent to last result", U_S)->ex, er.seconds);
			add(&row("W1", "peak RSS MiB (server / executor's parent)", U_MIB)->ex,
			    MIB(er.rss_kib));
			progress("W1 %d/%d executor: %lld items in %.3f s = %.0f items/s, peak RSS %.1f MiB",
				 rep, k->reps, er.items, er.seconds, (double)er.items / er.seconds,
				 MIB(er.rss_kib));
		} else {
			fail(&row("W1", "items/s", U_RATE)->ex, "W1 executor");
		}
	}
}

static void w2(const struct knobs *k)
{
	for (int rep = 1; rep <= k->reps; rep++) {
		struct fpserver s;
		struct latencies l = {0};
		int rc = start(&s, 0, 0);
		if (rc == 0) {
			rc = rounds_sequential(&s, k->w2_calls, &l);
			if (fpserver_stop(&s) < 0)
				rc = -1;
		}
		if (rc == 0) {
			add(&row("W2", "p50 ms", U_MS)->fp, latencies_pct(&l, 50));
			add(&row("W2", "p99 ms", U_MS)->fp, latencies_pct(&l, 99));
			add(&row("W2", "calls/s", U_RATE)->fp, (double)l.n / l.seconds);
			progress("W2 %d/%d forkpool: %ld calls, p50 %.3f ms, p99 %.3f ms, max %.3f ms", rep,
				 k->reps, l.n, latencies_pct(&l, 50), latencies_pct(&l, 99),
				 latencies_pct(&l, 100));
		} else {
			fail(&row("W2", "p50 ms", U_MS)->fp, "W2 forkpool");
		}
		latencies_free(&l);
		if (!python)
			continue;
		struct executor_run er;
		if (executor_run(python, "W2", k->w2_calls, cores, &er) == 0) {
			add(&row("W2", "p50 ms", U_MS)->ex, er.p50_ms);
			add(&row("W2", "p99 ms", U_MS)->ex, er.p99_ms);
			add(&row("W2", "calls/s", U_RATE)->ex, (double)er.items / er.seconds);
			progress("W2 %d/%d executor: %lld calls, p50 %.3f ms, p99 %.3f ms", rep, k->reps,
				 er.items, er.p50_ms, er.p99_ms);
		} else {
			fail(&row("W2", "p50 ms", U_MS)->ex, "W2 executor");
		}
	}
}

/* W3's control row: the same clients on GET /healthz, for a third of W3's
 * time (at most 3 s). */
#define W3_CONTROL "control: GET /healthz answers/s, same clients (nothing stored)"
#define W3_CONTROL_S(k) ((k)->w3_seconds / 3 < 3 ? (k)->w3_seconds / 3 : 3)

static void w3(const struct knobs *k)
{
	for (int rep = 1; rep <= k->reps; rep++) {
		struct fpserver s;
		struct latencies l = {0}, hz = {0};
		int rc = start(&s, 0, 0), hzrc = -1;
		long rss = -1;
		long long vol = -1, invol = -1;
		double cpu = -1, ccpu = -1;
		if (rc == 0) {
			double c0 = self_cpu_s();
			rc = rounds_concurrent(&s, k->w3_clients, k->w3_seconds, &l);
			ccpu = self_cpu_s() - c0;
			rss = fpserver_peak_rss_kib(&s);
			cpu = fpserver_cpu_s(&s);
			fpserver_switches(&s, &vol, &invol);
			/* The control, on the same server: nothing stored. */
			if (rc == 0)
				hzrc = rounds_healthz(&s, k->w3_clients, W3_CONTROL_S(k), &hz);
			if (fpserver_stop(&s) < 0)
				rc = -1;
		}
		if (rc == 0) {
			add(&row("W3", "items/s", U_RATE)->fp, (double)l.n / l.seconds);
			add(&row("W3", "p50 ms (one batch's round trip)", U_MS)->fp, latencies_pct(&l, 50));
			add(&row("W3", "p99 ms (one batch's round trip)", U_MS)->fp, latencies_pct(&l, 99));
			add(&row("W3", "server CPU seconds", U_S)->fp, cpu);
			if (hzrc == 0 && hz.n > 0 && hz.seconds > 0)
				add(&row("W3", W3_CONTROL, U_RATE)->fp, (double)hz.n / hz.seconds);
			else
				fail(&row("W3", W3_CONTROL, U_RATE)->fp, "W3 control");
			progress("W3 %d/%d forkpool: %d clients, %ld items in %.3f s = %.0f items/s, p50 "
				 "%.3f ms, "
				 "p99 %.3f ms, peak RSS %.1f MiB",
				 rep, k->reps, k->w3_clients, l.n, l.seconds, (double)l.n / l.seconds,
				 latencies_pct(&l, 50), latencies_pct(&l, 99), MIB(rss));
			progress("    server CPU %.2f s (%lld waits, %lld preemptions), client CPU %.2f s",
				 cpu, vol, invol, ccpu);
		} else {
			fail(&row("W3", "items/s", U_RATE)->fp, "W3 forkpool");
		}
		latencies_free(&l);
		latencies_free(&hz);
		if (!python)
			continue;
		struct executor_run er;
		if (executor_run(python, "W3", k->w3_calls, cores, &er) == 0) {
			add(&row("W3", "items/s", U_RATE)->ex, (double)er.items / er.seconds);
			progress("W3 %d/%d executor: %lld calls in %.3f s = %.0f items/s", rep, k->reps,
				 er.items, er.seconds, (double)er.items / er.seconds);
		} else {
			fail(&row("W3", "items/s", U_RATE)->ex, "W3 executor");
		}
	}
}

/* count_primes over [0, end) in `ranges` ranges through the workers' own
 * task code, one after another in this process. */
static double sequential_primes(long long end, int ranges, long long *total, double *cpu_s)
{
	double t0 = now_s(), c0 = self_cpu_s();
	*total = 0;
	for (int i = 0; i < ranges; i++)
		*total += task_count_primes(end * i / ranges, end * (i + 1) / ranges);
	*cpu_s = self_cpu_s() - c0;
	return now_s() - t0;
}

/* The machine's own ceiling for W4: the same ranges run by nproc plain
 * processes at once (fork, no forkpool), each taking the next range from a
 * shared counter, as forkpool's workers take chunks of one range. Their
 * wall time against the sequential run's is the speedup this machine gives
 * any pool: if two vCPUs that both compute slow each other down, this shows
 * it in the same run. Returns the seconds, or -1. */
static double parallel_primes(long long end, int ranges, int nproc, long long *total)
{
	struct shared {
		_Atomic int next;
		_Atomic long long total;
	} *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		return -1;
	atomic_init(&sh->next, 0);
	atomic_init(&sh->total, 0);
	double t0 = now_s();
	int started = 0, ok = 1;
	for (; started < nproc; started++) {
		pid_t pid = fork();
		if (pid < 0) {
			ok = 0;
			break;
		}
		if (pid == 0) {
			long long n = 0;
			for (int i; (i = atomic_fetch_add(&sh->next, 1)) < ranges;)
				n += task_count_primes(end * i / ranges, end * (i + 1) / ranges);
			atomic_fetch_add(&sh->total, n);
			_exit(0);
		}
	}
	for (int i = 0; i < started; i++) {
		int st;
		if (wait(&st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
			ok = 0;
	}
	double secs = now_s() - t0;
	*total = atomic_load(&sh->total);
	munmap(sh, sizeof *sh);
	return ok ? secs : -1;
}

/* The same through forkpool: one batch, one range per chunk. */
static int fp_primes(long long end, int ranges, double *secs, long long *total, double *workers_cpu_s)
{
	struct buf body = {0};
	buf_adds(&body, "{\"task\":\"count_primes\",\"chunksize\":1,\"items\":[");
	for (int i = 0; i < ranges; i++)
		buf_printf(&body, "%s[%lld,%lld]", i ? "," : "", end * i / ranges, end * (i + 1) / ranges);
	buf_adds(&body, "]}");
	struct fpserver s;
	if (start(&s, 0, 0) < 0) {
		buf_free(&body);
		return -1;
	}
	char *resp = NULL;
	double t0 = now_s(), w0 = fpserver_workers_cpu_s(&s);
	long st = client_post(&s, "/v1/batches?wait=3600", body.data, &resp);
	*secs = now_s() - t0;
	*workers_cpu_s = fpserver_workers_cpu_s(&s) - w0;
	int rc = fpserver_stop(&s);
	json_t *j = st == 201 ? json_loads(resp, 0, NULL) : NULL;
	json_t *res = json_object_get(j, "results"), *f;
	size_t i;
	*total = 0;
	json_array_foreach (res, i, f) {
		*total += json_integer_value(json_object_get(f, "result"));
	}
	if (!j || json_array_size(res) != (size_t)ranges) {
		fprintf(stderr, "bench: count_primes batch: status %ld: %.300s\n", st, resp);
		rc = -1;
	}
	json_decref(j);
	free(resp);
	buf_free(&body);
	return rc;
}

/* forkpool's speedup against that of plain processes: how much of what
 * the machine gives forkpool takes. */
#define W4_CEILING "speedup; executor column: %d plain processes at once (the machine's ceiling)"

static void w4(const struct knobs *k)
{
	for (int rep = 1; rep <= k->reps; rep++) {
		double fs = 0, ss;
		long long ftotal = 0, stotal = 0;
		double wcpu = 0, scpu = 0;
		long long ptotal = 0;
		int rc = fp_primes(k->w4_end, k->w4_ranges, &fs, &ftotal, &wcpu);
		ss = sequential_primes(k->w4_end, k->w4_ranges, &stotal, &scpu);
		double ps = parallel_primes(k->w4_end, k->w4_ranges, cores, &ptotal);
		static char ceiling[128]; /* rows keep the pointer */
		snprintf(ceiling, sizeof ceiling, W4_CEILING, cores);
		if (rc == 0 && ftotal != stotal) {
			fprintf(stderr,
				"bench: count_primes: forkpool counted %lld primes, the sequential run "
				"%lld\n",
				ftotal, stotal);
			rc = -1;
		}
		if (rc == 0) {
			add(&row("W4", "seconds (executor column: sequential, one process)", U_S)->fp, fs);
			add(&row("W4", "speedup, sequential / forkpool", U_X)->fp, ss / fs);
			add(&row("W4", ceiling, U_X)->fp, ss / fs);
			add(&row("W4", "CPU seconds per second (workers / sequential)", U_X)->fp, wcpu / fs);
			progress("W4 %d/%d forkpool: %lld primes in %.3f s; the workers ran %.2f CPU s per s",
				 rep, k->reps, ftotal, fs, wcpu / fs);
		} else {
			fail(&row("W4", "seconds (executor column: sequential, one process)", U_S)->fp,
			     "W4 forkpool");
		}
		if (ps > 0 && ptotal == stotal) {
			add(&row("W4", ceiling, U_X)->ex, ss / ps);
			progress("W4 %d/%d %d plain processes: %lld primes in %.3f s, %.2f × the sequential run",
				 rep, k->reps, cores, ptotal, ps, ss / ps);
		} else {
			fail(&row("W4", ceiling, U_X)->ex, "W4 plain processes");
		}
		add(&row("W4", "seconds (executor column: sequential, one process)", U_S)->ex, ss);
		add(&row("W4", "CPU seconds per second (workers / sequential)", U_X)->ex, scpu / ss);
		progress("W4 %d/%d sequential: %lld primes in %.3f s; %.2f CPU s per s", rep, k->reps, stotal,
			 ss, scpu / ss);
	}
}

/* W5's rate is set against a W1 run made just before each W5 run: this VM's
 * speed moves by a quarter within minutes, so W1's median, taken minutes
 * earlier, would judge the machine's drift as much as the scaling. */
#define W5_RATIO "items/s relative to W1 (a W1 run just before each)"

static void w5(const struct knobs *k)
{
	for (int rep = 1; rep <= k->reps; rep++) {
		struct map_stats w1s, ms;
		double w1rate = NAN;
		if (fp_map(k->w1_items, k->chunksize, 0, &w1s) == 0)
			w1rate = (double)w1s.run.items / w1s.run.seconds;
		if (fp_map(k->w5_items, k->chunksize, 0, &ms) < 0) {
			fail(&row("W5", "items/s", U_RATE)->fp, "W5 forkpool");
			continue;
		}
		double rate = (double)ms.run.items / ms.run.seconds;
		add(&row("W5", "items/s", U_RATE)->fp, rate);
		if (!isnan(w1rate))
			add(&row("W5", W5_RATIO, U_X)->fp, rate / w1rate);
		add(&row("W5", "seconds, first byte sent to last result", U_S)->fp, ms.run.seconds);
		add(&row("W5", "seconds to the 201 (ingest)", U_S)->fp, ms.run.ingest_s);
		add(&row("W5", "server peak RSS MiB", U_MIB)->fp, MIB(ms.rss_kib));
		add(&row("W5", "database bytes per item", U_BYTES)->fp,
		    (double)ms.db_bytes / (double)ms.run.items);
		add(&row("W5", "server CPU seconds", U_S)->fp, ms.cpu_s);
		progress_map("W5", rep, k->reps, &ms);
		progress("    the W1 run before it: %.0f items/s", w1rate);
	}
}

/* W6: one cell of the growth table. */
struct cell {
	long long items;
	int workers;
	struct series secs, rate, rss, dbb, cpu;
};

static struct cell cells[MAX_SIZES * MAX_SIZES];
static int ncells;

static void w6(const struct knobs *k)
{
	for (int wi = 0; wi < k->w6_nworkers; wi++)
		for (int si = 0; si < k->w6_nsizes; si++) {
			struct cell *c = &cells[ncells++];
			*c = (struct cell){.items = k->w6_sizes[si], .workers = k->w6_workers[wi]};
			for (int rep = 1; rep <= k->w6_reps; rep++) {
				struct map_stats ms;
				if (fp_map(c->items, k->chunksize, c->workers, &ms) < 0) {
					fail(&c->secs, "W6 forkpool");
					continue;
				}
				double rate = (double)ms.run.items / ms.run.seconds;
				add(&c->secs, ms.run.seconds);
				add(&c->rate, rate);
				add(&c->rss, MIB(ms.rss_kib));
				add(&c->dbb, (double)ms.db_bytes / (double)ms.run.items);
				add(&c->cpu, ms.cpu_s);
				char label[64];
				snprintf(label, sizeof label, "W6 %d worker%s", c->workers,
					 c->workers == 1 ? "" : "s");
				progress_map(label, rep, k->w6_reps, &ms);
			}
		}
}

/* ---- the targets ---- */

/* Issue 3's figure: thousands of long-polls on one batch, all answered
 * soon after it completes, with little memory for them. */
static void w7(const struct knobs *k)
{
	for (int rep = 1; rep <= k->reps; rep++) {
		struct fpserver s;
		struct poll_run pr;
		int rc = start(&s, 1, 0);
		if (rc == 0) {
			/* The item must outlast the parking of every long-poll. */
			rc = polls_wake(&s, k->w7_polls, 1.0 + k->w7_polls / 1000.0, &pr);
			if (fpserver_stop(&s) < 0)
				rc = -1;
		}
		if (rc == 0) {
			add(&row("W7", "last answer, ms after the batch completed", U_MS)->fp, pr.last_ms);
			add(&row("W7", "first answer, ms after the batch completed", U_MS)->fp, pr.first_ms);
			add(&row("W7", "server RSS growth MiB for the waiting clients", U_MIB)->fp,
			    MIB(pr.rss_growth_kib));
			progress("W7 %d/%d forkpool: %d long-polls answered %.1f to %.1f ms after the "
				 "completion; RSS +%.1f MiB",
				 rep, k->reps, pr.n, pr.first_ms, pr.last_ms, MIB(pr.rss_growth_kib));
		} else {
			fail(&row("W7", "last answer, ms after the batch completed", U_MS)->fp, "W7 forkpool");
		}
	}
}

static void judge(struct row *r, int ok, const char *fmt_, ...) __attribute__((format(printf, 3, 4)));
static void judge(struct row *r, int ok, const char *fmt_, ...)
{
	va_list ap;
	va_start(ap, fmt_);
	vsnprintf(r->target, sizeof r->target, fmt_, ap);
	va_end(ap);
	snprintf(r->met, sizeof r->met, "%s", ok < 0 ? "n/a" : ok ? "yes" : "**no**");
}

static void targets(void)
{
	for (int i = 0; i < nrows; i++) {
		struct row *r = &rows[i];
		double f = median(&r->fp), e = median(&r->ex), ratio = f / e;
		int have = !isnan(f), both = have && !isnan(e);
		if (!strcmp(r->work, "W1") && !strcmp(r->metric, "items/s"))
			judge(r, both ? ratio >= 1.5 : -1, "≥ 1.5 × executor");
		else if (!strcmp(r->work, "W2") && !strcmp(r->metric, "p50 ms"))
			judge(r, both ? ratio <= 1 : -1, "≤ executor's p50");
		else if (!strcmp(r->work, "W2") && !strcmp(r->metric, "p99 ms"))
			judge(r, have ? f <= 1 : -1, "forkpool ≤ 1 ms");
		else if (!strcmp(r->work, "W3") && !strcmp(r->metric, "items/s"))
			judge(r, both ? ratio >= 3 : -1, "≥ 3 × executor");
		else if (!strcmp(r->work, "W4") && !strcmp(r->metric, "speedup, sequential / forkpool"))
			judge(r, have ? f >= 0.95 * cores : -1, "≥ 0.95 × %d cores = %.2f", cores,
			      0.95 * cores);
		else if (!strcmp(r->work, "W5") && !strcmp(r->metric, "server peak RSS MiB"))
			judge(r, have ? f <= 256 : -1, "≤ 256 MiB");
		else if (!strcmp(r->work, "W5") && !strncmp(r->metric, "items/s relative", 16))
			judge(r, have ? f >= 0.8 : -1, "≥ 0.80 (within 20%% of W1)");
		else if (!strcmp(r->work, "W7") && !strncmp(r->metric, "last answer", 11))
			judge(r, have ? f <= 100 : -1, "≤ 100 ms");
		else if (!strcmp(r->work, "W7") && !strncmp(r->metric, "server RSS", 10))
			judge(r, have ? f < 64 : -1, "< 64 MiB");
	}
}

/* ---- the report ---- */

static void cpu_model(char *out, size_t cap)
{
	snprintf(out, cap, "unknown CPU");
	FILE *f = fopen("/proc/cpuinfo", "r");
	if (!f)
		return;
	char line[512];
	while (fgets(line, sizeof line, f)) {
		char *colon = strchr(line, ':');
		if (!strncmp(line, "model name", 10) && colon) {
			colon += 1 + (colon[1] == ' ');
			colon[strcspn(colon, "\n")] = '\0';
			snprintf(out, cap, "%s", colon);
			break;
		}
	}
	fclose(f);
}

/* The first line a shell command prints, or "" (static). */
static const char *shell_line(const char *cmd)
{
	static char line[256];
	line[0] = '\0';
	FILE *p = popen(cmd, "r");
	if (!p)
		return line;
	if (!fgets(line, sizeof line, p))
		line[0] = '\0';
	line[strcspn(line, "\n")] = '\0';
	pclose(p);
	return line;
}

static void cells_md(struct buf *o, const struct series *s, enum unit u)
{
	char a[48], b[48], c[48];
	if (!s->n && s->failed) {
		buf_printf(o, " failed | | |");
		return;
	}
	buf_printf(o, " %s | %s | %s |", fmt(u, median(s), a, sizeof a), fmt(u, smin(s), b, sizeof b),
		   fmt(u, smax(s), c, sizeof c));
}

static void report(struct buf *o, const struct knobs *k, int quick, const char *load)
{
	char cpu[256], date[64];
	cpu_model(cpu, sizeof cpu);
	time_t t = time(NULL);
	strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", gmtime(&t));
	char commit[256];
	snprintf(commit, sizeof commit, "%s", shell_line("git rev-parse --short HEAD 2>/dev/null"));
	const char *dirty = *commit && system("git diff --quiet HEAD -- server worker common 2>/dev/null")
				    ? " (with uncommitted changes in server/, worker/ or common/)"
				    : "";
	buf_printf(
		o,
		"Run on %s: %s, %d cores online, load average at the start %s%s.\n"
		"forkpool %s%s%s; ProcessPoolExecutor of Python %s with max_workers = %d.\n"
		"Batches went in as %s. %d repetition%s of each workload%s; forkpool and the executor "
		"alternate. Sizes: W1 %lld items; W2 %ld calls; W3 %d clients for %.1f s (the executor: %ld "
		"calls); W4 [0, %lld) in %d ranges; W5 %lld items; chunksize %ld.\n\n",
		date, cpu, cores, load, quick ? " (--quick: a smoke run, the numbers mean nothing)" : "",
		*commit ? "commit " : "", *commit ? commit : "(no git)", dirty,
		python ? executor_version() : "(none)", cores,
		input_mode == INPUT_NDJSON
			? "NDJSON (POST /v1/batches?task=square, Content-Type: application/x-ndjson)"
			: "JSON arrays of at most 1,000,000 items (the server answered 415 to "
			  "NDJSON)",
		k->reps, k->reps == 1 ? "" : "s",
		k->scale != 1 && !quick ? " (BENCH_SCALE scaled the sizes)" : "", k->w1_items, k->w2_calls,
		k->w3_clients, k->w3_seconds, k->w3_calls, k->w4_end, k->w4_ranges, k->w5_items,
		k->chunksize);
	buf_adds(o, "| workload | metric | forkpool median | min | max | executor median | min | max | "
		    "forkpool / executor | target | met |\n"
		    "|---|---|--:|--:|--:|--:|--:|--:|--:|---|---|\n");
	for (int i = 0; i < nrows; i++) {
		const struct row *r = &rows[i];
		char ratio[48];
		double f = median(&r->fp), e = median(&r->ex);
		fmt(U_X, f / e, ratio, sizeof ratio);
		buf_printf(o, "| %s | %s |", r->work, r->metric);
		cells_md(o, &r->fp, r->unit);
		cells_md(o, &r->ex, r->unit);
		buf_printf(o, " %s | %s | %s |\n", ratio, r->target[0] ? r->target : "",
			   r->met[0] ? r->met : "");
	}
	if (ncells) {
		buf_printf(o,
			   "\nW6, growth: square over N items (as W1) with 1 and 2 workers%s.\n\n"
			   "| items | workers | seconds | items/s | server peak RSS MiB | database bytes per "
			   "item "
			   "| server CPU seconds |\n|--:|--:|--:|--:|--:|--:|--:|\n",
			   k->w6_reps > 1 ? ", medians" : ", one run each");
		for (int i = 0; i < ncells; i++) {
			const struct cell *c = &cells[i];
			char a[48], b[48], d[48], e[48], g[48];
			if (!c->secs.n) {
				buf_printf(o, "| %lld | %d | failed | | | | |\n", c->items, c->workers);
				continue;
			}
			buf_printf(o, "| %lld | %d | %s | %s | %s | %s | %s |\n", c->items, c->workers,
				   fmt(U_S, median(&c->secs), a, sizeof a),
				   fmt(U_RATE, median(&c->rate), b, sizeof b),
				   fmt(U_MIB, median(&c->rss), d, sizeof d),
				   fmt(U_BYTES, median(&c->dbb), e, sizeof e),
				   fmt(U_S, median(&c->cpu), g, sizeof g));
		}
	}
}

#define BEGIN_MARK "<!-- forkpool-bench: begin (generated; make bench rewrites it) -->\n"
#define END_MARK   "<!-- forkpool-bench: end -->\n"

static const char doc_head[] =
	"# Benchmarks: forkpool and ProcessPoolExecutor\n\n"
	"`make bench` measures forkpool (the real server, default flags, `--sync normal`, a fresh database "
	"for every run) and Python's `concurrent.futures.ProcessPoolExecutor` in the same run, and writes "
	"the table between the markers below. The workloads are those of issue 5:\n\n"
	"- **W1** `square` over N items in one batch: NDJSON in, NDJSON stream out, from the first byte "
	"sent to the last result received, every future persisted; the executor runs "
	"`list(ex.map(square, range(N), chunksize=10000))`.\n"
	"- **W2** sequential single-item `POST /v1/batches?wait=5` of `echo` on one kept-alive "
	"connection; the executor: `ex.submit(noop, i).result()`. 20 untimed calls first, on both sides.\n"
	"- **W3** concurrent clients, each posting single-item batches with `?wait=5` (the answer "
	"carries the result) for a fixed time; the executor: `submit` + `as_completed` of single calls. "
	"A control row has the same clients ask `GET /healthz` (nothing stored, nothing waited for) on "
	"the same server for a third of that time: how many answers the bench's client and the HTTP "
	"stack manage when forkpool does no work for them.\n"
	"- **W4** `count_primes` over [0, 10^10) in 64 ranges, one per chunk; the executor column is the "
	"same ranges through the workers' own task code, one after another in one process. (The issue "
	"says [0, 2·10^7): the workers' segmented sieve does that in about 20 ms, which measures round "
	"trips, not parallel speedup; `BENCH_W4_END=20000000` runs it.) A control row runs the ranges "
	"in as many plain processes as there are cores (fork, a shared counter handing out the next "
	"range, no forkpool): the speedup this machine gives any pool in the same run, and forkpool's "
	"against it.\n"
	"- **W5** W1 at scale: peak RSS of the server (VmHWM), database + WAL bytes per item; its rate is "
	"set against a W1 run made just before each W5 run (the machine's speed drifts between workloads).\n"
	"- **W6** W1 at growing sizes with 1 and 2 workers.\n"
	"- **W7** (issue 3) 2,000 long-polls (`GET /v1/batches/{id}?wait=60`, HTTP/1.1 kept alive, as "
	"curl and Python's http.client send them) parked on a one-item "
	"batch: how long after the item's `finished_at` the first and the last answer arrived, and the "
	"server's RSS growth for them.\n\n"
	"The executor's pool is started and warmed before its clock starts, as forkpool's workers are "
	"preforked. Peak RSS is the server process's alone (workers excluded); on the executor side it "
	"is the parent process's (`ru_maxrss`).\n\n";

/* Writes the report into path between the markers, keeping what is around
 * them; a file without markers gets the head, then the report. */
static int write_doc(const char *path, const struct buf *rep)
{
	FILE *f = fopen(path, "r");
	struct buf old = {0}, out = {0};
	if (f) {
		char chunk[8192];
		size_t n;
		while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
			buf_add(&old, chunk, n);
		fclose(f);
		buf_addc(&old, '\0');
	}
	char *b = old.data ? strstr(old.data, BEGIN_MARK) : NULL;
	char *e = b ? strstr(b, END_MARK) : NULL;
	if (b && e) {
		buf_add(&out, old.data, (size_t)(b - old.data));
		buf_adds(&out, BEGIN_MARK);
		buf_add(&out, rep->data, rep->len);
		buf_adds(&out, END_MARK);
		buf_adds(&out, e + strlen(END_MARK));
	} else {
		buf_adds(&out, doc_head);
		buf_adds(&out, BEGIN_MARK);
		buf_add(&out, rep->data, rep->len);
		buf_adds(&out, END_MARK);
	}
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	f = fopen(tmp, "w");
	int rc = f && fwrite(out.data, 1, out.len, f) == out.len ? 0 : -1;
	if (f && fclose(f) != 0)
		rc = -1;
	if (rc == 0 && rename(tmp, path) != 0)
		rc = -1;
	if (rc < 0)
		fprintf(stderr, "forkpool-bench: cannot write %s: %s\n", path, strerror(errno));
	buf_free(&old);
	buf_free(&out);
	return rc;
}

/* forkpoold beside this program. */
static const char *default_server(void)
{
	static char path[4096];
	ssize_t n = readlink("/proc/self/exe", path, sizeof path - 32);
	if (n <= 0)
		return "build/forkpoold";
	path[n] = '\0';
	char *slash = strrchr(path, '/');
	snprintf(slash + 1, sizeof path - (size_t)(slash + 1 - path), "forkpoold");
	return path;
}

int main(int argc, char **argv)
{
	int quick = 0;
	const char *out = NULL;
	server_bin = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quick"))
			quick = 1;
		else if (!strcmp(argv[i], "--out") && i + 1 < argc)
			out = argv[++i];
		else if (!strcmp(argv[i], "--server") && i + 1 < argc)
			server_bin = argv[++i];
		else {
			fputs(usage, strcmp(argv[i], "--help") ? stderr : stdout);
			return strcmp(argv[i], "--help") ? 2 : 0;
		}
	}
	if (!server_bin)
		server_bin = default_server();
	if (access(server_bin, X_OK) != 0) {
		fprintf(stderr, "forkpool-bench: no server at %s (--server PATH)\n", server_bin);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	/* W7 holds thousands of sockets at once. */
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	curl_global_init(CURL_GLOBAL_DEFAULT);
	long nc = sysconf(_SC_NPROCESSORS_ONLN);
	cores = nc > 0 ? (int)nc : 1;
	struct knobs k;
	knobs_read(&k, quick);
	python = executor_python();
	if (!python)
		progress("forkpool-bench: no python3 (BENCH_PYTHON): the executor's columns stay empty");
	/* The 1, 5 and 15 minute load averages: how busy the machine was. */
	char load[128] = "?";
	FILE *lf = fopen("/proc/loadavg", "r");
	if (lf) {
		if (fgets(load, sizeof load, lf)) {
			char *p = load;
			for (int i = 0; i < 3 && p; i++)
				p = strchr(p + 1, ' ');
			if (p)
				*p = '\0';
		}
		fclose(lf);
	}

	/* Which input the server takes, asked of a server of its own. */
	struct fpserver probe;
	if (fpserver_start(&probe, server_bin, NULL) < 0)
		return 1;
	int mode = client_probe_ndjson(&probe);
	fpserver_stop(&probe);
	if (mode < 0)
		return 1;
	input_mode = (enum input_mode)mode;
	progress("forkpool-bench: batches go in as %s",
		 mode == INPUT_NDJSON ? "NDJSON" : "JSON arrays (the server answered 415 to NDJSON)");
	if (wanted(&k, "W1"))
		w1(&k);
	if (wanted(&k, "W2"))
		w2(&k);
	if (wanted(&k, "W3"))
		w3(&k);
	if (wanted(&k, "W4"))
		w4(&k);
	if (wanted(&k, "W5"))
		w5(&k);
	if (wanted(&k, "W6"))
		w6(&k);
	if (wanted(&k, "W7"))
		w7(&k);
	targets();
	struct buf rep = {0};
	report(&rep, &k, quick, load);
	fwrite(rep.data, 1, rep.len, stdout);
	fflush(stdout);
	int rc = failures ? 1 : 0;
	if (out && write_doc(out, &rep) < 0)
		rc = 1;
	buf_free(&rep);
	curl_global_cleanup();
	if (failures)
		fprintf(stderr, "forkpool-bench: %d run%s failed\n", failures, failures == 1 ? "" : "s");
	return rc;
}
