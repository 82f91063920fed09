/* client.h - what the API tests use to drive the real server: start
 * build/forkpoold on a free loopback port with a temporary database, talk to
 * it with libcurl, stop it. A helper that fails ends the test with FAILF.
 *
 *   struct server s;
 *   server_start(&s, "--workers", "2", NULL);
 *   struct resp r = req(&s, "POST", "/v1/batches", "{\"task\":\"square\",...}");
 *   CHECK_INT(r.status, 201);
 *   ...
 *   server_stop(&s);          (the harness kills it anyway when a test ends)
 */
#ifndef FORKPOOL_TEST_CLIENT_H
#define FORKPOOL_TEST_CLIENT_H

#include <jansson.h>
#include <stdint.h>
#include <sys/types.h>

struct server {
	pid_t pid;
	int port;
	char db[256];  /* the database path (relative to the test's directory) */
	char log[256]; /* the server's stderr */
	char base[64]; /* http://127.0.0.1:PORT */
};

struct resp {
	long status;
	char *body;    /* NUL-terminated */
	char *headers; /* the raw header block, NUL-terminated */
	json_t *json;  /* the body parsed, or NULL (e.g. an integer past 64 bits) */
};

/* Starts the server with --listen 127.0.0.1:0 --db server.db (unless args give
 * --db) and the extra arguments (NULL-terminated), and waits until it
 * listens. The environment is the test's, with FORKPOOL_GRACE=0 unless the
 * test set it (so that server_stop does not wait for running items). */
__attribute__((sentinel)) void server_start(struct server *s, ...);
/* Same, with the arguments as an array. */
void server_startv(struct server *s, const char *const *args);
/* SIGTERM, then waits (deadline 20 s); returns the exit status as waitpid's. */
int server_stop(struct server *s);
/* SIGKILL, and reaps it. */
void server_kill9(struct server *s);
/* Counts the lines of the server's log holding every given word. */
__attribute__((sentinel)) int server_log_count(const struct server *s, ...);
/* The same, once it reaches want or 10 s have passed: for a line the server
 * writes after the answer the test saw (a worker's exit is logged when it
 * is reaped, which may come after the next batch is done). */
__attribute__((sentinel)) int server_log_wait(const struct server *s, int want, ...);
/* The server's log, malloc'd (for messages). */
char *server_log_text(const struct server *s);

/* One request. body may be NULL; a non-NULL body is sent with
 * Content-Type: application/json unless headers set another. headers is a
 * NULL-terminated array of "Name: value" lines, or NULL. */
struct resp reqh(const struct server *s, const char *method, const char *path, const char *body,
		 const char *const *headers);
struct resp req(const struct server *s, const char *method, const char *path, const char *body);
void resp_free(struct resp *r);
/* The value of a response header (case-insensitive name), malloc'd, or NULL. */
char *resp_header(const struct resp *r, const char *name);

/* Submits a batch (expects 201) and returns its id. */
int64_t submit(const struct server *s, const char *body);
/* Waits (long-polls, deadline secs) until the batch is done; returns the
 * batch object. */
json_t *wait_batch(const struct server *s, int64_t id, int secs);
/* GET /v1/batches/{id}/results in submission order, as parsed JSON. */
json_t *results(const struct server *s, int64_t id);
/* The raw text of the results of a done batch, e.g. for exact big integers. */
struct resp results_raw(const struct server *s, int64_t id, const char *query);

/* One number from GET /metrics: the value of the line "key value" (key with
 * its labels, e.g. forkpool_items{state="finished"}); FAILF if absent. */
double server_metric(const struct server *s, const char *key);

/* Small JSON getters that FAILF when the path is absent. */
json_int_t jint(const json_t *o, const char *key);
const char *jstr(const json_t *o, const char *key);
json_t *jget(const json_t *o, const char *key);

#endif

/* A raw HTTP/1.0 connection, for streams and many concurrent requests: the
 * answer's body is read as it comes (no chunked coding under HTTP/1.0). */
struct rawconn {
	int fd;
	int status; /* of the answer, once raw_headers read it */
	char buf[65536];
	size_t len;
};
/* A connected socket to the server. */
int raw_connect(const struct server *s);
/* Connects and sends a GET with the extra header lines (each ending in
 * "\r\n"; may be NULL). */
struct rawconn *raw_get(const struct server *s, const char *path, const char *headers);
/* Reads the status line and headers; returns the status. */
int raw_headers(struct rawconn *c, int64_t deadline_ms);
/* The next line of the body without its "\n" (malloc'd), or NULL at the end
 * of the answer. Fails the test at the deadline. */
char *raw_line(struct rawconn *c, int64_t deadline_ms);
void raw_close(struct rawconn *c);
/* The server's resident set size in KiB (from /proc). */
long server_rss_kib(const struct server *s);
