/* api.h - the HTTP API v1: routes, request validation, and the JSON shapes of
 * batches, futures and errors. Reads and writes go to the store; accepted
 * batches go to the pool's queue. */
#ifndef FORKPOOL_API_H
#define FORKPOOL_API_H

#include "http.h"
#include "store.h"

struct api_config {
	struct store *store;
	int workers;	/* for the automatic chunk size */
	long chunksize; /* when a batch gives none; 0: automatic */
	double default_timeout; /* seconds per item when a batch gives none; 0: none */
	int64_t max_items;	/* more items in a batch is 413 */
	/* Tells the loop that futures of a batch reached a final state, so its
	 * waiters are looked at after the turn's commit. */
	void (*changed)(int64_t batch);
};

void api_init(const struct api_config *c);
/* The http_handler for every request. */
void api_handle(struct http_req *r);
/* From now on new work is refused with 503 and /healthz says so. */
void api_shutting_down(void);

#endif
