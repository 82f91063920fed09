/* retention.h - deleting what is no longer wanted: batches done for longer
 * than --result-ttl, and done batches purged on request
 * (DELETE /v1/batches/{id}?purge=true).
 *
 * A batch goes in two moves. Its row is deleted first, in one statement, so
 * that every read says 404 from then on; its items' rows (segments, seg_args,
 * outcomes) follow in small transactions run from the loop's timer (a few
 * dozen rows, about a MiB, each), so that a batch of a million items never
 * holds the loop. Rows whose batch row is gone (a crash between the two
 * moves) are found again at start-up. The pages freed go to SQLite's free
 * list and are reused before the file grows; the file itself does not shrink
 * (VACUUM offline does that). */
#ifndef FORKPOOL_RETENTION_H
#define FORKPOOL_RETENTION_H

#include <stdint.h>

#include "http.h"
#include "store.h"

#define RETENTION_DEFAULT_MS (7 * 24 * 3600 * 1000LL)

/* Parses a duration: 90s, 30m, 12h, 7d, 2w, or plain seconds; "off" or 0
 * means keep forever (*ms = -1). 0, or -1 if it is not one. */
int retention_parse(const char *v, int64_t *ms);
/* ttl_ms: 0 for the default (7 days), < 0 to keep batches forever (purges
 * still work). Also sets the WAL's size limit. 0, or -1 (logged). */
int retention_init(struct store *s, int64_t ttl_ms);
/* Runs one step of deletion if one is due and the store has no open
 * transaction. Returns the monotonic ms of the next step, or -1. */
int64_t retention_tick(void);
/* For DELETE /v1/batches/{id}: with ?purge=true (or 1) answers the request
 * and returns 1: 200 {"id", "purged": true, "items"} for a done batch, 404,
 * 409 while it has pending or running items, 400 for another purge value.
 * Returns 0, having answered nothing, when the request is no purge. */
int retention_delete(struct http_req *r, int64_t id);
/* Finalizes its statements (before store_close). */
void retention_free(void);

#endif
