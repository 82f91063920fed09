/* views.c - the JSON shapes of batches and futures (see views.h). */
#include "views.h"

#include <string.h>

const char *batch_state(const struct batch *b)
{
	if (b->counts[FS_PENDING] + b->counts[FS_RUNNING] == 0)
		return "done";
	if (b->counts[FS_PENDING] == b->size)
		return "pending";
	return "running";
}

int batch_done(const struct batch *b)
{
	return b->counts[FS_PENDING] + b->counts[FS_RUNNING] == 0;
}

void batch_json(struct buf *o, const struct batch *b)
{
	/* No printf here: these objects are most of a stream's output. */
	buf_adds(o, "{\"id\":");
	buf_json_i64(o, b->id);
	buf_adds(o, ",\"task\":");
	buf_json_cstr(o, b->task);
	buf_adds(o, ",\"size\":");
	buf_json_i64(o, b->size);
	buf_adds(o, ",\"chunksize\":");
	buf_json_i64(o, b->chunksize);
	buf_adds(o, ",\"timeout\":");
	if (b->timeout > 0)
		buf_json_double(o, b->timeout);
	else
		buf_adds(o, "null");
	buf_adds(o, ",\"retries\":");
	buf_json_i64(o, b->retries);
	buf_adds(o, ",\"state\":");
	buf_json_cstr(o, batch_state(b));
	buf_adds(o, ",\"counts\":{");
	for (int k = 0; k < FS_NSTATES; k++) {
		if (k)
			buf_addc(o, ',');
		buf_json_cstr(o, fstate_names[k]);
		buf_addc(o, ':');
		buf_json_i64(o, b->counts[k]);
	}
	buf_adds(o, "},\"created_at\":");
	buf_json_time(o, b->created_ms);
	buf_adds(o, ",\"finished_at\":");
	buf_json_time(o, b->finished_ms);
	buf_addc(o, '}');
}

/* Writes the literal s at p; the end. */
#define PUT_LIT(p, s) (memcpy((p), (s), sizeof(s) - 1), (p) + sizeof(s) - 1)

/* The fields after the state's own, from ",\"attempts\"" to the closing
 * brace, at p (room reserved); the end. */
static char *future_tail(char *p, const struct future *f)
{
	p = PUT_LIT(p, ",\"attempts\":");
	p = fmt_i64(p, f->attempts);
	p = PUT_LIT(p, ",\"worker\":");
	p = f->worker > 0 ? fmt_i64(p, f->worker) : PUT_LIT(p, "null");
	p = PUT_LIT(p, ",\"started_at\":");
	p = fmt_time(p, f->started_ms);
	p = PUT_LIT(p, ",\"finished_at\":");
	p = fmt_time(p, f->finished_ms);
	*p++ = '}';
	return p;
}

/* The room future_tail and the head (index, state) need. */
#define FUTURE_ROOM (64 + 3 * FMT_I64_MAX + 2 * FMT_TIME_MAX + 64)

void future_json(struct buf *o, const struct future *f)
{
	/* One reservation and plain stores: these objects are most of a
	 * stream's bytes (W1 writes a million of them). A failure's message is
	 * escaped by buf_json_cstr, between the two halves. */
	size_t text = f->state == FS_FINISHED && f->result ? f->result_len : 0;
	buf_reserve(o, FUTURE_ROOM + text);
	char *p = o->data + o->len;
	p = PUT_LIT(p, "{\"index\":");
	p = fmt_i64(p, f->index);
	/* The state names are plain words: no escaping to look for. */
	p = PUT_LIT(p, ",\"state\":\"");
	size_t sl = strlen(fstate_names[f->state]);
	memcpy(p, fstate_names[f->state], sl);
	p += sl;
	*p++ = '"';
	if (f->state == FS_FINISHED) {
		p = PUT_LIT(p, ",\"result\":");
		if (f->result) {
			memcpy(p, f->result, text);
			p += text;
		} else {
			p = PUT_LIT(p, "null");
		}
	} else if (f->state == FS_FAILED) {
		o->len = (size_t)(p - o->data);
		buf_adds(o, ",\"error\":{\"type\":");
		buf_json_cstr(o, f->error_type > FE_NONE && f->error_type <= FE_WORKER_DIED
				     ? ferr_names[f->error_type]
				     : "task_error");
		buf_adds(o, ",\"message\":");
		buf_json_cstr(o, f->error ? f->error : "");
		buf_addc(o, '}');
		buf_reserve(o, FUTURE_ROOM);
		p = o->data + o->len;
	}
	p = future_tail(p, f);
	o->len = (size_t)(p - o->data);
	o->data[o->len] = '\0';
}
