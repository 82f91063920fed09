/* buf.h - a growable byte buffer and the JSON text writer built on it.
 *
 * Used by the server (responses, frames to workers) and by the worker (result
 * records). Output JSON is written as text rather than through jansson because
 * results carry integers wider than 64 bits that jansson cannot represent.
 *
 * Allocation failure is fatal (abort): every caller would only have turned it
 * into a crash or a half-written answer. */
#ifndef FORKPOOL_BUF_H
#define FORKPOOL_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct buf {
	char *data; /* NUL-terminated whenever len < cap; owned */
	size_t len, cap;
};

/* Makes room for n more bytes (and the NUL after them). */
void buf_grow(struct buf *b, size_t n);
static inline void buf_reserve(struct buf *b, size_t n)
{
	if (b->cap - b->len <= n)
		buf_grow(b, n);
}

/* Inline: the JSON writers and the store's encoders call these per byte or
 * field, millions of times a second (callgrind showed the calls' own cost
 * as a tenth of the server's time in W1). */
static inline void buf_add(struct buf *b, const void *p, size_t n)
{
	buf_reserve(b, n);
	memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
}

static inline void buf_adds(struct buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static inline void buf_addc(struct buf *b, char c)
{
	buf_reserve(b, 1);
	b->data[b->len++] = c;
	b->data[b->len] = '\0';
}
__attribute__((format(printf, 2, 3))) void buf_printf(struct buf *b, const char *fmt, ...);
void buf_reset(struct buf *b);  /* len = 0, keeps the memory */
void buf_free(struct buf *b);   /* releases the memory, b is empty again */
/* Hands the contents to the caller (free() it); b is empty again. */
char *buf_steal(struct buf *b, size_t *len);

/* JSON text pieces. buf_json_str writes s[0..n) as a quoted JSON string,
 * escaping controls, quotes and backslashes; UTF-8 passes through, and each
 * ill-formed piece of it is written as \ufffd, so that the text is UTF-8
 * whatever s holds (error messages quote the client's own bytes). */
void buf_json_str(struct buf *b, const char *s, size_t n);
void buf_json_cstr(struct buf *b, const char *s);
void buf_json_i64(struct buf *b, int64_t v);
/* The same texts written at p, which has room for them (FMT_*_MAX bytes);
 * they return the end. For writers that reserve once for a whole object. */
#define FMT_I64_MAX 20
#define FMT_TIME_MAX 26
char *fmt_i64(char *p, int64_t v);
/* Copies the string src into dst of size bytes (size > 0), cut short to
 * fit: what snprintf(dst, size, "%s", src) does, without its formatting
 * machinery (about 600 instructions for a task name). */
void str_copy(char *dst, size_t size, const char *src);
char *fmt_time(char *p, int64_t ms);
void buf_json_i128(struct buf *b, __int128 v);
/* The shortest decimal that reads back as the same double; non-finite values
 * have no JSON form and are written as null. */
void buf_json_double(struct buf *b, double v);
/* An RFC 3339 UTC time with milliseconds from Unix milliseconds, quoted;
 * ms < 0 writes null. */
void buf_json_time(struct buf *b, int64_t ms);

#endif
