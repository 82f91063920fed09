/* http.h - the HTTP edge: libmicrohttpd in external-epoll mode on the one
 * loop, request bodies, JSON replies and errors, and parked requests.
 *
 * A handler is called once a request's body is complete. It answers with
 * http_reply/http_error, or parks the request: the connection is suspended
 * (no thread, no busy loop) until http_wake_batch finds it ready, its deadline
 * passes, the client goes away, the turn's commit ends (http_park_commit) or
 * the server shuts down. Then the handler is called again, with http_woken
 * saying why, and must answer. */
#ifndef FORKPOOL_HTTP_H
#define FORKPOOL_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

struct http_req;
typedef void (*http_handler)(struct http_req *r);

enum http_wake {
	WAKE_NONE,     /* first call */
	WAKE_READY,    /* the ready check said yes */
	WAKE_TIMEOUT,  /* the deadline passed */
	WAKE_GONE,     /* the client hung up (any answer is thrown away) */
	WAKE_SHUTDOWN, /* the server is stopping */
	WAKE_COMMIT,   /* the turn's commit ended; see http_commit_ok */
};

/* Starts listening on HOST:PORT ([v6]:port allowed; port 0 picks one) and logs
 * event=listen addr=HOST:PORT. 0, or -1 (logged). */
int http_start(const char *listen, size_t max_body, unsigned conn_limit, http_handler h);
/* Lets libmicrohttpd do its work (call when its fd is ready, or after
 * requests were woken). */
void http_run(void);
/* Wakes parked requests whose deadline passed; returns the monotonic ms of
 * the next deadline (a parked request or libmicrohttpd's own), or -1. */
int64_t http_tick(void);
/* Whether libmicrohttpd has work (its fd was ready or requests were woken). */
int http_pending(void);
/* Open connections (as libmicrohttpd counts them), and of those the requests
 * parked (long-polls, idle streams) and the streamed answers not yet ended. */
struct http_counts {
	unsigned connections;
	int parked, streams;
};
void http_counts(struct http_counts *c);
/* Stops accepting; wakes every parked request with WAKE_SHUTDOWN. */
void http_quiesce(void);
void http_stop(void);

/* The request. The path is as sent, up to any '?' (not percent-decoded:
 * what is routed is what the client wrote); query keys and values are
 * decoded. */
const char *http_method(const struct http_req *r);
const char *http_path(const struct http_req *r);
/* A query parameter's value: NULL when it is absent, "" when it has none
 * (?key is ?key=). */
const char *http_query(const struct http_req *r, const char *key);
/* Checks the query against allowed (a NULL-terminated list of at most 64
 * names): NULL when every parameter is one of them, given once, without a
 * NUL byte; else the first that is not, with *fault saying why. */
enum http_query_fault {
	HTTP_QUERY_OK,
	HTTP_QUERY_UNKNOWN,  /* not in allowed */
	HTTP_QUERY_REPEATED, /* given more than once */
	HTTP_QUERY_NUL,	     /* its name or value holds a NUL byte (%00); the name is cut there */
};
const char *http_query_check(const struct http_req *r, const char *const *allowed,
			     enum http_query_fault *fault);
const char *http_header(const struct http_req *r, const char *key);
const char *http_body(const struct http_req *r, size_t *len);
enum http_wake http_woken(const struct http_req *r);
/* Per-request space for the handler: freed with the request. */
void *http_data(struct http_req *r);
void http_set_data(struct http_req *r, void *data, void (*free_fn)(void *));

/* Answers. A JSON body; the buffer's memory is taken over (b is empty after). */
void http_reply(struct http_req *r, unsigned status, struct buf *b);
/* {"error": {"code": code, "message": ...}} */
__attribute__((format(printf, 4, 5))) void http_error(struct http_req *r, unsigned status,
						      const char *code, const char *fmt, ...);
/* A streamed answer (chunked): fill(r, out) is called whenever the client
 * can take more. It appends what is ready and returns 1 to go on, or 0 after
 * the last bytes. When it has nothing yet it parks the request (http_park,
 * from inside fill) and returns 1; once woken it is called again with
 * http_woken saying why. A client that goes away ends the stream without a
 * call. A HEAD request gets the headers alone, and fill is never called. */
typedef int (*http_fill_fn)(struct http_req *r, struct buf *out);
void http_stream(struct http_req *r, unsigned status, const char *content_type, http_fill_fn fill);
/* Streamed request bodies. The headers hook is called for each request once
 * its headers are in, before any of its body; it may answer at once, or call
 * http_sink so that the body goes to fn piece by piece as it arrives (not
 * held whole, and not bound by the body limit) instead of being collected.
 * Once fn has answered (an error), the rest of the body is read and dropped.
 * The handler is called as usual when the body has ended. */
typedef void (*http_sink_fn)(struct http_req *r, const char *data, size_t len);
void http_set_headers_hook(void (*fn)(struct http_req *r));
void http_sink(struct http_req *r, http_sink_fn fn);
int http_has_sink(const struct http_req *r);
/* Adds a header to the answer that follows (copied). */
void http_add_header(struct http_req *r, const char *name, const char *value);

/* Parking. ready(r) is asked when http_wake_batch(batch) is called;
 * deadline_ms is monotonic (< 0: none). */
void http_park(struct http_req *r, int64_t batch, int64_t deadline_ms, int (*ready)(struct http_req *));
void http_park_commit(struct http_req *r);
/* Parks until the turn's commit and then, if it took and ready(r) is not yet
 * true, on under batch as http_park would (the connection stays suspended):
 * the request is woken WAKE_COMMIT (the commit failed, or it was ready),
 * or later as by http_park; http_commit_ok(r) tells whether it committed. */
void http_park_commit_then(struct http_req *r, int64_t batch, int64_t deadline_ms,
			   int (*ready)(struct http_req *));
void http_wake_batch(int64_t batch);
/* Ends the turn's commit: wakes the requests parked by http_park_commit. */
void http_commit_done(int ok);
int http_commit_ok(const struct http_req *r);

/* Before http_start: close a connection that sends nothing and is sent
 * nothing for secs seconds (default 60; parked requests do not time out). */
void http_set_idle_timeout(unsigned secs);

#endif
