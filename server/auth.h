/* auth.h - who may use the API. One bearer token (--token-file PATH, or the
 * token itself in FORKPOOL_TOKEN) guards every /v1 request, and /metrics too
 * with --protect-metrics; /healthz stays open so that health checks need no
 * secret. A server that other machines can reach must have a token unless
 * --insecure-listen says otherwise. */
#ifndef FORKPOOL_AUTH_H
#define FORKPOOL_AUTH_H

#include "http.h"

/* Loads the token from token_file (NULL: none) or FORKPOOL_TOKEN, which is
 * then removed from the environment so that workers never see it. 0, or -1
 * after printing why to stderr (unreadable or empty file, both given, a token
 * shorter than 16 characters or holding spaces or controls). */
int auth_init(const char *token_file, int protect_metrics);
/* Whether a token is set. */
int auth_enabled(void);
/* Refuses (-1, saying why on stderr) to listen on an address that is not
 * loopback when there is no token, unless insecure; with insecure, logs a
 * warning instead. 0 when listening is fine. */
int auth_check_listen(const char *listen, int insecure);
/* Called when a request's headers are in, before its body is read: if the
 * path needs the token and the request does not carry it, answers 401 with
 * WWW-Authenticate and returns 1. Otherwise returns 0. */
int auth_refuse(struct http_req *r);
void auth_free(void);

#endif
