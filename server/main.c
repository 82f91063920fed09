/* main.c - forkpoold: configuration, start-up, the loop's turn, shutdown.
 *
 * One turn of the loop: wait for events (HTTP, worker sockets, signals,
 * deadlines); let libmicrohttpd handle requests (submissions write into the
 * open transaction and park until the commit); commit once (group commit);
 * answer the parked submissions and wake the long-polls whose batches
 * changed; hand pending items to idle workers; commit the dispatch. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "api.h"
#include "auth.h"
#include "catalog.h"
#include "http.h"
#include "metrics.h"
#include "log.h"
#include "loop.h"
#include "pool.h"
#include "retention.h"
#include "store.h"

#define MAX_EXTENSIONS 64

struct config {
	const char *listen, *db, *sync, *worker, *log_level;
	long workers, max_tasks, chunksize;
	size_t max_body;
	const char *token_file;
	int protect_metrics, insecure_listen;
	int64_t result_ttl_ms; /* 0: the default (7 days); < 0: keep forever */
	long max_memory, max_items, idle_timeout, max_connections;
	double default_timeout, grace, start_timeout;
	/* --plugin and --tasks-file in order, as the workers' arguments
	 * ("--plugin", spec, ...), NULL-terminated */
	char *wargs[2 * MAX_EXTENSIONS + 1];
	int nwargs;
	int ext_flags; /* bit k: a flag of kind k was given (its env values are dropped) */
};

static const char usage[] =
    "usage: forkpoold [options]\n"
    "Serves the forkpool HTTP API: batches of jobs run by a prefork pool of workers,\n"
    "with every future stored in SQLite.\n"
    "\n"
    "  --listen HOST:PORT         address to serve on (default 127.0.0.1:8080; port 0 picks one)\n"
    "  --db PATH                  SQLite database (default ./data/forkpool.db; directory created)\n"
    "  --workers N                worker processes (default: online CPUs)\n"
    "  --max-tasks-per-child N    replace a worker after N items (default 0: never)\n"
    "  --chunksize N              items per chunk when a batch gives none\n"
    "                             (default: automatic, about items / (workers x 4))\n"
    "  --sync normal|full         normal survives a killed process, full also power loss\n"
    "                             (default normal)\n"
    "  --max-body BYTES           largest request body, K/M/G suffixes allowed (default 64M)\n"
    "  --max-items N              most items in one batch, JSON or NDJSON (default 10000000)\n"
    "  --default-timeout S        seconds an item may run when its batch gives no timeout\n"
    "                             (default: no limit)\n"
    "  --max-memory-per-child MB  cap each worker's address space at its start-up size + MB,\n"
    "                             and replace one whose resident size passes MB (default: none)\n"
    "  --grace S                  on SIGTERM, seconds to let running items finish before they\n"
    "                             go back to pending (default 10)\n"
    "  --start-timeout S          a worker not ready S seconds after it started is killed and\n"
    "                             counts as a failed start; loading the plugins to read the\n"
    "                             task catalogue at start-up may take no longer either\n"
    "                             (default 60; 0: no limit)\n"
    "  --idle-timeout S           close a connection idle for S seconds (default 60)\n"
    "  --max-connections N        most open connections (default: from the fd limit, <= 10000)\n"
    "  --worker PATH              the worker program (default: forkpool-worker beside forkpoold)\n"
    "  --plugin PATH.so[=JSON]    a C plugin every worker loads; JSON is the argument of its\n"
    "                             initializer (repeatable; see docs/plugins.md)\n"
    "  --tasks-file PATH          tasks that run programs, from a JSON file (repeatable)\n"
    "  --token-file PATH          every /v1 request needs Authorization: Bearer <the file's\n"
    "                             first line> (or give the token itself in FORKPOOL_TOKEN)\n"
    "  --protect-metrics          /metrics needs the token too (/healthz never does)\n"
    "  --insecure-listen          serve a non-loopback address without a token\n"
    "  --result-ttl DURATION      delete batches done for longer than this: 90s, 30m, 12h,\n"
    "                             7d, 2w, or off (default 7d)\n"
    "  --log-level LEVEL          debug, info, warn or error (default info)\n"
    "  --help                     this text\n"
    "\n"
    "Each option can also be set in the environment as FORKPOOL_<NAME> (FORKPOOL_LISTEN,\n"
    "FORKPOOL_MAX_TASKS_PER_CHILD, ...); a flag wins over the environment. FORKPOOL_PLUGIN and\n"
    "FORKPOOL_TASKS_FILE may hold several values, one per line.\n";

/* Options without a short letter of their own. */
enum { OPT_TOKEN_FILE = 0x100, OPT_PROTECT_METRICS, OPT_INSECURE_LISTEN, OPT_RESULT_TTL };

static const struct option longopts[] = {
    {"listen", required_argument, NULL, 'l'},
    {"db", required_argument, NULL, 'd'},
    {"workers", required_argument, NULL, 'w'},
    {"max-tasks-per-child", required_argument, NULL, 'm'},
    {"chunksize", required_argument, NULL, 'c'},
    {"sync", required_argument, NULL, 's'},
    {"max-body", required_argument, NULL, 'b'},
    {"worker", required_argument, NULL, 'W'},
    {"token-file", required_argument, NULL, OPT_TOKEN_FILE},
    {"protect-metrics", no_argument, NULL, OPT_PROTECT_METRICS},
    {"insecure-listen", no_argument, NULL, OPT_INSECURE_LISTEN},
    {"result-ttl", required_argument, NULL, OPT_RESULT_TTL},
    {"log-level", required_argument, NULL, 'L'},
    {"max-items", required_argument, NULL, 'i'},
    {"default-timeout", required_argument, NULL, 't'},
    {"max-memory-per-child", required_argument, NULL, 'M'},
    {"grace", required_argument, NULL, 'g'},
    {"start-timeout", required_argument, NULL, 'S'},
    {"idle-timeout", required_argument, NULL, 'I'},
    {"max-connections", required_argument, NULL, 'C'},
    {"plugin", required_argument, NULL, 'P'},
    {"tasks-file", required_argument, NULL, 'T'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static int bad_value(const char *name, const char *value, const char *want)
{
	fprintf(stderr, "forkpoold: --%s %s: %s\n", name, value, want);
	return -1;
}

static int parse_long(const char *name, const char *v, long min, long max, long *out)
{
	char *end;
	errno = 0;
	long n = strtol(v, &end, 10);
	if (!*v || *end || errno || n < min || n > max) {
		char want[96];
		snprintf(want, sizeof want, "expected an integer from %ld to %ld", min, max);
		return bad_value(name, v, want);
	}
	*out = n;
	return 0;
}

static int parse_seconds(const char *name, const char *v, double min, double max, double *out)
{
	char *end;
	errno = 0;
	double d = strtod(v, &end);
	if (!*v || *end || errno || !(d >= min && d <= max)) {
		char want[96];
		snprintf(want, sizeof want, "expected seconds from %g to %g", min, max);
		return bad_value(name, v, want);
	}
	*out = d;
	return 0;
}

static int parse_size(const char *name, const char *v, size_t *out)
{
	char *end;
	errno = 0;
	unsigned long long n = strtoull(v, &end, 10);
	unsigned shift = 0;
	if (*end == 'K' || *end == 'k')
		shift = 10;
	else if (*end == 'M' || *end == 'm')
		shift = 20;
	else if (*end == 'G' || *end == 'g')
		shift = 30;
	if (shift)
		end++;
	if (*end == 'i' && shift)
		end++;
	if ((*end == 'B' || *end == 'b') && shift)
		end++;
	if (!*v || *v == '-' || *end || errno || n == 0 || n > (1ULL << (40 - shift)))
		return bad_value(name, v, "expected a size in bytes such as 65536, 512K or 64M");
	*out = (size_t)(n << shift);
	return 0;
}

static int from_env; /* apply() is reading the environment */

/* Adds a --plugin or --tasks-file (kind 0 or 1) for the workers. The first
 * flag of a kind drops the values of that kind taken from the environment. */
static int add_extension(struct config *c, int kind, const char *v)
{
	const char *flag = kind ? "--tasks-file" : "--plugin";
	if (!from_env && !(c->ext_flags & (1 << kind))) {
		c->ext_flags |= 1 << kind;
		int n = 0;
		for (int i = 0; i < c->nwargs; i += 2)
			if (strcmp(c->wargs[i], flag)) {
				c->wargs[n++] = c->wargs[i];
				c->wargs[n++] = c->wargs[i + 1];
			}
		c->nwargs = n;
	}
	if (c->nwargs >= 2 * MAX_EXTENSIONS)
		return bad_value(flag + 2, v, "too many plugins and tasks files");
	if (!*v)
		return bad_value(flag + 2, v, "expected a path");
	c->wargs[c->nwargs++] = (char *)flag;
	c->wargs[c->nwargs++] = (char *)v;
	c->wargs[c->nwargs] = NULL;
	return 0;
}

/* A flag without a value: given on the command line (v is NULL), or
 * FORKPOOL_<NAME>=1 or 0 (true/false, yes/no) in the environment. */
static int parse_flag(const char *name, const char *v, int *out)
{
	if (!v || !strcmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes")) {
		*out = 1;
		return 0;
	}
	if (!strcmp(v, "0") || !strcasecmp(v, "false") || !strcasecmp(v, "no")) {
		*out = 0;
		return 0;
	}
	return bad_value(name, v, "expected 1 or 0 (true or false)");
}

/* Applies one option (from the command line or the environment). */
static int apply(struct config *c, int opt, const char *name, const char *v)
{
	switch (opt) {
	case 'l': {
		/* HOST:PORT, [V6]:PORT; the port a number from 0 (any free one)
		 * to 65535, checked here rather than wrapped by getaddrinfo. */
		const char *colon = strrchr(v, ':');
		char *end;
		errno = 0;
		long port = colon ? strtol(colon + 1, &end, 10) : -1;
		if (!colon || colon == v || !colon[1] || *end || errno || port < 0 || port > 65535)
			return bad_value(name, v, "expected HOST:PORT with a port from 0 to 65535");
		c->listen = v;
		return 0;
	}
	case 'd': c->db = v; return 0;
	case 'w': return parse_long(name, v, 1, 1024, &c->workers);
	case 'm': return parse_long(name, v, 0, LONG_MAX, &c->max_tasks);
	case 'c': return parse_long(name, v, 1, 1000000000, &c->chunksize);
	case 's':
		if (strcmp(v, "normal") && strcmp(v, "full"))
			return bad_value(name, v, "expected normal or full");
		c->sync = v;
		return 0;
	case 'b': return parse_size(name, v, &c->max_body);
	case 'W': c->worker = v; return 0;
	case 'i': return parse_long(name, v, 1, 1000000000, &c->max_items);
	case 't': return parse_seconds(name, v, 0.001, 1e7, &c->default_timeout);
	case 'M': return parse_long(name, v, 1, 1L << 30, &c->max_memory);
	case 'g': return parse_seconds(name, v, 0, 86400, &c->grace);
	case 'S': return parse_seconds(name, v, 0, 86400, &c->start_timeout);
	case 'I': return parse_long(name, v, 1, 86400, &c->idle_timeout);
	case 'C': return parse_long(name, v, 1, 1000000, &c->max_connections);
	case 'P':
	case 'T':
		if (!from_env)
			return add_extension(c, opt == 'T', v);
		/* In the environment, one value per line: copies that live as long
		 * as the process (kept here, where a leak check can see them). */
		for (const char *line = v; *line;) {
			static char *copies[2 * MAX_EXTENSIONS];
			static int ncopies;
			const char *nl = strchr(line, '\n');
			size_t len = nl ? (size_t)(nl - line) : strlen(line);
			if (len && ncopies == 2 * MAX_EXTENSIONS)
				return bad_value(name, v, "too many plugins and tasks files");
			if (len && (!(copies[ncopies] = strndup(line, len)) ||
				    add_extension(c, opt == 'T', copies[ncopies++]) < 0))
				return -1;
			line += len + (nl != NULL);
		}
		return 0;
	case OPT_TOKEN_FILE: c->token_file = v; return 0;
	case OPT_PROTECT_METRICS: return parse_flag(name, v, &c->protect_metrics);
	case OPT_INSECURE_LISTEN: return parse_flag(name, v, &c->insecure_listen);
	case OPT_RESULT_TTL:
		if (retention_parse(v, &c->result_ttl_ms) < 0)
			return bad_value(name, v, "expected a duration such as 90s, 30m, 12h, 7d, 2w, or off");
		return 0;
	case 'L':
		if (log_set_level(v) < 0)
			return bad_value(name, v, "expected debug, info, warn or error");
		c->log_level = v;
		return 0;
	}
	return -1;
}

static int configure(struct config *c, int argc, char **argv)
{
	*c = (struct config){.listen = "127.0.0.1:8080", .db = "./data/forkpool.db", .sync = "normal",
			     .max_body = 64u << 20, .max_items = 10000000, .idle_timeout = 60,
			     .grace = 10, .start_timeout = 60};
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	c->workers = ncpu > 0 ? ncpu : 1;
	/* The flags are read first but applied last, so that they win; an
	 * option given as a flag ignores its environment variable (even an
	 * invalid one), and --help needs neither to be valid. */
	struct given {
		int opt, idx;
		const char *arg;
	} *given = calloc((size_t)argc + 1, sizeof *given);
	if (!given)
		abort();
	int ngiven = 0, opt, idx;
	while ((opt = getopt_long(argc, argv, "", longopts, &idx)) != -1) {
		if (opt == 'h') {
			fputs(usage, stdout);
			exit(0);
		}
		if (opt == '?') {
			fprintf(stderr, "Try 'forkpoold --help'.\n");
			free(given);
			return -1;
		}
		given[ngiven++] = (struct given){opt, idx, optarg};
	}
	for (const struct option *o = longopts; o->name; o++) {
		if (o->val == 'h')
			continue;
		int flagged = 0;
		for (int i = 0; i < ngiven; i++)
			flagged |= given[i].opt == o->val;
		if (flagged)
			continue;
		char env[64] = "FORKPOOL_";
		for (const char *p = o->name; *p && strlen(env) < sizeof env - 1; p++) {
			char ch = *p == '-' ? '_' : (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
			strncat(env, &ch, 1);
		}
		const char *v = getenv(env);
		from_env = 1;
		int bad = v && *v && apply(c, o->val, o->name, v) < 0;
		from_env = 0;
		if (bad) {
			fprintf(stderr, "forkpoold: (from %s)\n", env);
			free(given);
			return -1;
		}
	}
	for (int i = 0; i < ngiven; i++)
		if (apply(c, given[i].opt, longopts[given[i].idx].name, given[i].arg) < 0) {
			fprintf(stderr, "Try 'forkpoold --help'.\n");
			free(given);
			return -1;
		}
	free(given);
	if (optind < argc) {
		fprintf(stderr, "forkpoold: unexpected argument '%s'\nTry 'forkpoold --help'.\n", argv[optind]);
		return -1;
	}
	return 0;
}

/* The worker program: --worker, else forkpool-worker beside this binary. */
static const char *worker_path(const char *given)
{
	static char path[PATH_MAX];
	if (given)
		return given;
	ssize_t n = readlink("/proc/self/exe", path, sizeof path - 32);
	if (n <= 0)
		return "forkpool-worker";
	path[n] = '\0';
	char *slash = strrchr(path, '/');
	strcpy(slash ? slash + 1 : path, "forkpool-worker");
	return path;
}

/* ---- batches whose futures changed this turn, for the long-polls ---- */

static int64_t *changed;
static size_t nchanged, capchanged;

static void on_change(int64_t batch)
{
	if (nchanged && changed[nchanged - 1] == batch)
		return;
	for (size_t i = 0; i < nchanged; i++)
		if (changed[i] == batch)
			return;
	if (nchanged == capchanged) {
		capchanged = capchanged ? capchanged * 2 : 16;
		changed = realloc(changed, capchanged * sizeof *changed);
		if (!changed)
			abort();
	}
	changed[nchanged++] = batch;
}

/* Commits the turn's writes, then tells the parked requests. */
static void commit(struct store *s)
{
	int ok = 1;
	if (store_dirty(s)) {
		ok = store_commit(s) == 0;
		metrics_commit(ok);
		/* The answers and wake-ups that follow read in one transaction. */
		store_read_begin(s);
		http_commit_done(ok);
	}
	pool_after_commit(ok);
	for (size_t i = 0; i < nchanged; i++)
		http_wake_batch(changed[i]);
	nchanged = 0;
}

/* ---- signals ---- */

static int got_term, got_chld; /* got_term counts SIGTERM/SIGINT */

static void on_signal(struct loop_watch *w, uint32_t events)
{
	(void)events;
	struct signalfd_siginfo si;
	while (read(w->fd, &si, sizeof si) == (ssize_t)sizeof si) {
		if (si.ssi_signo == SIGCHLD)
			got_chld = 1;
		else {
			log_info("signal", "signo=%u name=%s", si.ssi_signo, strsignal((int)si.ssi_signo));
			got_term++;
		}
	}
}

/* A SIGTERM or SIGINT came before the server served anything: nothing to
 * drain or stop. It ends by that signal, as a program that does not handle
 * it would (a shell shows status 128 + N; systemd counts it a clean stop). */
static __attribute__((noreturn)) void stopped_while_starting(int sigfd)
{
	struct signalfd_siginfo si;
	int signo = read(sigfd, &si, sizeof si) == (ssize_t)sizeof si ? (int)si.ssi_signo : SIGTERM;
	log_info("signal", "signo=%d name=%s", signo, strsignal(signo));
	log_info("exit", "signal=%d msg=\"stopped while starting\"", signo);
	signal(signo, SIG_DFL);
	sigset_t one;
	sigemptyset(&one);
	sigaddset(&one, signo);
	raise(signo); /* pending until unblocked, then delivered */
	sigprocmask(SIG_UNBLOCK, &one, NULL);
	_exit(128 + signo); /* not reached */
}

static void raise_fd_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static unsigned connection_limit(void)
{
	struct rlimit rl;
	unsigned limit = 10000;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
	    rl.rlim_cur < (rlim_t)limit + 256)
		limit = rl.rlim_cur > 512 ? (unsigned)rl.rlim_cur - 256 : 256;
	return limit;
}

int main(int argc, char **argv)
{
	struct config cfg;
	if (configure(&cfg, argc, argv) < 0)
		return 2;
	if (auth_init(cfg.token_file, cfg.protect_metrics) < 0 ||
	    auth_check_listen(cfg.listen, cfg.insecure_listen) < 0)
		return 2;
	signal(SIGPIPE, SIG_IGN);
	/* A file size limit (ulimit -f) is a write error for SQLite to report,
	 * not a reason to die. */
	signal(SIGXFSZ, SIG_IGN);
	raise_fd_limit();
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigprocmask(SIG_BLOCK, &mask, NULL);

	const char *wpath = worker_path(cfg.worker);
	log_info("start", "pid=%d db=\"%s\" workers=%ld max_tasks_per_child=%ld sync=%s worker=\"%s\"",
		 (int)getpid(), cfg.db, cfg.workers, cfg.max_tasks, cfg.sync, wpath);
	for (int i = 0; i < cfg.nwargs; i += 2) {
		char v[1024]; /* logfmt: the value's own quotes become \" */
		size_t n = 0;
		for (const char *c = cfg.wargs[i + 1]; *c && n < sizeof v - 3; c++) {
			if (*c == '"' || *c == '\\')
				v[n++] = '\\';
			v[n++] = *c;
		}
		v[n] = '\0';
		log_info("extension", "kind=%s value=\"%s\"", cfg.wargs[i] + 2, v);
	}
	/* The catalogue runs plugins' code (their constructors and
	 * forkpool_plugin()), which may hang: bounded by --start-timeout, and
	 * a SIGTERM or SIGINT meanwhile (not the --describe run's SIGCHLD)
	 * stops the server at once. */
	sigset_t stop;
	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	int stopfd = signalfd(-1, &stop, SFD_NONBLOCK | SFD_CLOEXEC);
	if (loop_init() < 0 || stopfd < 0)
		return 1;
	int rc = catalog_load_with(wpath, cfg.wargs,
				   &(struct catalog_limits){
				       .timeout_ms = (int64_t)(cfg.start_timeout * 1000), .stop_fd = stopfd});
	if (rc == CATALOG_STOPPED)
		stopped_while_starting(stopfd);
	close(stopfd);
	if (rc < 0)
		return 1;
	struct store *store = store_open(cfg.db, !strcmp(cfg.sync, "full"));
	if (!store)
		return 1;
	struct loop_watch sig = {.fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC), .fn = on_signal};
	if (sig.fd < 0 || loop_add(&sig, EPOLLIN) < 0)
		return 1;
	metrics_init(store, cfg.db);
	if (retention_init(store, cfg.result_ttl_ms) < 0)
		return 1;
	api_init(&(struct api_config){.store = store, .workers = (int)cfg.workers, .changed = on_change,
				      .chunksize = cfg.chunksize, .default_timeout = cfg.default_timeout,
				      .max_items = cfg.max_items});
	struct pool_config pc = {.worker_path = wpath, .workers = (int)cfg.workers,
				 .max_tasks_per_child = cfg.max_tasks, .worker_args = cfg.wargs,
				 .max_memory_mb = cfg.max_memory,
				 .start_timeout_ms = (int64_t)(cfg.start_timeout * 1000)};
	if (pool_start(store, &pc, on_change) < 0) {
		log_error("pool", "msg=\"no worker could be started\"");
		return 1;
	}
	http_set_idle_timeout((unsigned)cfg.idle_timeout);
	unsigned conns = cfg.max_connections > 0 ? (unsigned)cfg.max_connections : connection_limit();
	if (http_start(cfg.listen, cfg.max_body, conns, api_handle) < 0) {
		pool_stop();
		return 1;
	}

	/* SIGTERM starts the grace period: no new batches (503), no new
	 * chunks; running ones may finish until it ends, or until a second
	 * signal. */
	int64_t grace_end = -1;
	for (;;) {
		if (got_term && grace_end < 0) {
			grace_end = now_mono_ms() + (int64_t)(cfg.grace * 1000);
			log_info("drain", "grace_s=%g busy_workers=%d", cfg.grace, pool_busy());
			api_shutting_down();
			pool_drain();
		}
		if (got_term && (got_term > 1 || pool_busy() == 0 || now_mono_ms() >= grace_end))
			break;
		int64_t next = http_tick(), pnext = pool_tick();
		int64_t rnext = retention_tick();
		if (rnext >= 0 && (next < 0 || rnext < next))
			next = rnext;
		if (pnext >= 0 && (next < 0 || pnext < next))
			next = pnext;
		if (grace_end >= 0 && (next < 0 || grace_end < next))
			next = grace_end;
		int timeout = -1;
		if (http_pending() || store_dirty(store) || got_chld)
			timeout = 0;
		else if (next >= 0) {
			int64_t d = next - now_mono_ms();
			timeout = d < 0 ? 0 : d > 60000 ? 60000 : (int)d;
		}
		if (loop_once(timeout) < 0) {
			log_error("epoll_wait", "msg=\"%s\"", strerror(errno));
			break;
		}
		if (got_chld) {
			got_chld = 0;
			pool_reap();
		}
		store_read_begin(store); /* until the turn's first write */
		if (http_pending())
			http_run();
		/* One commit a turn holds the turn's results, submissions and
		 * claims. A chunk may go out before the commit that holds its
		 * claim (and even its batch): if that commit fails, the pool
		 * replays its writes later, and the results of a batch that was
		 * rolled back update nothing; the client was told 503. */
		pool_dispatch();
		/* Results already sent go in this commit too: a single-item
		 * call then costs one commit, not two (its worker usually runs
		 * as soon as the chunk wakes it, before this turn commits). */
		if (pool_collect())
			pool_dispatch();
		commit(store);
		if (http_pending())
			http_run();
		store_read_end(store);
	}

	log_info("shutdown", "busy_workers=%d msg=\"stopping: waking long-polls; stopping workers; "
			     "unfinished items go back to pending\"",
		 pool_busy());
	api_shutting_down();
	commit(store);
	http_quiesce();
	http_run();
	pool_stop();
	commit(store);
	http_stop();
	retention_free(); /* its statements, before the connection closes */
	store_close(store);
	catalog_free();
	metrics_free();
	auth_free();
	free(changed);
	log_info("exit", "status=0");
	return 0;
}
