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
	buf_printf(o, "{\"id\":%lld,\"task\":", (long long)b->id);
	buf_json_cstr(o, b->task);
	buf_printf(o, ",\"size\":%lld,\"chunksize\":%lld,\"timeout\":", (long long)b->size,
		   (long long)b->chunksize);
	if (b->timeout > 0)
		buf_json_double(o, b->timeout);
	else
		buf_adds(o, "null");
	buf_printf(o, ",\"retries\":%lld,\"state\":", (long long)b->retries);
	buf_json_cstr(o, batch_state(b));
	buf_adds(o, ",\"counts\":{");
	for (int k = 0; k < FS_NSTATES; k++)
		buf_printf(o, "%s\"%s\":%lld", k ? "," : "", fstate_names[k], (long long)b->counts[k]);
	buf_adds(o, "},\"created_at\":");
	buf_json_time(o, b->created_ms);
	buf_adds(o, ",\"finished_at\":");
	buf_json_time(o, b->finished_ms);
	buf_addc(o, '}');
}

void future_json(struct buf *o, const struct future *f)
{
	buf_printf(o, "{\"index\":%lld,\"state\":\"%s\"", (long long)f->index, fstate_names[f->state]);
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
	buf_printf(o, ",\"attempts\":%lld,\"worker\":", (long long)f->attempts);
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
