/* segfmt.h - the byte formats of the store's segments and outcome groups
 * (schema/003_segments.sql). Pure encoding: no SQLite, no state.
 *
 * Numbers are unsigned LEB128 varints (7 bits a byte, low first); times and
 * other values that may be -1 ("none") are stored plus one, so that none is 0.
 *
 * A segment's items blob: per item, in index order,
 *   state (1 byte) | attempts | worker | started_ms + 1 | done_seq
 * An outcome group's recs blob: per record, in completion order,
 *   done_seq | index | state (1 byte) | error_type (1 byte) | attempts |
 *   worker | started_ms + 1 | finished_ms + 1 | text length | text | NUL
 * where text is the result (finished) or the message (failed), empty when
 * cancelled. */
#ifndef FORKPOOL_SEGFMT_H
#define FORKPOOL_SEGFMT_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "store.h"

#define SEG_ITEMS 256 /* items per segment */
/* A segment's row id is batch << 22 | seg (schema/004_fewer_pages.sql); as
 * SQL of the parameters ?1 (batch) and ?2 (seg), and the rows of batch ?1. */
#define SEG_ID_SQL "((?1 << 22) | ?2)"
#define SEG_RANGE_SQL "id >= (?1 << 22) AND id < ((?1 + 1) << 22)"
/* --max-items is at most 10^9 (main.c): a batch's segments fit in 22 bits. */
_Static_assert((1000000000 + SEG_ITEMS - 1) / SEG_ITEMS < (1 << 22), "segment ids overlap");
/* An outcome group is written when it holds GROUP_RECS records or
 * GROUP_BYTES bytes, and at the latest at the end of the transaction. */
#define GROUP_RECS 256
#define GROUP_BYTES (1 << 20)

/* One item as a segment records it. done_seq is 0 until the item is done;
 * its outcome is then the record with that cursor in the batch's groups. */
struct seg_item {
	uint8_t state;	 /* enum fstate */
	int64_t attempts;
	int64_t worker;	 /* 0: none */
	int64_t started_ms; /* < 0: none */
	int64_t done_seq;
};

void segfmt_put_items(struct buf *b, const struct seg_item *it, int n);
/* Decodes up to max items; returns how many, or -1 if the blob is corrupt. */
int segfmt_get_items(const void *blob, size_t len, struct seg_item *it, int max);

/* Appends f's outcome with its cursor f->done_seq. */
void segfmt_put_outcome(struct buf *b, const struct future *f);
/* Reads the record at *p (< end) into f, whose strings then point into the
 * blob; advances *p. 1, or -1 if the blob is corrupt. */
int segfmt_get_outcome(const unsigned char **p, const unsigned char *end, struct future *f);

#endif
