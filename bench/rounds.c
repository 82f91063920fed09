/* rounds.c - single-item round trips (W2, W3): POST /v1/batches?wait=5 with
 * one item, whose answer carries its result, over raw kept-alive HTTP/1.1
 * sockets on one epoll set; and W7, thousands of long-polls at once. A call costs the client one write and a read or
 * two; libcurl's multi interface cost about as much CPU as the server did
 * per call, on the same two cores. */
#include "bench.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"

#define WARMUP_CALLS 20
#define MAX_FAILURES 100
#define STALL_S      30.0 /* no answer at all for this long: give up */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

double latencies_pct(const struct latencies *l, double p)
{
	if (l->n <= 0)
		return -1;
	long k = (long)(p / 100.0 * (double)(l->n - 1) + 0.5);
	return l->ms[k < l->n ? k : l->n - 1];
}

void latencies_free(struct latencies *l)
{
	free(l->ms);
	l->ms = NULL;
	l->n = 0;
}

static void latencies_add(struct latencies *l, long *cap, double ms)
{
	if (l->n == *cap) {
		*cap = *cap ? *cap * 2 : 1024;
		l->ms = realloc(l->ms, (size_t)*cap * sizeof *l->ms);
		if (!l->ms)
			abort();
	}
	l->ms[l->n++] = ms;
}

struct conn {
	int fd;
	struct buf in;  /* the answer so far */
	double started; /* when its request went out */
	int busy;       /* a request is out */
	int timed;      /* its latency counts (not a warm-up call) */
};

/* A blocking connect, then non-blocking with Nagle off; the fd or -1. */
static int conn_open(const struct fpserver *s)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s->port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int one = 1;
	if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0 ||
	    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
		fprintf(stderr, "bench: connect to %s: %s\n", s->base, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

/* Writes a whole (small) request, waiting for room if the socket is full. */
static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
		if (k > 0) {
			p += k;
			n -= (size_t)k;
		} else if (k < 0 && errno == EAGAIN) {
			struct pollfd pf = {.fd = fd, .events = POLLOUT};
			poll(&pf, 1, 1000);
		} else if (k < 0 && errno != EINTR) {
			return -1;
		}
	}
	return 0;
}

/* A single-item call of task with ?wait=5, or (task NULL) GET /healthz. */
static int conn_send(struct conn *c, const char *task, long long i, int timed)
{
	char body[96], req[512];
	int n;
	if (task) {
		int bl = snprintf(body, sizeof body, "{\"task\":\"%s\",\"items\":[[%lld]]}", task, i);
		n = snprintf(req, sizeof req,
			     "POST /v1/batches?wait=5 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
			     "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
			     bl, body);
	} else {
		n = snprintf(req, sizeof req, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
	}
	buf_reset(&c->in);
	c->busy = 1;
	c->timed = timed;
	c->started = now_s();
	if (write_all(c->fd, req, (size_t)n) < 0) {
		fprintf(stderr, "bench: send: %s\n", strerror(errno));
		return -1;
	}
	return 0;
}

struct answer {
	int status, close;
	size_t body, len; /* the body: in.data[body .. body + len) */
};

/* Whether in holds a whole answer: 1 (a filled), 0 (not yet), -1 (one this
 * client cannot read: no Content-Length). */
static int answer_whole(const struct buf *in, struct answer *a)
{
	const char *p = in->data, *end = in->len ? memmem(p, in->len, "\r\n\r\n", 4) : NULL;
	if (!end)
		return 0;
	*a = (struct answer){.body = (size_t)(end + 4 - p)};
	if (sscanf(p, "HTTP/1.%*d %d", &a->status) != 1)
		return -1;
	int have_len = 0;
	for (const char *line = strstr(p, "\r\n") + 2; line < end; line = strstr(line, "\r\n") + 2) {
		if (!strncasecmp(line, "Content-Length:", 15)) {
			a->len = strtoul(line + 15, NULL, 10);
			have_len = 1;
		} else if (!strncasecmp(line, "Connection:", 11)) {
			const char *v = line + 11;
			while (*v == ' ')
				v++;
			a->close = !strncasecmp(v, "close", 5);
		}
	}
	if (!have_len)
		return -1;
	return in->len >= a->body + a->len;
}

/* Reads what the socket has into c->in: 1 when an answer is whole, 0 when
 * not yet, -1 on EOF or an error. */
static int conn_read(struct conn *c, struct answer *a)
{
	for (;;) {
		buf_reserve(&c->in, 16384);
		ssize_t k = read(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len - 1);
		if (k > 0) {
			c->in.len += (size_t)k;
			c->in.data[c->in.len] = '\0';
			continue;
		}
		if (k == 0) {
			fprintf(stderr, "bench: the server closed a connection mid-call\n");
			return -1;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN) {
			fprintf(stderr, "bench: read: %s\n", strerror(errno));
			return -1;
		}
		break;
	}
	int w = answer_whole(&c->in, a);
	if (w < 0)
		fprintf(stderr, "bench: an answer without Content-Length: %.200s\n", c->in.data);
	return w;
}

/* Calls on nconns connections: `calls` timed ones after `warmup` untimed ones
 * (calls > 0), or as many as fit in `seconds`. */
static int rounds(const struct fpserver *s, int nconns, const char *task, long calls, long warmup,
		  double seconds, struct latencies *out)
{
	memset(out, 0, sizeof *out);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct conn *cs = calloc((size_t)nconns, sizeof *cs);
	if (ep < 0 || !cs)
		abort();
	long long next = 0, failed = 0;
	long cap = 0;
	int rc = 0, busy = 0;
	double t0 = now_s(), deadline = seconds > 0 ? t0 + seconds : 0, last = t0, progress = t0;
	int started = warmup == 0; /* t0 is set when the first timed call goes out */
	for (int i = 0; i < nconns; i++)
		cs[i].fd = -1;
	for (int i = 0; i < nconns; i++) {
		cs[i].fd = conn_open(s);
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
		if (cs[i].fd < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev) < 0) {
			rc = -1;
			break;
		}
	}
	/* Whether another call may go out, and whether it is timed. */
#define MORE() (calls > 0 ? next < warmup + calls : now_s() < deadline)
	for (int i = 0; i < nconns && !rc && MORE(); i++, busy++) {
		rc = conn_send(&cs[i], task, next, next >= warmup);
		next++;
	}
	while (!rc && busy > 0) {
		struct epoll_event evs[64];
		int n = epoll_wait(ep, evs, 64, 1000);
		if (n < 0 && errno != EINTR) {
			rc = -1;
			break;
		}
		double now = now_s();
		if (n <= 0 && now - progress > STALL_S) {
			fprintf(stderr, "bench: no answer for %.0f s; %d calls outstanding\n", STALL_S, busy);
			rc = -1;
		}
		for (int e = 0; e < n && !rc; e++) {
			struct conn *c = evs[e].data.ptr;
			struct answer a;
			int w = conn_read(c, &a);
			if (w < 0) {
				rc = -1;
				break;
			}
			if (w == 0)
				continue;
			now = now_s();
			progress = now;
			c->busy = 0;
			busy--;
			const char *body = c->in.data + a.body;
			int ok = task ? a.status == 201 && memmem(body, a.len, "\"state\":\"finished\"", 18)
				      : a.status == 200 && memmem(body, a.len, "\"status\":\"ok\"", 13);
			if (ok) {
				if (c->timed) {
					latencies_add(out, &cap, (now - c->started) * 1000);
					last = now;
				}
			} else if (!failed++) {
				fprintf(stderr, "bench: a call failed: status %d: %.300s\n", a.status, body);
			}
			if (failed >= MAX_FAILURES)
				break;
			if (a.close) { /* the server ended this connection: a new one */
				epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
				close(c->fd);
				c->fd = conn_open(s);
				struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
				if (c->fd < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
					rc = -1;
					break;
				}
			}
			if (!MORE())
				continue;
			if (!started && next >= warmup) {
				started = 1;
				t0 = now_s();
			}
			rc = conn_send(c, task, next, next >= warmup);
			next++;
			busy++;
		}
		if (failed >= MAX_FAILURES)
			break;
	}
#undef MORE
	out->seconds = last - t0;
	for (int i = 0; i < nconns; i++) {
		if (cs[i].fd >= 0)
			close(cs[i].fd);
		buf_free(&cs[i].in);
	}
	free(cs);
	close(ep);
	if (failed) {
		fprintf(stderr, "bench: %lld of %lld calls failed\n", failed, next);
		rc = -1;
	}
	if (rc == 0)
		qsort(out->ms, (size_t)out->n, sizeof *out->ms, cmp_double);
	return rc;
}

int rounds_sequential(const struct fpserver *s, long n, struct latencies *out)
{
	return rounds(s, 1, "echo", n, WARMUP_CALLS, 0, out);
}

int rounds_concurrent(const struct fpserver *s, int clients, double seconds, struct latencies *out)
{
	return rounds(s, clients, "square", 0, 0, seconds, out);
}

int rounds_healthz(const struct fpserver *s, int clients, double seconds, struct latencies *out)
{
	return rounds(s, clients, NULL, 0, 0, seconds, out);
}

/* ---- W7: many long-polls on one batch ---- */

static double wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* A number from GET /metrics: the value after "key ", or -1. */
static double metric(const struct fpserver *s, const char *key)
{
	char *body = NULL;
	double v = -1;
	if (client_get(s, "/metrics", &body) == 200 && body) {
		size_t n = strlen(key);
		for (const char *l = body; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
			if (!strncmp(l, key, n) && l[n] == ' ') {
				v = strtod(l + n + 1, NULL);
				break;
			}
	}
	free(body);
	return v;
}

/* Unix ms of the "finished_at" in a future's JSON, or -1. */
static double finished_at_ms(const char *json)
{
	const char *p = json ? strstr(json, "\"finished_at\":\"") : NULL;
	struct tm tm = {0};
	int ms = 0;
	if (!p || sscanf(p + 15, "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
			 &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) != 7)
		return -1;
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	return (double)timegm(&tm) * 1e3 + ms;
}

int polls_wake(const struct fpserver *s, int n, double item_s, struct poll_run *out)
{
	memset(out, 0, sizeof *out);
	char body[96], *resp = NULL;
	snprintf(body, sizeof body, "{\"task\":\"sleep\",\"items\":[[%g]]}", item_s);
	long st = client_post(s, "/v1/batches", body, &resp);
	const char *idp = resp ? strstr(resp, "\"id\":") : NULL;
	long long id = idp ? strtoll(idp + 5, NULL, 10) : 0;
	free(resp);
	if (st != 201 || id <= 0) {
		fprintf(stderr, "bench: W7: the batch was not accepted (%ld)\n", st);
		return -1;
	}
	long rss0 = fpserver_peak_rss_kib(s);
	struct conn *c = calloc((size_t)n, sizeof *c);
	int ep = epoll_create1(EPOLL_CLOEXEC), rc = -1, open = 0;
	if (!c || ep < 0)
		goto out;
	/* HTTP/1.1 and kept alive, as clients (curl, Python's http.client)
	 * send them: an answer is whole at its Content-Length. */
	char req[160];
	int rl = snprintf(req, sizeof req, "GET /v1/batches/%lld?wait=60 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", id);
	for (int i = 0; i < n; i++) {
		if ((c[i].fd = conn_open(s)) < 0 || write_all(c[i].fd, req, (size_t)rl) < 0)
			goto out;
		open++;
		struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
		epoll_ctl(ep, EPOLL_CTL_ADD, c[i].fd, &ev);
	}
	/* All of them must be waiting before the item ends. */
	double deadline = now_s() + item_s;
	while (metric(s, "forkpool_http_connections{state=\"parked\"}") < n)
		if (now_s() > deadline) {
			fprintf(stderr, "bench: W7: %d long-polls were not all parked within the item's %g s\n", n, item_s);
			goto out;
		}
	out->rss_growth_kib = fpserver_peak_rss_kib(s) - rss0;
	int answered = 0;
	double first = 0, last = 0;
	struct epoll_event evs[256];
	while (answered < n) {
		int k = epoll_wait(ep, evs, 256, (int)(STALL_S * 1000 + item_s * 1000));
		if (k <= 0) {
			fprintf(stderr, "bench: W7: %d of %d long-polls answered\n", answered, n);
			goto out;
		}
		for (int e = 0; e < k; e++) {
			struct conn *ci = &c[evs[e].data.u32];
			struct answer a;
			int w = conn_read(ci, &a);
			if (w < 0)
				goto out;
			if (w == 0)
				continue;
			double t = wall_ms();
			if (a.status != 200) {
				fprintf(stderr, "bench: W7: a long-poll answered %d\n", a.status);
				goto out;
			}
			epoll_ctl(ep, EPOLL_CTL_DEL, ci->fd, NULL);
			if (!answered++)
				first = t;
			last = t;
		}
	}
	char path[96];
	snprintf(path, sizeof path, "/v1/batches/%lld/futures/0", id);
	resp = NULL;
	client_get(s, path, &resp);
	double done = finished_at_ms(resp);
	free(resp);
	if (done < 0) {
		fprintf(stderr, "bench: W7: no finished_at for the item\n");
		goto out;
	}
	out->n = n;
	out->first_ms = first - done;
	out->last_ms = last - done;
	rc = 0;
out:
	for (int i = 0; i < open; i++) {
		close(c[i].fd);
		buf_free(&c[i].in);
	}
	free(c);
	if (ep >= 0)
		close(ep);
	return rc;
}
