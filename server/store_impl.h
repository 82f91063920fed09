/* store_impl.h - the store's insides (its interface is store.h), shared by
 * its two files and included by no other: store.c (the connection,
 * transactions, migration and recovery, batches, idempotency keys, NDJSON
 * uploads) and futures.c (the futures: segments, outcome groups, claims,
 * state changes, reads, a new batch's items). Here: struct store and its
 * parts, the ids of the prepared statements, and the internal helpers one
 * of the two files defines and the other calls. */
#ifndef FORKPOOL_STORE_IMPL_H
#define FORKPOOL_STORE_IMPL_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "segfmt.h"
#include "store.h"

/* The statements store_open prepares once, by id; their texts are
 * store_sql[id] (store.c). */
enum stmt_id {
	S_BEGIN,
	S_BEGIN_READ,
	S_COMMIT,
	S_ROLLBACK,
	S_NEXT_ID,
	S_INS_BATCH,
	S_GET_BATCH,
	S_LIST_BATCHES,
	S_PENDING_BATCHES,
	S_COUNTS,
	S_COUNTS_SET,
	S_SET_SEQ,
	S_INS_SEG,
	S_INS_ARGS,
	S_GET_SEG,
	S_PUT_SEG,
	S_GET_ARGS,
	S_INS_GROUP,
	S_GROUP_AT,
	S_GROUPS_AFTER,
	S_NSTMTS
};

extern const char *const store_sql[S_NSTMTS];

/* A batch's counter changes not yet in its row (see store.c's top). */
struct delta {
	int64_t batch;
	int64_t d[FS_NSTATES];
};

/* ---- what the transaction holds in memory ----
 *
 * Futures live in segments of SEG_ITEMS (segfmt.h). A state change edits the
 * segment in a write-back cache; dirty segments are written at commit (or
 * when the cache needs room), so a claim of 10,000 items or a burst of
 * results costs one UPDATE per 256 items. Outcomes are appended to a group
 * per batch, written when full and at commit. A rollback drops all of it. */
#define SEG_CACHE 256 /* segments held: more than two chunks of 10,000 in flight */
#define SEG_HASH 512  /* chains finding them by (batch, seg) */
#define NCURSORS 128  /* claim positions remembered, direct-mapped by batch id */
#define BCACHE 256    /* batch rows cached */
#define KEPT 256        /* written blobs kept, per kind: one per batch slot */
#define KEPT_BYTES 4096 /* the largest blob kept */
#define SEQ_BLOCK 65536 /* how far meta's done_seq runs ahead of the cursors given */

struct segment {
	int64_t batch, seg;
	int n, dirty;
	int fresh; /* made by a submission and not in the database yet: dirty */
	struct segment *hnext;	      /* in its seg_hash chain, while it holds one */
	struct segment *older, *newer; /* the cache's use order (eviction: the oldest) */
	struct seg_item it[SEG_ITEMS];
};

/* Outcomes of one batch not yet written: records with increasing cursors. */
struct group {
	int64_t batch, first_seq, last_seq;
	int n;
	struct buf recs;
};

/* A blob as written, for rows that never change once written (a segment's
 * arguments, an outcome group): it holds keys lo..hi of batch (batch 0:
 * empty). See struct store's kept_args and kept_groups. */
struct kept {
	int64_t batch, lo, hi;
	struct buf blob;
};

/* A new batch's items not yet written: the segment being filled. */
struct builder {
	int64_t batch, next; /* next: the index the next item must have */
	int n;
	struct buf args;
};

/* Where a batch's claims go on: no item below idx is pending. A batch
 * without one is claimed from index 0, so forgetting one is always safe. */
struct cursor {
	int64_t batch, idx;
};

struct store {
	sqlite3 *db;
	sqlite3_stmt *st[S_NSTMTS];
	int in_txn;
	int in_read; /* a read transaction of store_read_begin is open */
	/* done_seq: the latest completion cursor given. seq_bound: meta's
	 * done_seq as this transaction leaves it, the highest cursor a restart
	 * may have given (schema/004_fewer_pages.sql); raised SEQ_BLOCK at a
	 * time, so most commits write no meta row. */
	int64_t done_seq, seq_bound, seq_bound_committed;
	/* The highest completion cursor committed: completion-order reads stop
	 * there, so that a cursor handed to a client is never one a failed
	 * commit takes back and gives to another future. */
	int64_t done_seq_committed;
	int64_t now_ms; /* time of the latest change, for finished_at */
	struct delta *deltas;
	size_t ndeltas, capdeltas;
	/* SQLite rolled the open transaction back by itself (it may, on
	 * SQLITE_FULL, SQLITE_IOERR, SQLITE_NOMEM): the next store_commit
	 * fails, so that the caller knows those writes are gone. */
	int lost;
	int lock_fd; /* the database file, flock()ed: one server per database */
	char last_error[256];
	struct checkpointer *ckpt; /* store.c */
	/* Batch rows as the transaction sees them, direct-mapped by id (id 0:
	 * empty): filled by store_batch_get, kept current by flush_counts
	 * (which applies each UPDATE's deltas to its entry too), dropped by
	 * any other write of a row (bcache_forget) and by rollbacks. 2,000
	 * long-polls woken by one batch cost one read, not 4,000, and a
	 * single-item call's several reads of its batch one (W3: 18,000
	 * instructions an item). */
	struct batch bcache[BCACHE];
	/* The segment cache: found through seg_hash, evicted oldest first.
	 * A scan of all 256 entries for each lookup and each eviction was 2%
	 * of the server's time in W3, where every call is a new segment. */
	struct segment *segs[SEG_CACHE];
	int nsegs;
	struct segment *seg_hash[SEG_HASH];
	struct segment *seg_oldest, *seg_newest;
	struct segment *last_seg; /* the latest found: most lookups hit it */
	struct group *groups;
	size_t ngroups, capgroups;
	struct builder *builders;
	size_t nbuilders, capbuilders;
	struct cursor cursors[NCURSORS];
	/* Where the latest completion-order read stopped inside a group:
	 * the next page, asking for what comes after seq, starts at byte off
	 * of group last_seq instead of decoding it from its start (groups are
	 * never rewritten; a rollback forgets this). */
	struct {
		int64_t batch, last_seq, seq;
		int off;
	} resume;
	int64_t submitting; /* the batch between store_batch_begin and _end */
	char *submit_key;   /* its Idempotency-Key, once stored (store_idem_put) */
	int64_t next_id;    /* the id the next batch gets; 0: read it (next_id). Not
			     * lowered when a transaction is lost: the pool may
			     * hold chunks of the batches it took back, so their
			     * ids are not given again by this process */
	struct buf scratch; /* an items blob being written */
	/* The latest small arguments row and outcome group written of a
	 * batch, direct-mapped by id (kept_put, kept_get): the claim of a
	 * call's item and the answer to a call that waited read them from
	 * here, not back from the file they were just written to (W3: about
	 * 3,000 and 4,300 instructions an item). store_forget and rollbacks
	 * drop them. */
	struct kept kept_args[KEPT];   /* lo = hi = the segment */
	struct kept kept_groups[KEPT]; /* lo..hi: the group's cursors */
	/* The outcome group a submission-order read found last: a copy of its
	 * records, decoded (strings point into blob). */
	struct {
		int64_t batch;
		struct buf blob;
		struct future *f;
		int n, cap;
	} rg;
};

/* ---- the store's internals, not its interface ----
 *
 * Helpers one of store.c and futures.c defines and the other calls: they are
 * not static only for that. Nothing outside those two files may call them. */

/* store.c: transactions. db_fail logs the connection's error (op: what
 * failed), notes whether SQLite rolled the transaction back, and returns -1;
 * run steps statement id (no rows) and resets it, 0 / -1; begin opens the
 * transaction if none is open, 0 / -1; move_count moves n items of batch
 * from one state's counter to another's. */
int db_fail(struct store *s, const char *op);
int db_run(struct store *s, enum stmt_id id);
int db_begin(struct store *s);
void move_count(struct store *s, int64_t batch, enum fstate from, enum fstate to, int64_t n);
/* store.c: drops batch's cached row (its row was written or deleted). */
void bcache_forget(struct store *s, int64_t batch);

/* futures.c: the segments and outcome groups (flushed by store.c's commit,
 * read by its recovery). seg_write writes a cached segment back, 0 / -1;
 * flush_groups writes every outcome group, 0 / -1; seg_get is a segment as
 * the transaction sees it, 1 and *out, 0 if there is none, -1; to_pending
 * puts a running item back to pending, its attempt given back or kept. */
int seg_write(struct store *s, struct segment *g);
int flush_groups(struct store *s);
/* Keeps a copy of a blob just written, if small; the kept blob of batch
 * whose keys hold key, or NULL. */
void kept_put(struct kept *k, int64_t batch, int64_t lo, int64_t hi, const struct buf *blob);
const struct kept *kept_get(const struct kept *k, int64_t batch, int64_t key);
/* Empties both tables (all == 1) or batch's entries. */
void kept_drop(struct store *s, int64_t batch, int all);
void seg_drop_all(struct store *s);
int seg_get(struct store *s, int64_t batch, int64_t seg, struct segment **out);
void to_pending(struct store *s, int64_t batch, int64_t idx, struct seg_item *it, int give_back);

/* futures.c: a new batch's items (submitted and uploaded through store.c).
 * builder_for is batch's builder, made if there is none; builder_drop frees
 * it; builder_write writes its segment, 0 / -1; add_item appends item idx,
 * which must come next, 0 / -1. */
struct builder *builder_for(struct store *s, int64_t batch);
void builder_drop(struct store *s, int64_t batch);
int builder_write(struct store *s, struct builder *bl);
int add_item(struct store *s, int64_t batch, int64_t idx, const char *args, size_t len);

#endif
