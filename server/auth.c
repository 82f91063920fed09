/* auth.c - the bearer token and the listen rule (see auth.h).
 *
 * The comparison takes the same time whatever the given token holds: it
 * walks the whole expected token and folds every difference into one byte,
 * so a client cannot find the token a character at a time by timing 401s.
 * (Its duration depends on the expected token's length only.) */
#include "auth.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"

#define TOKEN_MIN 16
#define TOKEN_MAX 4096

static struct {
	char *token;
	size_t len;
	int protect_metrics;
} A;

/* Checks a token's characters: visible ASCII only (it travels in a header). */
static int token_ok(const char *t, size_t n, const char *from)
{
	if (n < TOKEN_MIN || n > TOKEN_MAX) {
		log_error("config", "msg=\"the token from %s is %zu characters; use %d to %d "
				    "(e.g. openssl rand -hex 32)\"",
			  from, n, TOKEN_MIN, TOKEN_MAX);
		return 0;
	}
	for (size_t i = 0; i < n; i++)
		if (t[i] < 0x21 || t[i] > 0x7e) {
			log_error("config", "msg=\"the token from %s holds a space, a control or a "
					    "non-ASCII character (at %zu); use visible ASCII only\"",
				  from, i);
			return 0;
		}
	return 1;
}

static char *read_token_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		log_error("config", "msg=\"--token-file %s: %s\"", path, strerror(errno));
		return NULL;
	}
	char *buf = malloc(TOKEN_MAX + 2);
	if (!buf)
		abort();
	size_t n = fread(buf, 1, TOKEN_MAX + 1, f);
	int err = ferror(f) ? errno : 0; /* a directory opens, then reads EISDIR */
	fclose(f);
	if (err) {
		log_error("config", "msg=\"--token-file %s: %s\"", path, strerror(err));
		free(buf);
		return NULL;
	}
	/* The token is the file's first line; trailing whitespace (an editor's
	 * newline, a CR) is not part of it. */
	char *nl = memchr(buf, '\n', n);
	if (nl)
		n = (size_t)(nl - buf);
	while (n && (buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
		n--;
	buf[n] = '\0';
	*len = n;
	return buf;
}

int auth_init(const char *token_file, int protect_metrics)
{
	auth_free();
	A.protect_metrics = protect_metrics;
	const char *env = getenv("FORKPOOL_TOKEN");
	if (env && !*env)
		env = NULL;
	if (token_file && env) {
		log_error("config", "msg=\"both --token-file (or FORKPOOL_TOKEN_FILE) and "
				    "FORKPOOL_TOKEN are set; give the token one way only\"");
		return -1;
	}
	char from[512];
	if (token_file) {
		A.token = read_token_file(token_file, &A.len);
		if (!A.token)
			return -1;
		snprintf(from, sizeof from, "--token-file %s", token_file);
	} else if (env) {
		A.token = strdup(env);
		A.len = strlen(env);
		snprintf(from, sizeof from, "FORKPOOL_TOKEN");
	}
	/* Workers inherit the environment; they have no use for the token. And
	 * the value is wiped where it lies first: unsetenv only drops the
	 * pointer, and the block the server was started with stays readable
	 * in /proc/PID/environ, by any task running as the same user. */
	char *raw = getenv("FORKPOOL_TOKEN");
	if (raw)
		explicit_bzero(raw, strlen(raw));
	unsetenv("FORKPOOL_TOKEN");
	if (A.token && !token_ok(A.token, A.len, from)) {
		auth_free();
		return -1;
	}
	if (protect_metrics && !A.token) {
		/* Otherwise /metrics would stay open while the operator thinks
		 * it is guarded. */
		log_error("config", "msg=\"--protect-metrics needs a token (--token-file or "
				    "FORKPOOL_TOKEN): there is none to protect /metrics with\"");
		return -1;
	}
	if (A.token)
		log_info("auth", "token_from=\"%s\" protect_metrics=%d", token_file ? "file" : "env",
			 protect_metrics);
	return 0;
}

int auth_enabled(void) { return A.token != NULL; }

void auth_free(void)
{
	if (A.token) {
		explicit_bzero(A.token, A.len);
		free(A.token);
	}
	A.token = NULL;
	A.len = 0;
}

/* Whether every address HOST resolves to is a loopback one. */
static int loopback_only(const char *listen)
{
	char host[256];
	const char *colon = strrchr(listen, ':');
	if (!colon || (size_t)(colon - listen) >= sizeof host)
		return 0;
	const char *hs = listen, *he = colon;
	if (*hs == '[' && he > hs && he[-1] == ']') {
		hs++;
		he--;
	}
	memcpy(host, hs, (size_t)(he - hs));
	host[he - hs] = '\0';
	if (!*host)
		return 0; /* ":8080" means every address */
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai, *p;
	if (getaddrinfo(host, NULL, &hints, &ai) != 0)
		return 0; /* http_start reports it */
	int all = 1;
	for (p = ai; p && all; p = p->ai_next) {
		if (p->ai_family == AF_INET) {
			const struct sockaddr_in *a = (const struct sockaddr_in *)p->ai_addr;
			all = (ntohl(a->sin_addr.s_addr) >> 24) == 127;
		} else if (p->ai_family == AF_INET6) {
			const struct in6_addr *a = &((const struct sockaddr_in6 *)p->ai_addr)->sin6_addr;
			all = IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
		} else {
			all = 0;
		}
	}
	freeaddrinfo(ai);
	return all;
}

int auth_check_listen(const char *listen, int insecure)
{
	if (A.token || loopback_only(listen))
		return 0;
	if (insecure) {
		log_warn("insecure_listen",
			 "addr=%s msg=\"no token: anyone who can reach this address can run tasks and read "
			 "results\"",
			 listen);
		return 0;
	}
	log_error("config",
		  "addr=%s msg=\"refusing to listen on %s without a token: it is not a loopback address, so "
		  "other machines could run tasks and read every result. Give a token with "
		  "--token-file PATH (or FORKPOOL_TOKEN), or pass --insecure-listen to serve without "
		  "one (for instance behind a proxy that authenticates)\"",
		  listen, listen);
	return -1;
}

/* Compares the whole expected token whatever the given one holds. */
static int token_matches(const char *given, size_t n)
{
	unsigned char diff = n != A.len;
	for (size_t i = 0; i < A.len; i++)
		diff |= (unsigned char)A.token[i] ^ (unsigned char)(i < n ? given[i] : 0);
	return diff == 0;
}

static int needs_token(const char *path)
{
	if (!strncmp(path, "/v1/", 4) || !strcmp(path, "/v1"))
		return 1;
	return A.protect_metrics && !strcmp(path, "/metrics");
}

int auth_refuse(struct http_req *r)
{
	if (!A.token || !needs_token(http_path(r)))
		return 0;
	const char *h = http_header(r, "Authorization");
	if (h) {
		while (*h == ' ')
			h++;
		if (!strncasecmp(h, "Bearer ", 7)) {
			h += 7;
			while (*h == ' ')
				h++;
			size_t n = strlen(h);
			while (n && h[n - 1] == ' ')
				n--;
			if (token_matches(h, n))
				return 0;
			http_add_header(r, "WWW-Authenticate", "Bearer realm=\"forkpool\", error=\"invalid_token\"");
			http_error(r, 401, "unauthorized", "the bearer token is not this server's");
			return 1;
		}
	}
	http_add_header(r, "WWW-Authenticate", "Bearer realm=\"forkpool\"");
	http_error(r, 401, "unauthorized",
		   "this server needs Authorization: Bearer <token> on %s (the token of --token-file "
		   "or FORKPOOL_TOKEN)",
		   !strcmp(http_path(r), "/metrics") ? "/metrics" : "/v1");
	return 1;
}
