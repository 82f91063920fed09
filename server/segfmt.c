/* segfmt.c - segment and outcome group formats (see segfmt.h). */
#include "segfmt.h"

#include <string.h>

/* Writers into room already reserved: p points at the buffer's end. */
static unsigned char *put_uv(unsigned char *p, uint64_t v)
{
	while (v >= 0x80) {
		*p++ = (unsigned char)(v | 0x80);
		v >>= 7;
	}
	*p++ = (unsigned char)v;
	return p;
}

/* -1 (none) and other negatives below it are stored as 0. */
static unsigned char *put_opt(unsigned char *p, int64_t v)
{
	return put_uv(p, v < 0 ? 0 : (uint64_t)v + 1);
}

#define UV_MAX 10 /* bytes of the longest varint */

static unsigned char *end_of(struct buf *b) { return (unsigned char *)b->data + b->len; }

static void done_at(struct buf *b, unsigned char *p)
{
	b->len = (size_t)((char *)p - b->data);
	b->data[b->len] = '\0';
}

static inline int get_uv(const unsigned char **p, const unsigned char *end, uint64_t *v)
{
	if (*p < end && **p < 0x80) { /* most values: one byte */
		*v = *(*p)++;
		return 0;
	}
	/* A local cursor (times are six bytes, two per future in a stream). */
	const unsigned char *q = *p;
	uint64_t x = 0;
	for (int shift = 0; shift < 64; shift += 7) {
		if (q >= end)
			return -1;
		unsigned char c = *q++;
		x |= (uint64_t)(c & 0x7f) << shift;
		if (!(c & 0x80)) {
			*p = q;
			*v = x;
			return 0;
		}
	}
	return -1;
}

static inline int get_i64(const unsigned char **p, const unsigned char *end, int64_t *v)
{
	uint64_t x;
	if (get_uv(p, end, &x) < 0 || x > INT64_MAX)
		return -1;
	*v = (int64_t)x;
	return 0;
}

static inline int get_opt(const unsigned char **p, const unsigned char *end, int64_t *v)
{
	if (get_i64(p, end, v) < 0)
		return -1;
	*v -= 1;
	return 0;
}

static inline int get_byte(const unsigned char **p, const unsigned char *end, unsigned lim, int *v)
{
	if (*p >= end || **p >= lim)
		return -1;
	*v = *(*p)++;
	return 0;
}

void segfmt_put_items(struct buf *b, const struct seg_item *it, int n)
{
	buf_reserve(b, (size_t)n * (1 + 4 * UV_MAX));
	unsigned char *p = end_of(b);
	for (int i = 0; i < n; i++) {
		*p++ = it[i].state;
		p = put_uv(p, (uint64_t)it[i].attempts);
		p = put_uv(p, (uint64_t)it[i].worker);
		p = put_opt(p, it[i].started_ms);
		p = put_uv(p, (uint64_t)it[i].done_seq);
	}
	done_at(b, p);
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
	buf_reserve(b, 2 + 7 * UV_MAX + len + 1);
	unsigned char *p = end_of(b);
	p = put_uv(p, (uint64_t)f->done_seq);
	p = put_uv(p, (uint64_t)f->index);
	*p++ = (unsigned char)f->state;
	*p++ = (unsigned char)f->error_type;
	p = put_uv(p, (uint64_t)f->attempts);
	p = put_uv(p, (uint64_t)f->worker);
	p = put_opt(p, f->started_ms);
	p = put_opt(p, f->finished_ms);
	p = put_uv(p, len);
	if (len)
		memcpy(p, text, len);
	p += len;
	*p++ = '\0';
	done_at(b, p);
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
