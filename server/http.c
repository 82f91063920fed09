/* http.c - the HTTP edge (see http.h).
 *
 * libmicrohttpd 0.9.75 runs without a thread of its own: its epoll fd sits in
 * the loop's set and http_run calls MHD_run. Sharp edges handled here: a
 * suspended connection never times out and never notices its client leaving,
 * so the loop watches every connection's socket for EPOLLRDHUP itself (struct
 * http_conn); MHD_stop_daemon with suspended connections aborts, so
 * http_quiesce resumes them all first; and the url it hands the handler is
 * percent-decoded, so the path is taken as sent, before that (on_uri). */
#include "http.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include "auth.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"

#define NBUCKETS 1024
#define MAX_HEADERS 4
/* MHD's memory per connection (request line, headers, the answer's headers;
 * bodies are copied out). Its default of 32 KiB is touched on every
 * connection: 16 KiB halves the cost of thousands of waiting clients. */
#define CONN_MEMORY (16 * 1024)

/* One per connection, from libmicrohttpd's notice that it opened to the one
 * that it closed. Its socket is in the loop's set for EPOLLRDHUP the whole
 * time, edge-triggered, so parking a request costs no system call of ours:
 * a watch added at each park and removed at each wake was two epoll_ctl per
 * long-poll, 4% of the server's time in W3 (perf). */
struct http_conn {
	struct loop_watch hup;
	struct http_req *parked; /* the request parked on it, if any */
	int gone;		 /* the client shut its side: it sends nothing more */
};

struct http_req {
	struct MHD_Connection *con; /* NULL until on_request's first call */
	struct http_conn *conn; /* set while parked */
	const char *method; /* owned by libmicrohttpd, valid for the request's life */
	struct buf body;
	size_t max_body;
	int too_big, answered;
	enum http_wake wake;
	/* parking */
	int parked, commit_wait, commit_ok;
	/* http_park_commit_then: parked under then_batch after the commit */
	int (*then_ready)(struct http_req *);
	int64_t then_batch, then_deadline_ms;
	int64_t batch, deadline_ms;
	int (*ready)(struct http_req *);
	struct http_req *prev, *next; /* in a bucket, or the commit list */
	http_sink_fn sink; /* takes the body as it arrives, instead of r->body */
	/* a streamed answer */
	http_fill_fn fill;
	struct buf sout; /* filled, not yet handed to MHD from sout_off on */
	size_t sout_off;
	int stream_end;
	/* answer */
	char *hdr_name[MAX_HEADERS], *hdr_value[MAX_HEADERS];
	int nhdr;
	void *data;
	void (*data_free)(void *);
	char path[]; /* as sent, before '?': not percent-decoded (see on_uri) */
};

static struct {
	struct MHD_Daemon *d;
	struct loop_watch watch;
	http_handler handler;
	size_t max_body;
	int ready; /* MHD has work */
	int quiescing;
	struct http_req *buckets[NBUCKETS];
	struct http_req *commit_list;
	int64_t next_deadline; /* earliest parked deadline, or -1 (may be stale-early) */
	int nparked;
	int nstreams; /* streamed answers not yet completed */
	void (*on_headers)(struct http_req *r);
} H;

static unsigned bucket_of(int64_t batch) { return (unsigned)((uint64_t)batch * 2654435761u) % NBUCKETS; }

static void unlink_parked(struct http_req *r)
{
	if (r->prev)
		r->prev->next = r->next;
	else if (r->commit_wait)
		H.commit_list = r->next;
	else
		H.buckets[bucket_of(r->batch)] = r->next;
	if (r->next)
		r->next->prev = r->prev;
	r->prev = r->next = NULL;
}

static void wake(struct http_req *r, enum http_wake why)
{
	if (!r->parked)
		return;
	unlink_parked(r);
	if (r->conn)
		r->conn->parked = NULL;
	r->conn = NULL;
	r->parked = 0;
	r->wake = why;
	H.nparked--;
	MHD_resume_connection(r->con);
	H.ready = 1;
}

static void on_hup(struct loop_watch *w, uint32_t events)
{
	(void)events;
	struct http_conn *c = w->arg;
	c->gone = 1;
	struct http_req *r = c->parked;
	if (!r)
		return; /* libmicrohttpd sees the end itself, in its next read */
	log_debug("client_gone", "url=\"%s\" msg=\"the client left a parked request\"", r->path);
	wake(r, WAKE_GONE);
}

static void on_connection(void *cls, struct MHD_Connection *con, void **socket_context,
			  enum MHD_ConnectionNotificationCode toe)
{
	(void)cls;
	struct http_conn *c = *socket_context;
	if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
		/* Before libmicrohttpd closes the socket (daemon.c), so the
		 * fd is still this connection's. */
		if (c) {
			if (c->parked) /* cannot happen: it ends requests first */
				c->parked->conn = NULL;
			loop_del(&c->hup);
			free(c);
		}
		*socket_context = NULL;
		return;
	}
	c = calloc(1, sizeof *c);
	if (!c)
		return; /* its parked requests will not notice their client leaving */
	const union MHD_ConnectionInfo *ci =
	    MHD_get_connection_info(con, MHD_CONNECTION_INFO_CONNECTION_FD);
	c->hup = (struct loop_watch){.fd = ci ? ci->connect_fd : -1, .fn = on_hup, .arg = c};
	if (c->hup.fd >= 0 && loop_add(&c->hup, EPOLLRDHUP | EPOLLET) < 0)
		c->hup.fd = -1;
	*socket_context = c;
}

/* Files r under batch, to be asked ready(r) when the batch changes. */
static void bucket_add(struct http_req *r, int64_t batch, int64_t deadline_ms,
		       int (*ready)(struct http_req *))
{
	r->batch = batch;
	r->deadline_ms = deadline_ms;
	r->ready = ready;
	unsigned b = bucket_of(batch);
	r->prev = NULL;
	r->next = H.buckets[b];
	if (r->next)
		r->next->prev = r;
	H.buckets[b] = r;
	if (deadline_ms >= 0 && (H.next_deadline < 0 || deadline_ms < H.next_deadline))
		H.next_deadline = deadline_ms;
}

static void park(struct http_req *r)
{
	r->parked = 1;
	H.nparked++;
	MHD_suspend_connection(r->con);
	const union MHD_ConnectionInfo *ci =
	    MHD_get_connection_info(r->con, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	r->conn = ci ? ci->socket_context : NULL;
	if (!r->conn)
		return;
	r->conn->parked = r;
	/* The client left before this park: its one edge has passed, so ask
	 * for it again (the wake comes from the loop, not from inside the
	 * handler that is parking). */
	if (r->conn->gone)
		loop_rearm(&r->conn->hup);
}

void http_park(struct http_req *r, int64_t batch, int64_t deadline_ms, int (*ready)(struct http_req *))
{
	if (H.quiescing) {
		r->wake = WAKE_SHUTDOWN;
		if (!r->fill)
			H.handler(r);
		return; /* a stream's reader calls fill again at once */
	}
	bucket_add(r, batch, deadline_ms, ready);
	log_debug("parked", "url=\"%s\" batch=%lld", r->path, (long long)batch);
	park(r);
}

/* MHD asks for more of a streamed body. Hands over what is filled; when
 * nothing is, asks the handler's fill for more, which either adds some, ends
 * the stream, or parks the request (the connection is suspended until a wake,
 * so returning 0 does not make MHD spin). */
static ssize_t stream_reader(void *cls, uint64_t pos, char *out, size_t max)
{
	(void)pos;
	struct http_req *r = cls;
	for (;;) {
		if (r->sout_off < r->sout.len) {
			size_t n = r->sout.len - r->sout_off;
			if (n > max)
				n = max;
			memcpy(out, r->sout.data + r->sout_off, n);
			r->sout_off += n;
			return (ssize_t)n;
		}
		if (r->stream_end)
			return MHD_CONTENT_READER_END_OF_STREAM;
		if (r->wake == WAKE_GONE)
			return MHD_CONTENT_READER_END_WITH_ERROR;
		buf_reset(&r->sout);
		r->sout_off = 0;
		enum http_wake why = r->wake;
		r->stream_end = !r->fill(r, &r->sout);
		if (r->parked)
			return 0;
		/* A park while quiescing leaves WAKE_SHUTDOWN for the next fill
		 * (http_park): keep it, so that fill writes the stream's end. */
		if (r->wake == why)
			r->wake = WAKE_NONE;
		else if (r->wake == WAKE_SHUTDOWN)
			continue;
		if (!r->sout.len && !r->stream_end) {
			log_error("http_stream", "url=\"%s\" msg=\"fill gave nothing and did not park\"", r->path);
			return MHD_CONTENT_READER_END_WITH_ERROR;
		}
	}
}

void http_stream(struct http_req *r, unsigned status, const char *content_type, http_fill_fn fill)
{
	if (r->answered)
		return;
	r->answered = 1;
	metrics_http(status);
	/* HEAD: GET's headers and no body. libmicrohttpd 0.9.75 still ends a
	 * chunked answer to HEAD with the last chunk ("0\r\n\r\n"), which the
	 * connection's next request would read as its status line; and an
	 * answer of unknown size that is not chunked closes the connection.
	 * So an empty answer, which it sends as headers alone (with a
	 * Content-Length of 0: it has no way to leave the length out), and no
	 * stream: nothing to fill, park or count. */
	int head = !strcmp(r->method, "HEAD");
	if (!head) {
		r->fill = fill;
		H.nstreams++;
	}
	struct MHD_Response *resp =
	    head ? MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT)
		 : MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, stream_reader, r, NULL);
	if (!resp)
		return;
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
	/* Proxies such as nginx would otherwise hold the stream back. */
	MHD_add_response_header(resp, "X-Accel-Buffering", "no");
	for (int i = 0; i < r->nhdr; i++)
		MHD_add_response_header(resp, r->hdr_name[i], r->hdr_value[i]);
	if (MHD_queue_response(r->con, status, resp) != MHD_YES)
		log_warn("http_queue", "status=%u url=\"%s\"", status, r->path);
	MHD_destroy_response(resp);
}

void http_park_commit(struct http_req *r)
{
	r->then_ready = NULL;
	r->commit_wait = 1;
	r->deadline_ms = -1;
	r->prev = NULL;
	r->next = H.commit_list;
	if (r->next)
		r->next->prev = r;
	H.commit_list = r;
	park(r);
}

void http_park_commit_then(struct http_req *r, int64_t batch, int64_t deadline_ms,
			   int (*ready)(struct http_req *))
{
	http_park_commit(r);
	r->then_ready = ready;
	r->then_batch = batch;
	r->then_deadline_ms = deadline_ms;
}

void http_wake_batch(int64_t batch)
{
	struct http_req *r = H.buckets[bucket_of(batch)], *next;
	for (; r; r = next) {
		next = r->next;
		if (r->batch == batch && r->ready(r))
			wake(r, WAKE_READY);
	}
}

void http_commit_done(int ok)
{
	while (H.commit_list) {
		struct http_req *r = H.commit_list;
		r->commit_ok = ok;
		if (ok && r->then_ready && !H.quiescing && !r->then_ready(r)) {
			/* Committed, and waiting on: it stays suspended, under its
			 * batch (a resume and a suspend saved, four epoll_ctl). */
			unlink_parked(r);
			r->commit_wait = 0;
			bucket_add(r, r->then_batch, r->then_deadline_ms, r->then_ready);
			continue;
		}
		wake(r, WAKE_COMMIT);
		r->commit_wait = 0;
	}
}

int http_commit_ok(const struct http_req *r) { return r->commit_ok; }

int64_t http_tick(void)
{
	int64_t now = now_mono_ms();
	if (H.next_deadline >= 0 && H.next_deadline <= now) {
		H.next_deadline = -1;
		for (unsigned b = 0; b < NBUCKETS; b++) {
			struct http_req *r = H.buckets[b], *next;
			for (; r; r = next) {
				next = r->next;
				if (r->deadline_ms < 0)
					continue;
				if (r->deadline_ms <= now)
					wake(r, WAKE_TIMEOUT);
				else if (H.next_deadline < 0 || r->deadline_ms < H.next_deadline)
					H.next_deadline = r->deadline_ms;
			}
		}
	}
	int64_t next = H.next_deadline;
	MHD_UNSIGNED_LONG_LONG t;
	if (H.d && MHD_get_timeout(H.d, &t) == MHD_YES) {
		/* A zero timeout means MHD has work that no fd will announce
		 * (a resumed connection, buffered input): run it this turn. */
		if (t == 0)
			H.ready = 1;
		int64_t at = now + (int64_t)t;
		if (next < 0 || at < next)
			next = at;
	}
	return next;
}

int http_pending(void) { return H.ready; }

/* libmicrohttpd stops listening at the connection limit and listens again
 * only in the run after one that closed a connection; nothing wakes the
 * loop for that run, so a client waiting in the backlog would wait until
 * some other event. */
static unsigned conn_limit_, at_limit;

static unsigned open_connections(void)
{
	const union MHD_DaemonInfo *i = MHD_get_daemon_info(H.d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
	return i ? i->num_connections : 0;
}

void http_counts(struct http_counts *c)
{
	c->connections = H.d ? open_connections() : 0;
	c->parked = H.nparked;
	c->streams = H.nstreams;
}

/* Set when libmicrohttpd ends a request during a run. It closes the socket
 * of a connection it ended only in a later run's clean-up, and nothing may
 * announce that run: with streams and long-polls whose clients had left,
 * their sockets stayed open until some other request came. */
static int ended_in_run;

void http_run(void)
{
	H.ready = 0;
	if (!H.d)
		return;
	ended_in_run = 0;
	MHD_run(H.d);
	if (ended_in_run)
		H.ready = 1; /* once more, to close what it ended */
	unsigned n = open_connections();
	if (at_limit && n < conn_limit_)
		H.ready = 1; /* run once more: it listens again */
	at_limit = n >= conn_limit_;
}

static void on_mhd(struct loop_watch *w, uint32_t events)
{
	(void)w;
	(void)events;
	H.ready = 1;
}

/* Request accessors. */
const char *http_method(const struct http_req *r) { return r->method; }
const char *http_path(const struct http_req *r) { return r->path; }
const char *http_query(const struct http_req *r, const char *key)
{
	/* MHD gives ?key (no "=") a NULL value, which MHD_lookup_connection_value
	 * cannot tell from an absent key: ?chunksize alone was ignored. */
	const char *v = NULL;
	if (MHD_lookup_connection_value_n(r->con, MHD_GET_ARGUMENT_KIND, key, strlen(key), &v, NULL) !=
	    MHD_YES)
		return NULL;
	return v ? v : "";
}
struct query_scan {
	const char *const *allowed;
	uint64_t seen; /* bit i: allowed[i] was given */
	const char *name;
	enum http_query_fault fault;
};

static enum MHD_Result scan_query(void *cls, enum MHD_ValueKind kind, const char *key,
				  size_t key_size, const char *value, size_t value_size)
{
	(void)kind;
	struct query_scan *q = cls;
	q->name = key;
	/* %00 decodes to a NUL byte, where every reader of the C string would
	 * stop: chunksize=1%00 would be read as 1, wait%00x=5 as wait. */
	if (strlen(key) != key_size) {
		q->fault = HTTP_QUERY_NUL;
		return MHD_NO;
	}
	for (int i = 0; q->allowed[i]; i++) {
		if (strcmp(q->allowed[i], key))
			continue;
		/* Only the first would be read (http_query): the others
		 * would be dropped unseen. */
		if (q->seen & (UINT64_C(1) << i)) {
			q->fault = HTTP_QUERY_REPEATED;
			return MHD_NO;
		}
		q->seen |= UINT64_C(1) << i;
		if (value && strlen(value) != value_size) {
			q->fault = HTTP_QUERY_NUL;
			return MHD_NO;
		}
		return MHD_YES;
	}
	q->fault = HTTP_QUERY_UNKNOWN;
	return MHD_NO;
}

const char *http_query_check(const struct http_req *r, const char *const *allowed,
			     enum http_query_fault *fault)
{
	struct query_scan q = {.allowed = allowed};
	for (int i = 0; allowed[i]; i++)
		assert(i < 64); /* a bit each in q.seen */
	MHD_get_connection_values_n(r->con, MHD_GET_ARGUMENT_KIND, scan_query, &q);
	*fault = q.fault;
	return q.fault ? q.name : NULL;
}

const char *http_header(const struct http_req *r, const char *key)
{
	return MHD_lookup_connection_value(r->con, MHD_HEADER_KIND, key);
}
const char *http_body(const struct http_req *r, size_t *len)
{
	*len = r->body.len;
	return r->body.data ? r->body.data : "";
}
enum http_wake http_woken(const struct http_req *r) { return r->wake; }
void *http_data(struct http_req *r) { return r->data; }
void http_set_data(struct http_req *r, void *data, void (*free_fn)(void *))
{
	if (r->data_free)
		r->data_free(r->data);
	r->data = data;
	r->data_free = free_fn;
}

void http_add_header(struct http_req *r, const char *name, const char *value)
{
	if (r->nhdr == MAX_HEADERS)
		return;
	r->hdr_name[r->nhdr] = strdup(name);
	r->hdr_value[r->nhdr] = strdup(value);
	r->nhdr++;
}

void http_reply(struct http_req *r, unsigned status, struct buf *b)
{
	if (r->answered)
		return;
	r->answered = 1;
	buf_addc(b, '\n');
	metrics_http(status);
	size_t len;
	char *data = buf_steal(b, &len);
	struct MHD_Response *resp = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(data);
		return;
	}
	int typed = 0; /* a handler may give its own type (/metrics is text) */
	for (int i = 0; i < r->nhdr; i++)
		typed |= !strcasecmp(r->hdr_name[i], "Content-Type");
	if (!typed)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
	for (int i = 0; i < r->nhdr; i++)
		MHD_add_response_header(resp, r->hdr_name[i], r->hdr_value[i]);
	if (MHD_queue_response(r->con, status, resp) != MHD_YES)
		log_warn("http_queue", "status=%u url=\"%s\"", status, r->path);
	MHD_destroy_response(resp);
}

void http_error(struct http_req *r, unsigned status, const char *code, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	struct buf b = {0};
	buf_adds(&b, "{\"error\":{\"code\":");
	buf_json_cstr(&b, code);
	buf_adds(&b, ",\"message\":");
	buf_json_cstr(&b, msg);
	buf_adds(&b, "}}");
	http_reply(r, status, &b);
}

static void req_free(struct http_req *r)
{
	if (r->parked) { /* cannot happen: MHD does not end suspended connections */
		unlink_parked(r);
		if (r->conn)
			r->conn->parked = NULL;
		H.nparked--;
	}
	buf_free(&r->body);
	buf_free(&r->sout);
	if (r->fill)
		H.nstreams--;
	for (int i = 0; i < r->nhdr; i++) {
		free(r->hdr_name[i]);
		free(r->hdr_value[i]);
	}
	if (r->data_free)
		r->data_free(r->data);
	free(r);
}

/* Each request is made here, from its URI as the client sent it: the url
 * that libmicrohttpd gives on_request is percent-decoded in place, so that
 * /v1/batches/1%00 would be batch 1 ("1" and a NUL) and %2f a '/', and the
 * path the API routes on (and auth checks) would not be the one sent. No
 * API path has a '%' in it, so with the path as sent, any escape is simply
 * no route: a 404. Only the path is kept as sent; the query's keys and
 * values are still decoded, by libmicrohttpd, as they must be. What this
 * returns is the request's con_cls; libmicrohttpd calls on_completed for it
 * even when the request never reaches on_request (a head refused as too
 * large, a client gone). */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *con)
{
	(void)cls;
	(void)con;
	size_t n = strcspn(uri, "?");
	struct http_req *r = calloc(1, sizeof *r + n + 1);
	if (r)
		memcpy(r->path, uri, n);
	return r;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *con, const char *url,
				  const char *method, const char *version, const char *upload,
				  size_t *upload_size, void **con_cls)
{
	(void)cls;
	(void)url; /* decoded: r->path is the path as sent */
	(void)version;
	struct http_req *r = *con_cls;
	if (!r)
		return MHD_NO; /* on_uri could not allocate it */
	if (!r->con) {
		r->con = con;
		r->method = method;
		if (auth_refuse(r))
			return MHD_YES; /* 401 before a byte of the body is read */
		if (H.on_headers)
			H.on_headers(r); /* may answer, or take the body as it comes */
		const char *cl = MHD_lookup_connection_value(con, MHD_HEADER_KIND,
							     MHD_HTTP_HEADER_CONTENT_LENGTH);
		if (!r->answered && !r->sink && cl && strtoull(cl, NULL, 10) > H.max_body) {
			/* Refuse before reading a byte of it. */
			http_error(r, MHD_HTTP_CONTENT_TOO_LARGE, "payload_too_large",
				   "the body is %s bytes; the limit (--max-body) is %zu", cl, H.max_body);
		}
		return MHD_YES;
	}
	if (*upload_size) {
		if (r->sink) {
			if (!r->answered)
				r->sink(r, upload, *upload_size);
		} else if (!r->answered && !r->too_big) {
			if (r->body.len + *upload_size > H.max_body) {
				r->too_big = 1;
				buf_free(&r->body);
			} else {
				buf_add(&r->body, upload, *upload_size);
			}
		}
		*upload_size = 0;
		return MHD_YES;
	}
	if (r->answered)
		return MHD_YES;
	if (r->too_big) {
		http_error(r, MHD_HTTP_CONTENT_TOO_LARGE, "payload_too_large",
			   "the body is over the limit (--max-body) of %zu bytes", H.max_body);
		return MHD_YES;
	}
	H.handler(r);
	if (!r->answered && !r->parked) {
		log_error("http_unanswered", "method=%s url=\"%s\"", method, r->path);
		http_error(r, 500, "internal", "the server did not answer this request");
	}
	return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *con, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	(void)cls;
	(void)con;
	struct http_req *r = *con_cls;
	ended_in_run = 1;
	if (r && r->fill)
		log_debug("stream_end", "url=\"%s\" complete=%s", r->path,
			  toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "true" : "false");
	if (r)
		req_free(r);
	*con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	char msg[512];
	vsnprintf(msg, sizeof msg, fmt, ap);
	size_t n = strlen(msg);
	while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
		msg[--n] = '\0';
	for (char *p = msg; *p; p++)
		if (*p == '"')
			*p = '\'';
	log_warn("http_lib", "msg=\"%s\"", msg);
}

void http_set_headers_hook(void (*fn)(struct http_req *r)) { H.on_headers = fn; }
void http_sink(struct http_req *r, http_sink_fn fn) { r->sink = fn; }
int http_has_sink(const struct http_req *r) { return r->sink != NULL; }

static unsigned idle_timeout_s = 60;

void http_set_idle_timeout(unsigned secs) { idle_timeout_s = secs; }

int http_start(const char *listen, size_t max_body, unsigned conn_limit, http_handler h)
{
	char host[256];
	const char *colon = strrchr(listen, ':');
	if (!colon || colon == listen || strlen(listen) >= sizeof host) {
		log_error("listen", "addr=\"%s\" msg=\"expected HOST:PORT\"", listen);
		return -1;
	}
	const char *hs = listen, *he = colon;
	if (*hs == '[' && he[-1] == ']') {
		hs++;
		he--;
	}
	memcpy(host, hs, (size_t)(he - hs));
	host[he - hs] = '\0';
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_NUMERICSERV | AI_PASSIVE}, *ai;
	int rc = getaddrinfo(host, colon + 1, &hints, &ai);
	if (rc != 0) {
		log_error("listen", "addr=\"%s\" msg=\"%s\"", listen, gai_strerror(rc));
		return -1;
	}
	H.handler = h;
	H.max_body = max_body;
	conn_limit_ = conn_limit;
	H.next_deadline = -1;
	unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
	if (ai->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	H.d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, NULL, MHD_OPTION_EXTERNAL_LOGGER, mhd_log,
			       NULL, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
			       MHD_OPTION_CONNECTION_TIMEOUT, idle_timeout_s, MHD_OPTION_CONNECTION_LIMIT,
			       conn_limit,
			       MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY,
			       MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
			       MHD_OPTION_NOTIFY_CONNECTION, on_connection, NULL,
			       MHD_OPTION_URI_LOG_CALLBACK, on_uri, NULL, MHD_OPTION_END);
	freeaddrinfo(ai);
	if (!H.d) {
		log_error("listen", "addr=\"%s\" msg=\"cannot listen there (in use, or not an address of this machine?)\"",
			  listen);
		return -1;
	}
	const union MHD_DaemonInfo *ei = MHD_get_daemon_info(H.d, MHD_DAEMON_INFO_EPOLL_FD);
	const union MHD_DaemonInfo *pi = MHD_get_daemon_info(H.d, MHD_DAEMON_INFO_BIND_PORT);
	H.watch = (struct loop_watch){.fd = ei ? ei->epoll_fd : -1, .fn = on_mhd};
	if (H.watch.fd < 0 || loop_add(&H.watch, EPOLLIN) < 0) {
		MHD_stop_daemon(H.d);
		H.d = NULL;
		return -1;
	}
	log_info("listen", "addr=%s%s%s:%u", strchr(host, ':') ? "[" : "", host,
		 strchr(host, ':') ? "]" : "", pi ? (unsigned)pi->port : 0);
	H.ready = 1;
	return 0;
}

void http_quiesce(void)
{
	H.quiescing = 1;
	for (unsigned b = 0; b < NBUCKETS; b++)
		while (H.buckets[b])
			wake(H.buckets[b], WAKE_SHUTDOWN);
	http_commit_done(0);
}

void http_stop(void)
{
	if (!H.d)
		return;
	http_quiesce();
	MHD_run(H.d); /* deliver the answers of the woken requests */
	/* Streams end with a last line; give them a moment to get it out. */
	for (int i = 0; i < 200 && H.nstreams > 0; i++) {
		struct pollfd pfd = {.fd = H.watch.fd, .events = POLLIN};
		poll(&pfd, 1, 10);
		MHD_run(H.d);
	}
	loop_del(&H.watch);
	MHD_stop_daemon(H.d);
	H.d = NULL;
}
