/* client.c - the API tests' server launcher and HTTP client (see client.h). */
#include "client.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

#define START_DEADLINE_MS 20000
#define STOP_DEADLINE_MS 20000
#define MAX_ARGS 64

static void pause_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
	nanosleep(&ts, NULL);
}

char *server_log_text(const struct server *s)
{
	FILE *f = fopen(s->log, "r");
	if (!f)
		return strdup("");
	char *text = NULL;
	size_t cap = 0;
	ssize_t n = getdelim(&text, &cap, '\0', f);
	fclose(f);
	if (n < 0) {
		free(text);
		return strdup("");
	}
	return text;
}

/* The port of the server's "event=listen addr=HOST:PORT" line, or 0. */
static int logged_port(const struct server *s)
{
	char *text = server_log_text(s);
	int port = 0;
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		if (!strstr(line, "event=listen") || !strstr(line, "addr="))
			continue;
		char *addr = strstr(line, "addr="), *colon = strchr(addr, ' ');
		if (colon)
			*colon = '\0';
		colon = strrchr(addr, ':');
		if (colon)
			port = atoi(colon + 1);
	}
	free(text);
	return port;
}

void server_startv(struct server *s, const char *const *args)
{
	memset(s, 0, sizeof *s);
	/* SIGTERM lets running items finish for --grace seconds (default 10);
	 * tests stop servers with items still running all the time, so theirs
	 * stop at once unless a test sets FORKPOOL_GRACE or --grace itself. */
	setenv("FORKPOOL_GRACE", "0", 0);
	snprintf(s->log, sizeof s->log, "server.log");
	snprintf(s->db, sizeof s->db, "server.db");
	const char *argv[MAX_ARGS];
	char bin[512];
	snprintf(bin, sizeof bin, "%s/forkpoold", harness_bin_dir());
	int n = 0, has_db = 0, has_listen = 0;
	argv[n++] = bin;
	for (int i = 0; args && args[i]; i++) {
		if (!strcmp(args[i], "--db") && args[i + 1]) {
			has_db = 1;
			snprintf(s->db, sizeof s->db, "%s", args[i + 1]);
		}
		if (!strcmp(args[i], "--listen"))
			has_listen = 1;
	}
	if (!has_listen) {
		argv[n++] = "--listen";
		argv[n++] = "127.0.0.1:0";
	}
	if (!has_db) {
		argv[n++] = "--db";
		argv[n++] = s->db;
	}
	for (int i = 0; args && args[i] && n < MAX_ARGS - 1; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	/* Each start has a fresh log (a restart's own listen line is the one
	 * read). */
	int fd = open(s->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		FAILF("open %s: %s", s->log, strerror(errno));
	pid_t pid = fork();
	if (pid < 0)
		FAILF("fork: %s", strerror(errno));
	if (pid == 0) {
		dup2(fd, 1);
		dup2(fd, 2);
		close(fd);
		execv(bin, (char *const *)argv);
		fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
	close(fd);
	s->pid = pid;
	int64_t deadline = harness_now_ms() + START_DEADLINE_MS;
	while (!(s->port = logged_port(s))) {
		int status;
		if (waitpid(pid, &status, WNOHANG) == pid) {
			char *log = server_log_text(s);
			s->pid = 0;
			FAILF("the server exited (status %d) before listening; its log:\n%s", status, log);
		}
		if (harness_now_ms() > deadline)
			FAILF("the server did not log event=listen within %d ms", START_DEADLINE_MS);
		pause_ms(5);
	}
	snprintf(s->base, sizeof s->base, "http://127.0.0.1:%d", s->port);
}

void server_start(struct server *s, ...)
{
	const char *args[MAX_ARGS];
	int n = 0;
	va_list ap;
	va_start(ap, s);
	const char *a;
	while ((a = va_arg(ap, const char *)) && n < MAX_ARGS - 1)
		args[n++] = a;
	va_end(ap);
	args[n] = NULL;
	server_startv(s, args);
}

int server_stop(struct server *s)
{
	if (s->pid <= 0)
		return 0;
	kill(s->pid, SIGTERM);
	int64_t deadline = harness_now_ms() + STOP_DEADLINE_MS;
	int status;
	for (;;) {
		pid_t r = waitpid(s->pid, &status, WNOHANG);
		if (r == s->pid)
			break;
		if (harness_now_ms() > deadline) {
			kill(s->pid, SIGKILL);
			waitpid(s->pid, &status, 0);
			s->pid = 0;
			FAILF("the server did not stop within %d ms of SIGTERM", STOP_DEADLINE_MS);
		}
		pause_ms(5);
	}
	s->pid = 0;
	return status;
}

void server_kill9(struct server *s)
{
	if (s->pid <= 0)
		return;
	kill(s->pid, SIGKILL);
	waitpid(s->pid, NULL, 0);
	s->pid = 0;
}

/* Lines of the server's log holding all of words[0..nw). */
static int log_count(const struct server *s, const char *const *words, int nw)
{
	char *text = server_log_text(s);
	int count = 0;
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		int all = 1;
		for (int i = 0; i < nw && all; i++)
			all = strstr(line, words[i]) != NULL;
		count += all;
	}
	free(text);
	return count;
}

/* The NULL-terminated words of ap (at most 16) into words; their number. */
static int collect_words(const char **words, va_list ap)
{
	int nw = 0;
	const char *w;
	while ((w = va_arg(ap, const char *)) && nw < 16)
		words[nw++] = w;
	return nw;
}

int server_log_count(const struct server *s, ...)
{
	const char *words[16];
	va_list ap;
	va_start(ap, s);
	int nw = collect_words(words, ap);
	va_end(ap);
	return log_count(s, words, nw);
}

int server_log_wait(const struct server *s, int want, ...)
{
	const char *words[16];
	va_list ap;
	va_start(ap, want);
	int nw = collect_words(words, ap);
	va_end(ap);
	int64_t deadline = harness_now_ms() + 10000;
	int n;
	while ((n = log_count(s, words, nw)) < want && harness_now_ms() < deadline)
		pause_ms(5);
	return n;
}

/* ---- HTTP ---- */

struct sink {
	char *data;
	size_t len;
};

static size_t sink_write(char *p, size_t size, size_t n, void *arg)
{
	struct sink *k = arg;
	size_t add = size * n;
	char *d = realloc(k->data, k->len + add + 1);
	if (!d)
		abort();
	memcpy(d + k->len, p, add);
	k->len += add;
	d[k->len] = '\0';
	k->data = d;
	return add;
}

static CURL *handle(void)
{
	static CURL *h;
	if (!h) {
		curl_global_init(CURL_GLOBAL_DEFAULT);
		h = curl_easy_init();
		if (!h)
			FAILF("curl_easy_init failed");
	}
	curl_easy_reset(h);
	return h;
}

struct resp reqh(const struct server *s, const char *method, const char *path, const char *body,
		 const char *const *headers)
{
	CURL *h = handle();
	char url[2048];
	snprintf(url, sizeof url, "%s%s", s->base, path);
	struct sink b = {0}, hd = {0};
	struct curl_slist *hl = NULL;
	int has_ct = 0;
	for (int i = 0; headers && headers[i]; i++) {
		hl = curl_slist_append(hl, headers[i]);
		if (!strncasecmp(headers[i], "Content-Type:", 13))
			has_ct = 1;
	}
	if (body && !has_ct)
		hl = curl_slist_append(hl, "Content-Type: application/json");
	hl = curl_slist_append(hl, "Expect:");
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink_write);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, sink_write);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, &hd);
	curl_easy_setopt(h, CURLOPT_TIMEOUT, 120L);
	if (!strcmp(method, "HEAD"))
		curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
	else
		curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
	if (body) {
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
	}
	CURLcode rc = curl_easy_perform(h);
	curl_slist_free_all(hl);
	if (rc != CURLE_OK)
		FAILF("%s %s: %s", method, path, curl_easy_strerror(rc));
	struct resp r = {0};
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r.status);
	r.body = b.data ? b.data : strdup("");
	r.headers = hd.data ? hd.data : strdup("");
	r.json = json_loads(r.body, JSON_DECODE_ANY, NULL);
	return r;
}

struct resp req(const struct server *s, const char *method, const char *path, const char *body)
{
	return reqh(s, method, path, body, NULL);
}

void resp_free(struct resp *r)
{
	free(r->body);
	free(r->headers);
	json_decref(r->json);
	memset(r, 0, sizeof *r);
}

char *resp_header(const struct resp *r, const char *name)
{
	size_t n = strlen(name);
	for (const char *l = r->headers; l && *l;) {
		const char *end = strstr(l, "\r\n");
		if (!end)
			end = l + strlen(l);
		if ((size_t)(end - l) > n && !strncasecmp(l, name, n) && l[n] == ':') {
			const char *v = l + n + 1;
			while (*v == ' ')
				v++;
			return strndup(v, (size_t)(end - v));
		}
		l = *end ? end + 2 : end;
	}
	return NULL;
}

/* ---- batch helpers ---- */

json_t *jget(const json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);
	if (!v)
		FAILF("no \"%s\" in %s", key, o ? json_dumps(o, JSON_COMPACT) : "(null)");
	return v;
}

json_int_t jint(const json_t *o, const char *key)
{
	json_t *v = jget(o, key);
	if (!json_is_integer(v))
		FAILF("\"%s\" is not an integer", key);
	return json_integer_value(v);
}

const char *jstr(const json_t *o, const char *key)
{
	json_t *v = jget(o, key);
	if (!json_is_string(v))
		FAILF("\"%s\" is not a string", key);
	return json_string_value(v);
}

int64_t submit(const struct server *s, const char *body)
{
	struct resp r = req(s, "POST", "/v1/batches", body);
	if (r.status != 201 || !r.json)
		FAILF("POST /v1/batches %s answered %ld: %s", body, r.status, r.body);
	int64_t id = jint(r.json, "id");
	resp_free(&r);
	return id;
}

json_t *wait_batch(const struct server *s, int64_t id, int secs)
{
	int64_t deadline = harness_now_ms() + secs * 1000LL;
	char path[128];
	for (;;) {
		int64_t left = (deadline - harness_now_ms()) / 1000;
		if (left < 1)
			left = 1;
		snprintf(path, sizeof path, "/v1/batches/%lld?wait=%lld", (long long)id, (long long)left);
		struct resp r = req(s, "GET", path, NULL);
		if (r.status != 200 || !r.json)
			FAILF("GET %s answered %ld: %s", path, r.status, r.body);
		if (!strcmp(jstr(r.json, "state"), "done")) {
			json_t *b = json_incref(r.json);
			resp_free(&r);
			return b;
		}
		resp_free(&r);
		if (harness_now_ms() > deadline)
			FAILF("batch %lld is not done after %d s", (long long)id, secs);
	}
}

struct resp results_raw(const struct server *s, int64_t id, const char *query)
{
	char path[256];
	snprintf(path, sizeof path, "/v1/batches/%lld/results%s%s", (long long)id, query ? "?" : "",
		 query ? query : "");
	struct resp r = req(s, "GET", path, NULL);
	if (r.status != 200)
		FAILF("GET %s answered %ld: %s", path, r.status, r.body);
	return r;
}

json_t *results(const struct server *s, int64_t id)
{
	struct resp r = results_raw(s, id, NULL);
	if (!r.json)
		FAILF("results of batch %lld are not parseable JSON: %.500s", (long long)id, r.body);
	json_t *res = json_incref(jget(r.json, "results"));
	resp_free(&r);
	return res;
}

/* ---- raw connections ---- */

int raw_connect(const struct server *s)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s->port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0)
		FAILF("connect to port %d: %s", s->port, strerror(errno));
	return fd;
}

struct rawconn *raw_get(const struct server *s, const char *path, const char *headers)
{
	struct rawconn *c = calloc(1, sizeof *c);
	if (!c)
		abort();
	c->fd = raw_connect(s);
	char req[2048];
	int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n%s\r\n", path,
			 headers ? headers : "");
	if (write(c->fd, req, (size_t)n) != n)
		FAILF("write: %s", strerror(errno));
	return c;
}

/* Reads more into c->buf; 0 at EOF. */
static int raw_fill(struct rawconn *c, int64_t deadline_ms)
{
	if (c->len == sizeof c->buf)
		FAILF("a line longer than %zu bytes", sizeof c->buf);
	for (;;) {
		int64_t left = deadline_ms - harness_now_ms();
		if (left <= 0)
			FAILF("no data from the server in time");
		struct pollfd p = {.fd = c->fd, .events = POLLIN};
		int r = poll(&p, 1, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			continue;
		ssize_t n = read(c->fd, c->buf + c->len, sizeof c->buf - c->len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return 0; /* reset: the end */
		c->len += (size_t)n;
		return n > 0;
	}
}

static char *take_line(struct rawconn *c)
{
	char *nl = memchr(c->buf, '\n', c->len);
	if (!nl)
		return NULL;
	size_t n = (size_t)(nl - c->buf);
	char *line = strndup(c->buf, n && c->buf[n - 1] == '\r' ? n - 1 : n);
	memmove(c->buf, nl + 1, c->len - n - 1);
	c->len -= n + 1;
	return line;
}

int raw_headers(struct rawconn *c, int64_t deadline_ms)
{
	char *line;
	for (;;) {
		while (!(line = take_line(c)))
			if (!raw_fill(c, deadline_ms))
				FAILF("the connection ended inside the headers");
		if (!c->status) {
			if (sscanf(line, "HTTP/%*s %d", &c->status) != 1)
				FAILF("bad status line: %s", line);
		} else if (!*line) {
			free(line);
			return c->status;
		}
		free(line);
	}
}

char *raw_line(struct rawconn *c, int64_t deadline_ms)
{
	char *line;
	while (!(line = take_line(c))) {
		if (!raw_fill(c, deadline_ms)) {
			if (c->len == 0)
				return NULL;
			line = strndup(c->buf, c->len); /* a last line without "\n" */
			c->len = 0;
			return line;
		}
	}
	return line;
}

void raw_close(struct rawconn *c)
{
	if (!c)
		return;
	close(c->fd);
	free(c);
}

long server_rss_kib(const struct server *s)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/%d/status", (int)s->pid);
	FILE *f = fopen(path, "r");
	long kib = -1;
	while (f && fgets(line, sizeof line, f))
		if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
			break;
	if (f)
		fclose(f);
	return kib;
}

double server_metric(const struct server *s, const char *key)
{
	struct resp r = req(s, "GET", "/metrics", NULL);
	CHECK_INT(r.status, 200);
	size_t n = strlen(key);
	for (const char *l = r.body; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
		if (!strncmp(l, key, n) && l[n] == ' ') {
			double v = strtod(l + n + 1, NULL);
			resp_free(&r);
			return v;
		}
	FAILF("no %s in /metrics: %.3000s", key, r.body);
}
