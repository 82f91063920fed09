/* views.c - the JSON shapes of batches and futures (see views.h). */
#include "views.h"

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

void future_json(struct buf *o, const struct future *f)
{
	buf_adds(o, "{\"index\":");
	buf_json_i64(o, f->index);
	/* The state names are plain words: no escaping to look for. */
	buf_adds(o, ",\"state\":\"");
	buf_adds(o, fstate_names[f->state]);
	buf_addc(o, '"');
	if (f->state == FS_FINISHED) {
		buf_adds(o, ",\"result\":");
		if (f->result)
			buf_add(o, f->result, f->result_len);
		else
			buf_adds(o, "null");
	} else if (f->state == FS_FAILED) {
		buf_adds(o, ",\"error\":{\"type\":");
		buf_json_cstr(o, f->error_type > FE_NONE && f->error_type <= FE_WORKER_DIED
				     ? ferr_names[f->error_type]
				     : "task_error");
		buf_adds(o, ",\"message\":");
		buf_json_cstr(o, f->error ? f->error : "");
		buf_addc(o, '}');
	}
	buf_adds(o, ",\"attempts\":");
	buf_json_i64(o, f->attempts);
	buf_adds(o, ",\"worker\":");
	if (f->worker > 0)
		buf_json_i64(o, f->worker);
	else
		buf_adds(o, "null");
	buf_adds(o, ",\"started_at\":");
	buf_json_time(o, f->started_ms);
	buf_adds(o, ",\"finished_at\":");
	buf_json_time(o, f->finished_ms);
	buf_addc(o, '}');
}
