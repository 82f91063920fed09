/* upload.c - NDJSON batches, stored line by line (see upload.h). */
#include "upload.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "intargs.h"
#include "jsonw.h"
#include "log.h"
#include "request.h"

#define MAX_LINE (1 << 20) /* one item's arguments */

struct upload {
	struct store *store;
	const struct task_info *task;
	struct batch b;
	int64_t n, max_items;
	int64_t line;	 /* lines seen, for messages */
	struct buf part; /* a line not yet ended */
	struct buf args; /* an item's arguments, re-encoded */
	int sealed;
	/* The first error. MHD cannot answer before the body has been read, so
	 * the rest is read and dropped, and the answer waits for its end. */
	unsigned failed; /* the status, or 0 */
	char code[32], msg[640];
};

/* The request's data is the upload until it is sealed; freed with the
 * request, a request that ended without a seal (an error, a client gone)
 * removes what it stored. */
static void upload_free(void *p)
{
	struct upload *u = p;
	if (!u->sealed && u->b.id > 0 && store_upload_abort(u->store, u->b.id) < 0)
		log_error("upload_abort", "batch=%lld msg=\"rows left behind; removed at the next start\"",
			  (long long)u->b.id);
	buf_free(&u->part);
	buf_free(&u->args);
	free(u);
}

static void fail(struct http_req *r, struct upload *u, unsigned status, const char *code, const char *msg)
{
	(void)r;
	u->failed = status;
	snprintf(u->code, sizeof u->code, "%s", code);
	snprintf(u->msg, sizeof u->msg, "line %lld: %s", (long long)u->line, msg);
	/* Nothing more is stored; what was goes now. */
	if (store_upload_abort(u->store, u->b.id) == 0)
		u->b.id = 0;
}

/* Stores the item whose arguments are args[0..len). */
static void store_line(struct http_req *r, struct upload *u, const char *args, size_t len)
{
	if (store_upload_item(u->store, u->b.id, u->n, args, len) < 0)
		return fail(r, u, 503, "unavailable", "the database failed; see the server log and retry");
	u->n++;
}

/* ---- the fast path: a line of plain integers ----
 *
 * Most NDJSON items are a few integers ([123], [2, 10]), and jansson's parse,
 * allocations and free cost 3,000 instructions a line: three quarters of the
 * upload and a third of the server's work in W1. A line that intargs_parse
 * reads (common/intargs.h), which the task accepts, is written in the form
 * jsonw_value gives it. Anything else (other values, a number jansson would
 * refuse, an argument the task refuses) takes the jansson path, which makes
 * every decision and every message; this one only ever says yes to what that
 * one accepts. */

/* One complete line (without its newline). */
static void take_line(struct http_req *r, struct upload *u, const char *p, size_t n)
{
	u->line++;
	if (n && p[n - 1] == '\r')
		n--;
	size_t k = 0;
	while (k < n && (p[k] == ' ' || p[k] == '\t'))
		k++;
	if (k == n)
		return; /* blank lines are allowed (a trailing newline, say) */
	int64_t v[INTARGS_MAX];
	int nv = u->n < u->max_items ? intargs_parse(p, n, v) : -1;
	if (nv >= 0 && catalog_ints_ok(u->task, v, nv)) {
		/* Without blanks the line is that form already: intargs_parse
		 * takes no sign, leading zero or exponent. */
		if (!memchr(p, ' ', n) && !memchr(p, '\t', n))
			return store_line(r, u, p, n);
		buf_reset(&u->args);
		intargs_write(&u->args, v, nv);
		return store_line(r, u, u->args.data, u->args.len);
	}
	json_error_t jerr;
	json_t *args = json_loadb(p, n, JSON_REJECT_DUPLICATES, &jerr);
	if (!args) {
		char code[32], msg[400];
		request_json_refusal(&jerr, NULL, code, msg, sizeof msg);
		return fail(r, u, 400, code, msg);
	}
	char err[512];
	if (!json_is_array(args)) {
		json_decref(args);
		return fail(r, u, 400, "invalid_request",
			    "each line must be a JSON array of arguments, such as [1] or [2, 10]");
	}
	if (catalog_check(u->task, args, err, sizeof err) < 0) {
		json_decref(args);
		return fail(r, u, 400, "invalid_request", err);
	}
	if (u->n >= u->max_items) {
		json_decref(args);
		snprintf(err, sizeof err, "more than %lld items (the limit, --max-items)", (long long)u->max_items);
		return fail(r, u, 413, "too_many_items", err);
	}
	buf_reset(&u->args);
	jsonw_value(&u->args, args);
	json_decref(args);
	store_line(r, u, u->args.data, u->args.len);
}

static void sink(struct http_req *r, const char *data, size_t len)
{
	struct upload *u = http_data(r);
	while (len && !u->failed) {
		const char *nl = memchr(data, '\n', len);
		size_t n = nl ? (size_t)(nl - data) : len;
		/* The "\r" of a "\r\n" ending is not the line's (take_line drops
		 * it): held at the end, alone or with its "\n" yet to come, it
		 * is allowed past the limit. */
		size_t held = u->part.len + n;
		char last = n ? data[n - 1] : held ? u->part.data[u->part.len - 1] : 0;
		if (held - (last == '\r') > MAX_LINE) {
			u->line++;
			return fail(r, u, 413, "payload_too_large", "the line is longer than 1 MiB");
		}
		if (!nl) {
			buf_add(&u->part, data, n);
			return;
		}
		if (u->part.len) {
			buf_add(&u->part, data, n);
			take_line(r, u, u->part.data, u->part.len);
			buf_reset(&u->part);
		} else {
			take_line(r, u, data, n);
		}
		data += n + 1;
		len -= n + 1;
	}
}

void upload_start(struct http_req *r, struct store *s, const struct task_info *task,
		  const struct batch *b, int64_t max_items)
{
	struct upload *u = calloc(1, sizeof *u);
	if (!u)
		abort();
	*u = (struct upload){.store = s, .task = task, .b = *b, .max_items = max_items};
	http_set_data(r, u, upload_free);
	if (store_upload_begin(s, &u->b) < 0)
		return http_error(r, 503, "unavailable", "the database failed; see the server log and retry");
	http_sink(r, sink);
}

int upload_active(struct http_req *r)
{
	return http_has_sink(r);
}

int upload_end(struct http_req *r, int64_t (*auto_chunk)(int64_t size), struct batch *b)
{
	struct upload *u = http_data(r);
	if (!u->failed && u->part.len) { /* a last line without a newline */
		take_line(r, u, u->part.data, u->part.len);
		buf_reset(&u->part);
	}
	if (u->failed) {
		http_error(r, u->failed, u->code, "%s", u->msg);
		return -1;
	}
	if (u->n == 0) {
		http_error(r, 400, "invalid_request", "items: the body has no lines; send one JSON array of "
			   "arguments per line");
		return -1;
	}
	u->b.size = u->n;
	if (u->b.chunksize <= 0)
		u->b.chunksize = auto_chunk(u->n);
	if (store_upload_seal(u->store, u->b.id, u->b.size, u->b.chunksize) < 0) {
		http_error(r, 503, "unavailable", "the database failed; see the server log and retry");
		return -1;
	}
	u->sealed = 1;
	u->b.counts[FS_PENDING] = u->n;
	*b = u->b;
	return 0;
}
