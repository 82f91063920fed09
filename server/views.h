/* views.h - the JSON shapes the API answers with: the batch object and the
 * future object (README.md, "HTTP API"). Shared by the request handlers and
 * the result streams so that both write exactly the same objects. */
#ifndef FORKPOOL_VIEWS_H
#define FORKPOOL_VIEWS_H

#include "buf.h"
#include "store.h"

/* "pending" (nothing started), "running" or "done" (nothing pending or running). */
const char *batch_state(const struct batch *b);
int batch_done(const struct batch *b);
void batch_json(struct buf *o, const struct batch *b);
void future_json(struct buf *o, const struct future *f);

#endif
