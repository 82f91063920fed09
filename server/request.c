/* request.c - parsing and checking a batch submission (see request.h). */
#include "request.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define MAX_CHUNKSIZE 1000000000LL

__attribute__((format(printf, 4, 5))) static int refuse(struct request_error *e, unsigned status,
							 const char *code, const char *fmt, ...)
{
	e->status = status;
	snprintf(e->code, sizeof e->code, "%s", code);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->message, sizeof e->message, fmt, ap);
	va_end(ap);
	return -1;
}

static int check_fields(json_t *root, struct request_error *e)
{
	static const char *const known[] = {"task", "items", "chunksize", "timeout", "retries"};
	const char *key;
	json_t *v;
	json_object_foreach(root, key, v)
	{
		size_t k = 0;
		while (k < sizeof known / sizeof *known && strcmp(key, known[k]))
			k++;
		if (k == sizeof known / sizeof *known)
			/* %.64s: a key can be megabytes long; the message need not. */
			return refuse(e, 400, "invalid_request",
				      "unknown field \"%.64s%s\" (a batch has task, items, chunksize, "
				      "timeout, retries)",
				      key, strlen(key) > 64 ? "..." : "");
	}
	return 0;
}

static int check_options(json_t *root, const struct request_limits *lim, struct batch *b,
			 struct request_error *e)
{
	json_t *v = json_object_get(root, "chunksize");
	if (v) {
		if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > MAX_CHUNKSIZE)
			return refuse(e, 400, "invalid_request", "chunksize: must be an integer from 1 to %lld",
				      MAX_CHUNKSIZE);
		b->chunksize = json_integer_value(v);
	} else if (lim->chunksize > 0) {
		b->chunksize = lim->chunksize;
	} else {
		int64_t per = (int64_t)(lim->workers > 0 ? lim->workers : 1) * 4;
		b->chunksize = (b->size + per - 1) / per;
		if (b->chunksize < 1)
			b->chunksize = 1;
	}
	v = json_object_get(root, "timeout");
	if (v && !json_is_null(v)) {
		if (!json_is_number(v) || !(json_number_value(v) >= REQUEST_MIN_TIMEOUT_S) ||
		    json_number_value(v) > REQUEST_MAX_TIMEOUT_S)
			return refuse(e, 400, "invalid_request",
				      "timeout: must be a number of seconds from %g to %g",
				      REQUEST_MIN_TIMEOUT_S, REQUEST_MAX_TIMEOUT_S);
		b->timeout = json_number_value(v);
	} else {
		b->timeout = lim->default_timeout;
	}
	v = json_object_get(root, "retries");
	if (v) {
		if (!json_is_integer(v) || json_integer_value(v) < 0 ||
		    json_integer_value(v) > REQUEST_MAX_RETRIES)
			return refuse(e, 400, "invalid_request", "retries: must be an integer from 0 to %d",
				      REQUEST_MAX_RETRIES);
		b->retries = json_integer_value(v);
	}
	return 0;
}

void request_json_refusal(const json_error_t *jerr, const char *where, char *code, char *msg,
			  size_t msglen)
{
	char pos[48];
	if (where)
		snprintf(pos, sizeof pos, "line %d, column %d", jerr->line, jerr->column);
	else
		snprintf(pos, sizeof pos, "column %d", jerr->column);
	if (json_error_code(jerr) == json_error_numeric_overflow) {
		snprintf(code, 32, "invalid_request");
		snprintf(msg, msglen,
			 "%s%sa number out of range (%s, %s): integer arguments must fit in 64 bits "
			 "(-9223372036854775808 to 9223372036854775807) and reals in a double",
			 where ? where : "", where ? " holds " : "", jerr->text, pos);
		return;
	}
	snprintf(code, 32, "invalid_json");
	snprintf(msg, msglen, "%s%snot valid JSON: %s (%s)", where ? where : "", where ? " is " : "",
		 jerr->text, pos);
}

int request_parse_batch(const char *body, size_t len, const struct request_limits *lim,
			struct batch_request *out, struct request_error *e)
{
	memset(out, 0, sizeof *out);
	json_error_t jerr;
	json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		e->status = 400;
		request_json_refusal(&jerr, "the body", e->code, e->message, sizeof e->message);
		return -1;
	}
	if (!json_is_object(root)) {
		json_decref(root);
		return refuse(e, 400, "invalid_request",
			      "the body must be a JSON object such as "
			      "{\"task\": \"square\", \"items\": [[1], [2]]}");
	}
	if (check_fields(root, e) < 0)
		goto fail;
	json_t *task = json_object_get(root, "task");
	if (!json_is_string(task)) {
		refuse(e, 400, "invalid_request", "task: %s", task ? "must be a string" : "is required");
		goto fail;
	}
	const char *name = json_string_value(task);
	out->task = strlen(name) == json_string_length(task) ? catalog_find(name) : NULL;
	if (!out->task) {
		refuse(e, 400, "invalid_request",
		       "task: there is no task \"%.64s%s\" (GET /v1/tasks lists them)", name,
		       strlen(name) > 64 ? "..." : "");
		goto fail;
	}
	json_t *items = json_object_get(root, "items");
	if (!json_is_array(items) || json_array_size(items) == 0) {
		const char *why = !items ? "is required: an array with one array of arguments per call"
				  : json_is_array(items)
				      ? "must not be empty"
				      : "must be an array with one array of arguments per call";
		refuse(e, 400, "invalid_request", "items: %s", why);
		goto fail;
	}
	if (lim->max_items > 0 && (int64_t)json_array_size(items) > lim->max_items) {
		refuse(e, 413, "too_many_items", "items: %zu items; the limit (--max-items) is %lld",
		       json_array_size(items), (long long)lim->max_items);
		goto fail;
	}
	size_t i;
	json_t *v;
	json_array_foreach(items, i, v)
	{
		char err[512];
		if (catalog_check(out->task, v, err, sizeof err) < 0) {
			refuse(e, 400, "invalid_request", "items[%zu]: %s", i, err);
			goto fail;
		}
	}
	struct batch *b = &out->b;
	snprintf(b->task, sizeof b->task, "%s", out->task->name);
	b->size = (int64_t)json_array_size(items);
	if (check_options(root, lim, b, e) < 0)
		goto fail;
	out->root = root;
	out->items = items;
	return 0;
fail:
	json_decref(root);
	memset(out, 0, sizeof *out);
	return -1;
}

void request_free(struct batch_request *q)
{
	json_decref(q->root);
	memset(q, 0, sizeof *q);
}
