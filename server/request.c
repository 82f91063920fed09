/* request.c - parsing and checking a batch submission (see request.h). */
#include "request.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "intargs.h"
#include "jsonw.h"

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
	/* An optional field given as null is as if it were left out. */
	json_t *v = json_object_get(root, "chunksize");
	if (v && !json_is_null(v)) {
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
	if (v && !json_is_null(v)) {
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

/* ---- the fast path: {"task": "NAME", "items": [[integers], ...]} ----
 *
 * The body most calls send, read without jansson, whose reader goes through
 * a callback and a buffer append for every character: 7,700 instructions
 * for a 35-byte body, 8% of a single-item call (W3, callgrind). It takes
 * only an object of "task" (a string without escapes) then "items" (1 to
 * max_items arrays that intargs_parse reads and the task accepts), with
 * blanks between tokens. Anything else, other fields included, goes to
 * jansson, which makes every decision and every message: this path only
 * ever says yes to what that one accepts, with the same result (the fuzzer
 * compares the two on every input it makes). */

static const char *skip_blanks(const char *p, const char *e)
{
	while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* The string at p, which has no escape or control character: its end (past
 * the closing quote) with [*s, *s + *n) its text, or NULL. */
static const char *plain_string(const char *p, const char *e, const char **s, size_t *n)
{
	if (p == e || *p != '"')
		return NULL;
	const char *q = ++p;
	while (q < e && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20 && (unsigned char)*q < 0x7f)
		q++;
	if (q == e || *q != '"')
		return NULL;
	*s = p;
	*n = (size_t)(q - p);
	return q + 1;
}

/* A key, the colon after it: the value's start, or NULL. */
static const char *key_is(const char *p, const char *e, const char *key)
{
	const char *k;
	size_t n;
	p = plain_string(skip_blanks(p, e), e, &k, &n);
	if (!p || n != strlen(key) || memcmp(k, key, n))
		return NULL;
	p = skip_blanks(p, e);
	return p < e && *p == ':' ? skip_blanks(p + 1, e) : NULL;
}

/* 1 with *out filled, or 0: for jansson to decide. */
static int parse_plain(const char *body, size_t len, const struct request_limits *lim,
		       struct batch_request *out)
{
	const char *p = body, *e = body + len, *name;
	size_t nlen;
	p = skip_blanks(p, e);
	if (p == e || *p++ != '{' || !(p = key_is(p, e, "task")) ||
	    !(p = plain_string(p, e, &name, &nlen)) || nlen >= sizeof out->b.task)
		return 0;
	char task[sizeof out->b.task];
	memcpy(task, name, nlen);
	task[nlen] = '\0';
	p = skip_blanks(p, e);
	if (!(out->task = catalog_find(task)) || p == e || *p++ != ',' ||
	    !(p = key_is(p, e, "items")) || p == e || *p++ != '[')
		return 0;
	int64_t n = 0;
	for (;;) {
		p = skip_blanks(p, e);
		const char *end = memchr(p, ']', (size_t)(e - p));
		int64_t v[INTARGS_MAX];
		int nv = end && p < e && *p == '[' ? intargs_parse(p, (size_t)(end + 1 - p), v) : -1;
		if (nv < 0 || !catalog_ints_ok(out->task, v, nv) ||
		    (lim->max_items > 0 && n == lim->max_items))
			return 0;
		intargs_write(&out->args, v, nv);
		buf_addc(&out->args, '\n');
		n++;
		p = skip_blanks(end + 1, e);
		if (p < e && *p == ',') {
			p++;
			continue;
		}
		if (p < e && *p == ']')
			break;
		return 0;
	}
	p = skip_blanks(p + 1, e);
	if (p == e || *p != '}' || skip_blanks(p + 1, e) != e)
		return 0;
	str_copy(out->b.task, sizeof out->b.task, out->task->name);
	out->b.size = n;
	struct request_error unused;
	return check_options(NULL, lim, &out->b, &unused) == 0; /* the defaults */
}

int request_parse_batch(const char *body, size_t len, const struct request_limits *lim,
			struct batch_request *out, struct request_error *e)
{
	memset(out, 0, sizeof *out);
	if (!lim->jansson_only) {
		if (parse_plain(body, len, lim, out))
			return 0;
		request_free(out);
	}
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
	str_copy(b->task, sizeof b->task, out->task->name);
	b->size = (int64_t)json_array_size(items);
	if (check_options(root, lim, b, e) < 0)
		goto fail;
	json_array_foreach(items, i, v)
	{
		jsonw_value(&out->args, v);
		buf_addc(&out->args, '\n');
	}
	json_decref(root);
	return 0;
fail:
	json_decref(root);
	request_free(out);
	return -1;
}

void request_free(struct batch_request *q)
{
	buf_free(&q->args);
	memset(q, 0, sizeof *q);
}

int request_paths_agree(const char *body, size_t len, const struct request_limits *lim)
{
	struct request_limits slow = *lim;
	slow.jansson_only = 1;
	struct batch_request a, b;
	struct request_error ea = {0}, eb = {0};
	int ra = request_parse_batch(body, len, lim, &a, &ea);
	int rb = request_parse_batch(body, len, &slow, &b, &eb);
	int same = ra == rb;
	if (same && ra == 0)
		same = a.task == b.task && !strcmp(a.b.task, b.b.task) && a.b.size == b.b.size &&
		       a.b.chunksize == b.b.chunksize && a.b.timeout == b.b.timeout &&
		       a.b.retries == b.b.retries && a.args.len == b.args.len &&
		       !memcmp(a.args.data, b.args.data, a.args.len);
	else if (same)
		same = ea.status == eb.status && !strcmp(ea.code, eb.code) && !strcmp(ea.message, eb.message);
	if (ra == 0)
		request_free(&a);
	if (rb == 0)
		request_free(&b);
	return same;
}
