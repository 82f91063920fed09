/* stream.h - a batch's results as a live stream: NDJSON (one future object
 * per line) or Server-Sent Events (`id: <cursor>`, `data: <future>`, and an
 * `event: done` with the batch at the end).
 *
 * Futures already done come first, then each one as it completes; nothing is
 * held per client but a cursor, and a waiting stream is a parked request (no
 * thread, no polling). Order: completed (as_completed; the cursor is the
 * completion sequence) or submitted (map; item i only after 0..i-1; the
 * cursor is the index). A stream that ends early (its timeout, the server
 * stopping) says so in a last line: {"end": "timeout", "next": cursor}, or an
 * `event: end` carrying the same object. */
#ifndef FORKPOOL_STREAM_H
#define FORKPOOL_STREAM_H

#include <stdint.h>

#include "http.h"
#include "store.h"

struct stream_opts {
	int sse;	      /* Server-Sent Events, else NDJSON */
	int completed;	      /* completion order, else submission order */
	int64_t after;	      /* resume after this cursor (-1: from the start) */
	double timeout_s;     /* end after this long (0: never) */
	double heartbeat_s;   /* SSE: a comment line after this long idle */
};

/* Starts streaming the batch's results as the answer to r. */
void stream_results(struct http_req *r, struct store *s, int64_t batch, const struct stream_opts *o);

#endif
