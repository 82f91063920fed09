/* stream.c - live result streams (see stream.h). */
#include "stream.h"

#include <stdlib.h>

#include "loop.h"
#include "views.h"

#define PAGE 256 /* futures read per fill: bounds the work of one call */

struct stream {
	struct store *store;
	int64_t batch;
	struct stream_opts o;
	int64_t cursor;
	int64_t deadline_ms, heartbeat_ms; /* monotonic; -1: none */
};

struct page {
	struct stream *sm;
	struct buf *out;
	int n, blocked;
};

static void on_future(void *arg, const struct future *f)
{
	struct page *p = arg;
	struct stream *sm = p->sm;
	if (p->blocked)
		return;
	if (!sm->o.completed && f->state < FS_FINISHED) {
		p->blocked = 1; /* map order: wait for this one */
		return;
	}
	sm->cursor = sm->o.completed ? f->done_seq : f->index;
	if (sm->o.sse) {
		buf_printf(p->out, "id: %lld\ndata: ", (long long)sm->cursor);
		future_json(p->out, f);
		buf_adds(p->out, "\n\n");
	} else {
		future_json(p->out, f);
		buf_addc(p->out, '\n');
	}
	p->n++;
}

static void write_end(struct stream *sm, struct buf *out, const char *why)
{
	if (sm->o.sse)
		buf_adds(out, "event: end\ndata: ");
	buf_adds(out, "{\"end\":");
	buf_json_cstr(out, why);
	buf_adds(out, ",\"next\":");
	if (sm->cursor >= 0)
		buf_json_i64(out, sm->cursor);
	else
		buf_adds(out, "null");
	buf_adds(out, sm->o.sse ? "}\n\n" : "}\n");
}

static int any_change(struct http_req *r)
{
	(void)r;
	return 1; /* the batch changed: look */
}

static int fill(struct http_req *r, struct buf *out)
{
	struct stream *sm = http_data(r);
	if (http_woken(r) == WAKE_SHUTDOWN) {
		write_end(sm, out, "shutdown");
		return 0;
	}
	struct page p = {.sm = sm, .out = out};
	if (store_futures(sm->store, sm->batch, sm->o.completed, sm->cursor, PAGE, on_future, &p) < 0) {
		write_end(sm, out, "error");
		return 0;
	}
	if (p.n)
		return 1;
	struct batch b;
	if (store_batch_get(sm->store, sm->batch, &b) != 1) {
		write_end(sm, out, "error");
		return 0;
	}
	/* Done, and nothing after the cursor: everything is written. Unless
	 * the turn has not committed yet: completion-order reads stop at the
	 * last commit, while the batch's counts already show this turn's
	 * results; the commit wakes this stream for them. */
	if (batch_done(&b) && !store_dirty(sm->store)) {
		if (sm->o.sse) {
			buf_adds(out, "event: done\ndata: ");
			batch_json(out, &b);
			buf_adds(out, "\n\n");
		}
		return 0;
	}
	int64_t now = now_mono_ms();
	if (sm->deadline_ms >= 0 && now >= sm->deadline_ms) {
		write_end(sm, out, "timeout");
		return 0;
	}
	if (sm->heartbeat_ms >= 0 && now >= sm->heartbeat_ms) {
		buf_adds(out, ": keep-alive\n\n");
		sm->heartbeat_ms = now + (int64_t)(sm->o.heartbeat_s * 1000);
		return 1;
	}
	int64_t wake_at = sm->deadline_ms;
	if (sm->heartbeat_ms >= 0 && (wake_at < 0 || sm->heartbeat_ms < wake_at))
		wake_at = sm->heartbeat_ms;
	http_park(r, sm->batch, wake_at, any_change);
	return 1;
}

void stream_results(struct http_req *r, struct store *s, int64_t batch, const struct stream_opts *o)
{
	struct stream *sm = calloc(1, sizeof *sm);
	if (!sm)
		abort();
	int64_t now = now_mono_ms();
	*sm = (struct stream){
	    .store = s,
	    .batch = batch,
	    .o = *o,
	    .cursor = o->after,
	    .deadline_ms = o->timeout_s > 0 ? now + (int64_t)(o->timeout_s * 1000) : -1,
	    .heartbeat_ms = o->sse && o->heartbeat_s > 0 ? now + (int64_t)(o->heartbeat_s * 1000) : -1,
	};
	http_set_data(r, sm, free);
	http_stream(r, 200, o->sse ? "text/event-stream" : "application/x-ndjson", fill);
}
