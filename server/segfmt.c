/* segfmt.c - segment and outcome group formats (see segfmt.h). */
#include "segfmt.h"

#include <string.h>

static void put_uv(struct buf *b, uint64_t v)
{
	unsigned char t[10];
	int n = 0;
	do {
		t[n] = (unsigned char)(v & 0x7f);
		v >>= 7;
		if (v)
			t[n] |= 0x80;
		n++;
	} while (v);
	buf_add(b, t, (size_t)n);
}

/* -1 (none) and other negatives below it are stored as 0. */
static void put_opt(struct buf *b, int64_t v) { put_uv(b, v < 0 ? 0 : (uint64_t)v + 1); }

static int get_uv(const unsigned char **p, const unsigned char *end, uint64_t *v)
{
	uint64_t x = 0;
	for (int shift = 0; shift < 64; shift += 7) {
		if (*p >= end)
			return -1;
		unsigned char c = *(*p)++;
		x |= (uint64_t)(c & 0x7f) << shift;
		if (!(c & 0x80)) {
			*v = x;
			return 0;
		}
	}
	return -1;
}

static int get_i64(const unsigned char **p, const unsigned char *end, int64_t *v)
{
	uint64_t x;
	if (get_uv(p, end, &x) < 0 || x > INT64_MAX)
		return -1;
	*v = (int64_t)x;
	return 0;
}

static int get_opt(const unsigned char **p, const unsigned char *end, int64_t *v)
{
	if (get_i64(p, end, v) < 0)
		return -1;
	*v -= 1;
	return 0;
}

static int get_byte(const unsigned char **p, const unsigned char *end, unsigned lim, int *v)
{
	if (*p >= end || **p >= lim)
		return -1;
	*v = *(*p)++;
	return 0;
}

void segfmt_put_items(struct buf *b, const struct seg_item *it, int n)
{
	buf_reserve(b, (size_t)n * 12);
	for (int i = 0; i < n; i++) {
		buf_addc(b, (char)it[i].state);
		put_uv(b, (uint64_t)it[i].attempts);
		put_uv(b, (uint64_t)it[i].worker);
		put_opt(b, it[i].started_ms);
		put_uv(b, (uint64_t)it[i].done_seq);
	}
}

int segfmt_get_items(const void *blob, size_t len, struct seg_item *it, int max)
{
	const unsigned char *p = blob, *end = p + len;
	int n = 0;
	while (p < end) {
		int st;
		if (n == max || get_byte(&p, end, FS_NSTATES, &st) < 0 ||
		    get_i64(&p, end, &it[n].attempts) < 0 || get_i64(&p, end, &it[n].worker) < 0 ||
		    get_opt(&p, end, &it[n].started_ms) < 0 || get_i64(&p, end, &it[n].done_seq) < 0)
			return -1;
		it[n++].state = (uint8_t)st;
	}
	return n;
}

void segfmt_put_outcome(struct buf *b, const struct future *f)
{
	const char *text = f->state == FS_FINISHED ? f->result : f->error;
	size_t len = !text ? 0 : f->state == FS_FINISHED ? f->result_len : strlen(text);
	put_uv(b, (uint64_t)f->done_seq);
	put_uv(b, (uint64_t)f->index);
	buf_addc(b, (char)f->state);
	buf_addc(b, (char)f->error_type);
	put_uv(b, (uint64_t)f->attempts);
	put_uv(b, (uint64_t)f->worker);
	put_opt(b, f->started_ms);
	put_opt(b, f->finished_ms);
	put_uv(b, len);
	buf_add(b, text ? text : "", len);
	buf_addc(b, '\0');
}

int segfmt_get_outcome(const unsigned char **p, const unsigned char *end, struct future *f)
{
	uint64_t len;
	int st, et;
	memset(f, 0, sizeof *f);
	if (get_i64(p, end, &f->done_seq) < 0 || get_i64(p, end, &f->index) < 0 ||
	    get_byte(p, end, FS_NSTATES, &st) < 0 || get_byte(p, end, FE_WORKER_DIED + 1, &et) < 0 ||
	    get_i64(p, end, &f->attempts) < 0 || get_i64(p, end, &f->worker) < 0 ||
	    get_opt(p, end, &f->started_ms) < 0 || get_opt(p, end, &f->finished_ms) < 0 ||
	    get_uv(p, end, &len) < 0 || len >= (uint64_t)(end - *p) || (*p)[len] != '\0')
		return -1;
	f->state = (enum fstate)st;
	f->error_type = (enum ferr)et;
	const char *text = (const char *)*p;
	if (f->state == FS_FINISHED) {
		f->result = text;
		f->result_len = (size_t)len;
	} else if (f->state == FS_FAILED) {
		f->error = text;
	}
	*p += len + 1;
	return 1;
}
