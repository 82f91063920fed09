/* request.h - a batch submission's body, parsed and checked: the part of
 * POST /v1/batches that needs no network, so that it can be fuzzed and its
 * hostile inputs replayed by the tests (fuzz/, tests/test_hostile.c).
 *
 * Everything is checked before anything is stored: the JSON itself, the
 * fields (unknown ones are refused), the task, every item's arguments against
 * the task's parameters, chunksize, timeout, retries, and the item limit. */
#ifndef FORKPOOL_REQUEST_H
#define FORKPOOL_REQUEST_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "catalog.h"
#include "store.h"

#define REQUEST_MAX_RETRIES 100
/* A batch's timeout, seconds per item: a millisecond (the pool's clock) up
 * to about four months. The same for JSON fields and NDJSON queries. */
#define REQUEST_MIN_TIMEOUT_S 1e-3
#define REQUEST_MAX_TIMEOUT_S 1e7

struct request_limits {
	int workers;		/* for the automatic chunk size */
	long chunksize;		/* when a batch gives none; 0: automatic */
	double default_timeout; /* when a batch gives none; 0: none */
	int64_t max_items;	/* more is 413; 0: no limit */
	int jansson_only;	/* the fuzzer's comparison: no fast path */
};

/* Why a body was refused: an HTTP status (400 or 413), an error code such as
 * "invalid_json", and a message naming the field and item. */
struct request_error {
	unsigned status;
	char code[32];
	char message[1024];
};

struct batch_request {
	struct batch b; /* all but id, times and counts */
	const struct task_info *task;
	/* The items' argument arrays in the form the store keeps (jsonw_value's,
	 * as NDJSON lines are kept), one a line, each ending in '\n'. */
	struct buf args;
};

/* How a JSON text that jansson would not parse is refused: a number past
 * what it holds (an integer past 64 bits, 1e999) is valid JSON, so it is
 * "invalid_request" with a message that says so; anything else
 * "invalid_json" with the parser's message. Writes the code (32 bytes) and
 * message; where names the text ("the body"), or is NULL for one NDJSON line
 * (the caller names the line; the position is then only a column). */
void request_json_refusal(const json_error_t *jerr, const char *where, char *code, char *msg,
			  size_t msglen);

/* Parses and checks body[0..len). 0 with *out filled (free it with
 * request_free), or -1 with *err filled and nothing to free. */
int request_parse_batch(const char *body, size_t len, const struct request_limits *lim,
			struct batch_request *out, struct request_error *err);
void request_free(struct batch_request *q);
/* For the fuzzer and the tests: whether body gets the same answer with and
 * without the fast path (the same batch and argument texts, or the same
 * refusal). 1 or 0. */
int request_paths_agree(const char *body, size_t len, const struct request_limits *lim);

#endif
