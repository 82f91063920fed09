/* upload.h - NDJSON batches: `POST /v1/batches?task=T` with Content-Type
 * application/x-ndjson and one JSON array of arguments per line.
 *
 * Each line is checked against the task and stored as it arrives, so a
 * batch of millions of items is never held in memory; the batch stays
 * invisible (store_upload_*) until the body has ended, and any error (a bad
 * line, named by its number, or a client that goes away) removes every row
 * it stored. */
#ifndef FORKPOOL_UPLOAD_H
#define FORKPOOL_UPLOAD_H

#include <stdint.h>

#include "catalog.h"
#include "http.h"
#include "store.h"

/* Starts taking r's body as an upload of items for task into b (task,
 * chunksize, timeout set by the caller; chunksize 0: decided at the end).
 * max_items: more is 413. Answers with an error itself if it cannot. */
void upload_start(struct http_req *r, struct store *s, const struct task_info *task,
		  const struct batch *b, int64_t max_items);
/* Whether r is an upload (its http_data is the upload's). */
int upload_active(struct http_req *r);
/* The body has ended: on success, seals the batch (chunksize from
 * auto_chunk(size) when the request gave none), fills *b and returns 0;
 * otherwise it has answered with the error and returns -1. */
int upload_end(struct http_req *r, int64_t (*auto_chunk)(int64_t size), struct batch *b);

#endif
