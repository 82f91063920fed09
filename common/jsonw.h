/* jsonw.h - writes a jansson value as compact JSON text into a buf, with
 * reals in their shortest round-trip form (jansson's own dump writes 17
 * digits: 0.1 would become 0.10000000000000001). */
#ifndef FORKPOOL_JSONW_H
#define FORKPOOL_JSONW_H

#include <jansson.h>

#include "buf.h"

void jsonw_value(struct buf *b, const json_t *v);

#endif
