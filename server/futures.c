/* futures.c - the store's futures (see store.h; what it shares with store.c
 * is in store_impl.h): the write-back cache of segments and the outcome
 * groups, the claim cursors, every state change of a future (finish, fail,
 * cancel, requeue, retry, claim), the reads of futures, and the segments of
 * a new batch's items as they are submitted. The connection, transactions
 * and batches are store.c's. */
#include "store_impl.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "log.h"
#include "segfmt.h"

/* ---- segments and outcome groups: written back ---- */

/* Runs statement id, which writes the row (batch, key) with blob b. */
static int write_row(struct store *s, enum stmt_id id, int64_t batch, int64_t key,
		     const struct buf *b)
{
	sqlite3_stmt *st = s->st[id];
	sqlite3_bind_int64(st, 1, batch);
	sqlite3_bind_int64(st, 2, key);
	sqlite3_bind_blob(st, 3, b->data, (int)b->len, SQLITE_STATIC);
	return db_run(s, id);
}

int seg_write(struct store *s, struct segment *g)
{
	buf_reset(&s->scratch);
	segfmt_put_items(&s->scratch, g->it, g->n);
	if (write_row(s, g->fresh ? S_INS_SEG : S_PUT_SEG, g->batch, g->seg, &s->scratch) < 0)
		return -1;
	g->dirty = g->fresh = 0;
	return 0;
}

void kept_put(struct kept *k, int64_t batch, int64_t lo, int64_t hi, const struct buf *blob)
{
	struct kept *e = &k[(uint64_t)batch % KEPT];
	if (blob->len > KEPT_BYTES) {
		if (e->batch == batch)
			e->batch = 0; /* an older one of the batch must not stay */
		return;
	}
	e->batch = batch;
	e->lo = lo;
	e->hi = hi;
	buf_reset(&e->blob);
	buf_add(&e->blob, blob->data, blob->len);
}

const struct kept *kept_get(const struct kept *k, int64_t batch, int64_t key)
{
	const struct kept *e = &k[(uint64_t)batch % KEPT];
	return e->batch == batch && key >= e->lo && key <= e->hi ? e : NULL;
}

void kept_drop(struct store *s, int64_t batch, int all)
{
	if (all) {
		for (int i = 0; i < KEPT; i++)
			s->kept_args[i].batch = s->kept_groups[i].batch = 0;
		return;
	}
	unsigned slot = (unsigned)((uint64_t)batch % KEPT);
	struct kept *a = &s->kept_args[slot], *g = &s->kept_groups[slot];
	if (a->batch == batch)
		a->batch = 0;
	if (g->batch == batch)
		g->batch = 0;
}

static int group_write(struct store *s, struct group *gr)
{
	if (gr->n == 0)
		return 0;
	if (write_row(s, S_INS_GROUP, gr->batch, gr->last_seq, &gr->recs) < 0)
		return -1;
	kept_put(s->kept_groups, gr->batch, gr->first_seq, gr->last_seq, &gr->recs);
	gr->n = 0;
	buf_reset(&gr->recs);
	return 0;
}

/* Writes the outcome groups (reads of outcomes need them in the database). */
int flush_groups(struct store *s)
{
	for (size_t i = 0; i < s->ngroups; i++)
		if (group_write(s, &s->groups[i]) < 0)
			return -1;
	for (size_t i = 0; i < s->ngroups; i++)
		buf_free(&s->groups[i].recs);
	s->ngroups = 0;
	return 0;
}

/* ---- the segment cache ---- */

static unsigned seg_bucket(int64_t batch, int64_t seg)
{
	return (unsigned)(((uint64_t)batch * 2654435761u + (uint64_t)seg * 40503u) % SEG_HASH);
}

/* The use order, a doubly linked list from seg_oldest to seg_newest. */
static void use_unlink(struct store *s, struct segment *g)
{
	*(g->older ? &g->older->newer : &s->seg_oldest) = g->newer;
	*(g->newer ? &g->newer->older : &s->seg_newest) = g->older;
	g->older = g->newer = NULL;
}

static void use_push(struct store *s, struct segment *g, int newest)
{
	struct segment **end = newest ? &s->seg_newest : &s->seg_oldest;
	if (newest)
		g->older = *end;
	else
		g->newer = *end;
	if (*end)
		*(newest ? &(*end)->newer : &(*end)->older) = g;
	else
		s->seg_oldest = s->seg_newest = g;
	*end = g;
}

/* Moves g (every entry is in the use order) to its newest end. */
static void seg_touch(struct store *s, struct segment *g)
{
	if (s->seg_newest == g)
		return;
	use_unlink(s, g);
	use_push(s, g, 1);
}

static void seg_bind(struct store *s, struct segment *g, int64_t batch, int64_t seg)
{
	g->batch = batch;
	g->seg = seg;
	struct segment **head = &s->seg_hash[seg_bucket(batch, seg)];
	g->hnext = *head;
	*head = g;
	seg_touch(s, g);
	s->last_seg = g;
}

/* Empties g (its contents are dropped, written or not) and makes it the
 * next to be reused. */
static void seg_unbind(struct store *s, struct segment *g)
{
	if (g->batch >= 0) {
		struct segment **p = &s->seg_hash[seg_bucket(g->batch, g->seg)];
		while (*p != g)
			p = &(*p)->hnext;
		*p = g->hnext;
	}
	g->batch = -1;
	g->dirty = g->fresh = 0;
	g->hnext = NULL;
	if (s->last_seg == g)
		s->last_seg = NULL;
	if (s->seg_oldest == g)
		return;
	use_unlink(s, g);
	use_push(s, g, 0);
}

void seg_drop_all(struct store *s)
{
	for (int i = 0; i < s->nsegs; i++) {
		struct segment *g = s->segs[i];
		g->batch = -1;
		g->dirty = g->fresh = 0;
		g->hnext = NULL;
	}
	memset(s->seg_hash, 0, sizeof s->seg_hash);
	s->last_seg = NULL;
}

/* The cached segment, or NULL. */
static struct segment *seg_find(struct store *s, int64_t batch, int64_t seg)
{
	struct segment *g = s->last_seg;
	if (g && g->batch == batch && g->seg == seg)
		return g;
	for (g = s->seg_hash[seg_bucket(batch, seg)]; g; g = g->hnext)
		if (g->batch == batch && g->seg == seg)
			return s->last_seg = g;
	return NULL;
}

/* A free entry: a new one while the cache has room, else the oldest (an
 * empty one is the oldest), written first if dirty. NULL on a write
 * error. */
static struct segment *seg_slot(struct store *s)
{
	struct segment *g;
	if (s->nsegs < SEG_CACHE) {
		g = calloc(1, sizeof *g);
		if (!g)
			abort();
		g->batch = -1;
		s->segs[s->nsegs++] = g;
		use_push(s, g, 1);
		return g;
	}
	g = s->seg_oldest;
	if (g->dirty && seg_write(s, g) < 0)
		return NULL;
	seg_unbind(s, g);
	return g;
}

/* The segment as the transaction sees it: 1 and *out, 0 if the batch has no
 * such segment, -1 on error. */
int seg_get(struct store *s, int64_t batch, int64_t seg, struct segment **out)
{
	struct segment *g = seg_find(s, batch, seg);
	if (!g) {
		if (!(g = seg_slot(s)))
			return -1;
		sqlite3_stmt *st = s->st[S_GET_SEG];
		sqlite3_bind_int64(st, 1, batch);
		sqlite3_bind_int64(st, 2, seg);
		int rc = sqlite3_step(st);
		int n = 0;
		if (rc == SQLITE_ROW)
			n = segfmt_get_items(sqlite3_column_blob(st, 0),
					     (size_t)sqlite3_column_bytes(st, 0), g->it, SEG_ITEMS);
		sqlite3_reset(st);
		if (rc == SQLITE_DONE)
			return 0;
		if (rc != SQLITE_ROW)
			return db_fail(s, "segment");
		if (n <= 0) {
			log_error("db_corrupt", "batch=%lld seg=%lld msg=\"unreadable segment\"",
				  (long long)batch, (long long)seg);
			snprintf(s->last_error, sizeof s->last_error, "a segment of batch %lld is unreadable",
				 (long long)batch);
			return -1;
		}
		seg_bind(s, g, batch, seg);
		g->n = n;
		g->dirty = 0;
	} else {
		seg_touch(s, g);
	}
	*out = g;
	return 1;
}

/* The item batch/idx: 1 with *g its segment and *it the item, 0 if there
 * is none, -1 on error. */
static int item_get(struct store *s, int64_t batch, int64_t idx, struct segment **g,
		    struct seg_item **it)
{
	if (idx < 0)
		return 0;
	int rc = seg_get(s, batch, idx / SEG_ITEMS, g);
	if (rc <= 0)
		return rc;
	if (idx % SEG_ITEMS >= (*g)->n)
		return 0;
	*it = &(*g)->it[idx % SEG_ITEMS];
	return 1;
}

/* Drops what is cached of batch (retention deletes its rows). */
void store_forget(struct store *s, int64_t batch)
{
	bcache_forget(s, batch);
	for (int i = 0; i < s->nsegs; i++)
		if (s->segs[i]->batch == batch)
			seg_unbind(s, s->segs[i]);
	if (s->rg.batch == batch)
		s->rg.batch = -1;
	kept_drop(s, batch, 0);
	if (s->resume.batch == batch)
		s->resume.batch = -1;
	if (s->cursors[(uint64_t)batch % NCURSORS].batch == batch)
		s->cursors[(uint64_t)batch % NCURSORS].batch = 0;
}

/* ---- claim positions ---- */

/* Direct-mapped by id: two batches that share a slot take turns, and the
 * one without it claims from its start (the states tell what is pending). */
static struct cursor *cursor_find(struct store *s, int64_t batch)
{
	struct cursor *c = &s->cursors[(uint64_t)batch % NCURSORS];
	return c->batch == batch ? c : NULL;
}

static void cursor_set(struct store *s, int64_t batch, int64_t idx)
{
	struct cursor *c = &s->cursors[(uint64_t)batch % NCURSORS];
	c->batch = batch;
	c->idx = idx;
}

/* An item of batch became pending again. */
static void cursor_lower(struct store *s, int64_t batch, int64_t idx)
{
	struct cursor *c = cursor_find(s, batch);
	if (c && idx < c->idx)
		c->idx = idx;
}

/* ---- outcomes ---- */

/* Appends f (its done_seq set) to its batch's group, writing the group first
 * if it is full. 0 / -1. */
static int outcome_add(struct store *s, int64_t batch, const struct future *f)
{
	struct group *gr = NULL;
	for (size_t i = s->ngroups; i-- > 0;)
		if (s->groups[i].batch == batch) {
			gr = &s->groups[i];
			break;
		}
	if (!gr) {
		if (s->ngroups == s->capgroups) {
			s->capgroups = s->capgroups ? s->capgroups * 2 : 16;
			s->groups = realloc(s->groups, s->capgroups * sizeof *s->groups);
			if (!s->groups)
				abort();
		}
		gr = &s->groups[s->ngroups++];
		*gr = (struct group){.batch = batch};
	}
	size_t text = f->result_len + (f->error ? strlen(f->error) : 0);
	if (gr->n == GROUP_RECS || (gr->n > 0 && gr->recs.len + text + 64 > GROUP_BYTES))
		if (group_write(s, gr) < 0)
			return -1;
	segfmt_put_outcome(&gr->recs, f);
	if (gr->n++ == 0)
		gr->first_seq = f->done_seq;
	gr->last_seq = f->done_seq;
	return 0;
}

/* Opens the transaction and finds item batch/idx for a change from state
 * `from`: 1 with *it (its segment marked dirty), 0 if it is not in that
 * state (or does not exist), -1 on error. */
static int item_edit(struct store *s, int64_t batch, int64_t idx, enum fstate from,
		     struct seg_item **it)
{
	struct segment *g;
	if (db_begin(s) < 0)
		return -1;
	int rc = item_get(s, batch, idx, &g, it);
	if (rc <= 0 || (*it)->state != from)
		return rc < 0 ? -1 : 0;
	g->dirty = 1;
	return 1;
}

/* Moves a running (or, for cancels, pending) item to done state `to`, with
 * the next completion cursor. 1 done, 0 if it was not in state `from`, -1. */
static int item_finish(struct store *s, int64_t batch, int64_t idx, enum fstate from, enum fstate to,
		       enum ferr type, const char *text, size_t len, int64_t started_ms, int64_t now_ms)
{
	struct seg_item *it;
	int rc = item_edit(s, batch, idx, from, &it);
	if (rc <= 0)
		return rc;
	it->state = (uint8_t)to;
	it->done_seq = ++s->done_seq;
	if (started_ms >= 0)
		it->started_ms = started_ms;
	struct future f = {.index = idx, .state = to, .error_type = type, .attempts = it->attempts,
			   .worker = it->worker, .started_ms = it->started_ms, .finished_ms = now_ms,
			   .done_seq = it->done_seq};
	if (to == FS_FINISHED) {
		f.result = text;
		f.result_len = len;
	} else if (to == FS_FAILED) {
		f.error = text;
	}
	if (outcome_add(s, batch, &f) < 0)
		return -1;
	s->now_ms = now_ms;
	move_count(s, batch, from, to, 1);
	return 1;
}

int store_finish(struct store *s, int64_t batch, int64_t idx, const char *result, size_t len,
		 int64_t started_ms, int64_t now_ms)
{
	int rc = item_finish(s, batch, idx, FS_RUNNING, FS_FINISHED, FE_NONE, result, len, started_ms,
			     now_ms);
	return rc < 0 ? -1 : 0;
}

int store_fail(struct store *s, int64_t batch, int64_t idx, enum ferr type, const char *msg,
	       int64_t started_ms, int64_t now_ms)
{
	int rc = item_finish(s, batch, idx, FS_RUNNING, FS_FAILED, type, msg ? msg : "", 0, started_ms,
			     now_ms);
	return rc < 0 ? -1 : 0;
}

int store_cancel_one(struct store *s, int64_t batch, int64_t idx, int64_t now_ms)
{
	return item_finish(s, batch, idx, FS_PENDING, FS_CANCELLED, FE_NONE, NULL, 0, -1, now_ms);
}

int store_cancel_running(struct store *s, int64_t batch, int64_t idx, int64_t now_ms)
{
	return item_finish(s, batch, idx, FS_RUNNING, FS_CANCELLED, FE_NONE, NULL, 0, -1, now_ms);
}

int store_cancel_pending(struct store *s, int64_t batch, int64_t size, int64_t now_ms)
{
	if (db_begin(s) < 0)
		return -1;
	/* Each cancelled future gets its own completion cursor, base + idx. */
	int64_t base = s->done_seq + 1, n = 0;
	struct cursor *c = cursor_find(s, batch);
	for (int64_t seg = c ? c->idx / SEG_ITEMS : 0;; seg++) {
		struct segment *g;
		int rc = seg_get(s, batch, seg, &g);
		if (rc < 0)
			return -1;
		if (rc == 0)
			break;
		for (int k = 0; k < g->n; k++) {
			struct seg_item *it = &g->it[k];
			if (it->state != FS_PENDING)
				continue;
			g->dirty = 1;
			it->state = FS_CANCELLED;
			it->done_seq = base + seg * SEG_ITEMS + k;
			struct future f = {.index = seg * SEG_ITEMS + k, .state = FS_CANCELLED,
					   .attempts = it->attempts, .started_ms = -1,
					   .finished_ms = now_ms, .done_seq = it->done_seq};
			if (outcome_add(s, batch, &f) < 0)
				return -1;
			n++;
		}
	}
	if (n > 0) {
		s->done_seq = base + size; /* past every cursor just given */
		s->now_ms = now_ms;
		move_count(s, batch, FS_PENDING, FS_CANCELLED, n);
	}
	return (int)(n > INT32_MAX ? INT32_MAX : n);
}

/* Running -> pending, the attempt given back or kept. */
void to_pending(struct store *s, int64_t batch, int64_t idx, struct seg_item *it, int give_back)
{
	it->state = FS_PENDING;
	if (give_back && it->attempts > 0)
		it->attempts--;
	it->worker = 0;
	it->started_ms = -1;
	cursor_lower(s, batch, idx);
	move_count(s, batch, FS_RUNNING, FS_PENDING, 1);
}

int store_requeue(struct store *s, int64_t batch, int64_t idx)
{
	struct seg_item *it;
	int rc = item_edit(s, batch, idx, FS_RUNNING, &it);
	if (rc <= 0)
		return rc;
	to_pending(s, batch, idx, it, 1);
	return 0;
}

int store_retry(struct store *s, int64_t batch, int64_t idx, int64_t retries)
{
	struct seg_item *it;
	int rc = item_edit(s, batch, idx, FS_RUNNING, &it);
	if (rc <= 0)
		return rc;
	if (it->attempts > retries)
		return 0; /* it has had its runs: the caller fails it */
	to_pending(s, batch, idx, it, 0);
	return 1;
}

static void take(struct segment *g, int k, int64_t pid, int64_t now_ms)
{
	struct seg_item *it = &g->it[k];
	g->dirty = 1;
	it->state = FS_RUNNING;
	it->attempts++;
	it->worker = pid;
	it->started_ms = now_ms;
}

int store_claim(struct store *s, int64_t batch, int64_t max, int64_t pid, int64_t now_ms,
		int64_t *idx, struct buf *args)
{
	if (db_begin(s) < 0)
		return -1;
	struct cursor *c = cursor_find(s, batch);
	int64_t pos = c ? c->idx : 0, n = 0;
	sqlite3_stmt *st = s->st[S_GET_ARGS];
	while (n < max) {
		struct segment *g;
		int64_t seg = pos / SEG_ITEMS;
		int rc = seg_get(s, batch, seg, &g);
		if (rc < 0)
			return -1;
		if (rc == 0)
			break;
		/* The arguments are read only if the segment has a pending item. */
		const char *line = NULL, *end = NULL;
		int stepped = 0; /* line is in st's row */
		int at = 0; /* the index in the segment that line is at */
		int k = (int)(pos % SEG_ITEMS);
		for (; k < g->n && n < max; k++) {
			if (g->it[k].state != FS_PENDING)
				continue;
			if (!line) {
				const struct kept *ka = kept_get(s->kept_args, batch, seg);
				if (ka) {
					line = ka->blob.data;
					end = line + ka->blob.len;
				} else {
					sqlite3_bind_int64(st, 1, batch);
					sqlite3_bind_int64(st, 2, seg);
					if (sqlite3_step(st) != SQLITE_ROW) {
						sqlite3_reset(st);
						return db_fail(s, "claim_args");
					}
					line = sqlite3_column_blob(st, 0);
					end = line + sqlite3_column_bytes(st, 0);
					stepped = 1;
				}
			}
			for (; at < k && line < end; at++) {
				const char *nl = memchr(line, '\n', (size_t)(end - line));
				line = nl ? nl + 1 : end;
			}
			const char *nl = line < end ? memchr(line, '\n', (size_t)(end - line)) : NULL;
			if (!nl) {
				if (stepped)
					sqlite3_reset(st);
				snprintf(s->last_error, sizeof s->last_error,
					 "the arguments of batch %lld are unreadable", (long long)batch);
				log_error("db_corrupt", "batch=%lld seg=%lld msg=\"unreadable arguments\"",
					  (long long)batch, (long long)seg);
				return -1;
			}
			buf_add(args, line, (size_t)(nl + 1 - line));
			line = nl + 1; /* the next line, without scanning this one again */
			at = k + 1;
			take(g, k, pid, now_ms);
			idx[n++] = seg * SEG_ITEMS + k;
		}
		if (stepped)
			sqlite3_reset(st);
		pos = seg * SEG_ITEMS + k;
		if (k < g->n || g->n < SEG_ITEMS)
			break; /* max taken, or the batch's last segment */
	}
	cursor_set(s, batch, pos);
	if (n == 0)
		return 0;
	s->now_ms = now_ms;
	move_count(s, batch, FS_PENDING, FS_RUNNING, n);
	return (int)n;
}

int store_claim_range(struct store *s, int64_t batch, int64_t first, int64_t last, int64_t pid,
		      int64_t now_ms)
{
	if (db_begin(s) < 0)
		return -1;
	int n = 0;
	for (int64_t i = first; i <= last; i++) {
		struct segment *g;
		struct seg_item *it;
		int rc = item_get(s, batch, i, &g, &it);
		if (rc < 0)
			return -1;
		if (rc == 0)
			break;
		if (it->state == FS_PENDING) {
			take(g, (int)(i % SEG_ITEMS), pid, now_ms);
			n++;
		}
	}
	s->now_ms = now_ms;
	move_count(s, batch, FS_PENDING, FS_RUNNING, n);
	return n;
}

/* ---- reading futures ---- */

/* The future of a segment's item that is not done. */
static void open_future(const struct seg_item *it, int64_t idx, struct future *f)
{
	*f = (struct future){.index = idx, .state = (enum fstate)it->state, .attempts = it->attempts,
			     .worker = it->worker, .started_ms = it->started_ms, .finished_ms = -1};
}

static int rg_decode(struct store *s, int64_t batch, int64_t seq);

/* Decodes the group of batch holding cursor seq into s->rg. 1, 0 (none), -1. */
static int rg_load(struct store *s, int64_t batch, int64_t seq)
{
	const struct kept *w = kept_get(s->kept_groups, batch, seq);
	if (w) {
		/* Groups of a batch hold disjoint, increasing cursors: this is
		 * the first whose last_seq >= seq, what S_GROUP_AT finds. */
		buf_reset(&s->rg.blob);
		buf_add(&s->rg.blob, w->blob.data, w->blob.len);
		return rg_decode(s, batch, seq);
	}
	sqlite3_stmt *st = s->st[S_GROUP_AT];
	sqlite3_bind_int64(st, 1, batch);
	sqlite3_bind_int64(st, 2, seq);
	int rc = sqlite3_step(st);
	s->rg.batch = -1;
	if (rc == SQLITE_ROW) {
		buf_reset(&s->rg.blob);
		buf_add(&s->rg.blob, sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0));
	}
	sqlite3_reset(st);
	if (rc == SQLITE_DONE)
		return 0;
	if (rc != SQLITE_ROW)
		return db_fail(s, "outcomes");
	return rg_decode(s, batch, seq);
}

/* Decodes s->rg.blob, the group of batch holding seq. 1, or -1. */
static int rg_decode(struct store *s, int64_t batch, int64_t seq)
{
	const unsigned char *p = (const unsigned char *)s->rg.blob.data, *end = p + s->rg.blob.len;
	s->rg.batch = -1;
	s->rg.n = 0;
	while (p < end) {
		if (s->rg.n == s->rg.cap) {
			s->rg.cap = s->rg.cap ? s->rg.cap * 2 : 64;
			s->rg.f = realloc(s->rg.f, (size_t)s->rg.cap * sizeof *s->rg.f);
			if (!s->rg.f)
				abort();
		}
		if (segfmt_get_outcome(&p, end, &s->rg.f[s->rg.n]) < 0) {
			log_error("db_corrupt", "batch=%lld seq=%lld msg=\"unreadable outcomes\"",
				  (long long)batch, (long long)seq);
			return -1;
		}
		s->rg.n++;
	}
	s->rg.batch = batch;
	return 1;
}

/* The outcome with cursor seq of batch, or NULL (then *err says if that is
 * an error). Valid until the next call. */
static const struct future *outcome_at(struct store *s, int64_t batch, int64_t seq, int *err)
{
	*err = 0;
	for (int pass = 0; pass < 2; pass++) {
		if (s->rg.batch == batch && s->rg.n > 0 && seq >= s->rg.f[0].done_seq &&
		    seq <= s->rg.f[s->rg.n - 1].done_seq) {
			int lo = 0, hi = s->rg.n - 1;
			while (lo < hi) {
				int mid = (lo + hi) / 2;
				if (s->rg.f[mid].done_seq < seq)
					lo = mid + 1;
				else
					hi = mid;
			}
			return s->rg.f[lo].done_seq == seq ? &s->rg.f[lo] : NULL;
		}
		if (pass == 0) {
			int rc = rg_load(s, batch, seq);
			if (rc <= 0) {
				*err = rc < 0;
				return NULL;
			}
		}
	}
	return NULL;
}

/* Calls fn for the item: its outcome if done. 0, or -1 on error. */
static int emit(struct store *s, int64_t batch, int64_t idx, const struct seg_item *it,
		void (*fn)(void *, const struct future *), void *arg)
{
	struct future f;
	if (it->state >= FS_FINISHED) {
		int err;
		const struct future *o = outcome_at(s, batch, it->done_seq, &err);
		if (!o) {
			if (!err)
				log_error("db_corrupt", "batch=%lld idx=%lld seq=%lld msg=\"outcome missing\"",
					  (long long)batch, (long long)idx, (long long)it->done_seq);
			return -1;
		}
		fn(arg, o);
		return 0;
	}
	open_future(it, idx, &f);
	fn(arg, &f);
	return 0;
}

int store_future_get(struct store *s, int64_t batch, int64_t idx,
		     void (*fn)(void *arg, const struct future *f), void *arg)
{
	struct segment *g;
	struct seg_item *it;
	if (flush_groups(s) < 0)
		return -1;
	int rc = item_get(s, batch, idx, &g, &it);
	if (rc <= 0)
		return rc;
	return emit(s, batch, idx, it, fn, arg) < 0 ? -1 : 1;
}

/* Submission order: the items after `after`. */
static int futures_by_index(struct store *s, int64_t batch, int64_t after, int64_t limit,
			    void (*fn)(void *, const struct future *), void *arg)
{
	int64_t n = 0;
	for (int64_t i = after < 0 ? 0 : after + 1; limit < 0 || n < limit;) {
		struct segment *g;
		int rc = seg_get(s, batch, i / SEG_ITEMS, &g);
		if (rc < 0)
			return -1;
		if (rc == 0)
			break;
		int k = (int)(i % SEG_ITEMS);
		if (k >= g->n)
			break;
		for (; k < g->n && (limit < 0 || n < limit); k++, i++, n++) {
			/* fn may not touch the store; g stays put meanwhile. */
			if (emit(s, batch, i, &g->it[k], fn, arg) < 0)
				return -1;
		}
		if (k < g->n)
			break;
	}
	return (int)n;
}

/* Completion order: outcomes with cursors in (after, committed]. */
static int futures_by_done(struct store *s, int64_t batch, int64_t after, int64_t limit,
			   void (*fn)(void *, const struct future *), void *arg)
{
	sqlite3_stmt *st = s->st[S_GROUPS_AFTER];
	sqlite3_bind_int64(st, 1, batch);
	sqlite3_bind_int64(st, 2, after);
	int64_t n = 0;
	int rc = SQLITE_DONE, stop = 0;
	while (!stop && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		const unsigned char *blob = sqlite3_column_blob(st, 0), *p = blob;
		const unsigned char *end = p + sqlite3_column_bytes(st, 0);
		int64_t last_seq = sqlite3_column_int64(st, 1);
		if (s->resume.batch == batch && s->resume.last_seq == last_seq &&
		    s->resume.seq == after && s->resume.off <= end - blob)
			p += s->resume.off;
		struct future f;
		while (p < end) {
			const unsigned char *rec = p;
			if (segfmt_get_outcome(&p, end, &f) < 0) {
				sqlite3_reset(st);
				log_error("db_corrupt", "batch=%lld msg=\"unreadable outcomes\"", (long long)batch);
				return -1;
			}
			if (f.done_seq <= after)
				continue;
			if (f.done_seq > s->done_seq_committed || (limit >= 0 && n >= limit)) {
				s->resume.batch = batch;
				s->resume.last_seq = last_seq;
				s->resume.seq = after;
				s->resume.off = (int)(rec - blob);
				stop = 1;
				break;
			}
			fn(arg, &f);
			after = f.done_seq;
			n++;
		}
	}
	if (!stop && rc != SQLITE_DONE) {
		sqlite3_reset(st);
		return db_fail(s, "futures");
	}
	sqlite3_reset(st);
	return (int)n;
}

int store_futures(struct store *s, int64_t batch, int completed, int64_t after, int64_t limit,
		  void (*fn)(void *arg, const struct future *f), void *arg)
{
	if (flush_groups(s) < 0)
		return -1;
	if (completed)
		return futures_by_done(s, batch, after < 0 ? 0 : after, limit, fn, arg);
	return futures_by_index(s, batch, after, limit, fn, arg);
}

/* ---- storing a new batch's items ---- */

struct builder *builder_for(struct store *s, int64_t batch)
{
	for (size_t i = 0; i < s->nbuilders; i++)
		if (s->builders[i].batch == batch)
			return &s->builders[i];
	if (s->nbuilders == s->capbuilders) {
		s->capbuilders = s->capbuilders ? s->capbuilders * 2 : 8;
		s->builders = realloc(s->builders, s->capbuilders * sizeof *s->builders);
		if (!s->builders)
			abort();
	}
	struct builder *bl = &s->builders[s->nbuilders++];
	*bl = (struct builder){.batch = batch};
	return bl;
}

void builder_drop(struct store *s, int64_t batch)
{
	for (size_t i = 0; i < s->nbuilders; i++)
		if (s->builders[i].batch == batch) {
			buf_free(&s->builders[i].args);
			s->builders[i] = s->builders[--s->nbuilders];
			return;
		}
}

/* Writes the builder's arguments row, and makes its segment (its items
 * pending) a fresh entry of the cache: it is inserted when written back,
 * with whatever claims and results the transaction adds to it by then
 * (single-item batches: one write, not an insert, a read and an update). */
int builder_write(struct store *s, struct builder *bl)
{
	if (bl->n == 0)
		return 0;
	int64_t seg = (bl->next - 1) / SEG_ITEMS;
	if (write_row(s, S_INS_ARGS, bl->batch, seg, &bl->args) < 0)
		return -1;
	kept_put(s->kept_args, bl->batch, seg, seg, &bl->args);
	struct segment *g = seg_slot(s);
	if (!g)
		return -1;
	for (int k = 0; k < bl->n; k++)
		g->it[k] = (struct seg_item){.started_ms = -1};
	seg_bind(s, g, bl->batch, seg);
	g->n = bl->n;
	g->dirty = g->fresh = 1;
	bl->n = 0;
	buf_reset(&bl->args);
	return 0;
}

int add_item(struct store *s, int64_t batch, int64_t idx, const char *args, size_t len)
{
	struct builder *bl = builder_for(s, batch);
	if (idx != bl->next || memchr(args, '\n', len)) {
		log_error("store_item", "batch=%lld idx=%lld msg=\"items must come in order, one line each\"",
			  (long long)batch, (long long)idx);
		return -1;
	}
	buf_add(&bl->args, args, len);
	buf_addc(&bl->args, '\n');
	bl->n++;
	bl->next++;
	return bl->n == SEG_ITEMS ? builder_write(s, bl) : 0;
}
