/* buf.c - growable buffer and JSON text writer (see buf.h). */
#include "buf.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void buf_grow(struct buf *b, size_t n)
{
	size_t cap = b->cap ? b->cap : 256;
	while (cap - b->len <= n)
		cap *= 2;
	char *p = realloc(b->data, cap);
	if (!p)
		abort();
	b->data = p;
	b->cap = cap;
}

void buf_printf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	buf_reserve(b, (size_t)n);
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

void buf_reset(struct buf *b)
{
	b->len = 0;
	if (b->data)
		b->data[0] = '\0';
}

void buf_free(struct buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

char *buf_steal(struct buf *b, size_t *len)
{
	if (!b->data)
		buf_reserve(b, 0);
	char *p = b->data;
	if (len)
		*len = b->len;
	b->data = NULL;
	b->len = b->cap = 0;
	return p;
}

/* The bytes of the UTF-8 sequence that starts at s[0] (>= 0x80; n >= 1 bytes
 * left), with *ok set; when it is ill-formed, those of its maximal ill-formed
 * piece (at least 1), each of which is written as one U+FFFD (Unicode 3.9,
 * "U+FFFD Substitution of Maximal Subparts"). The second byte's range is what
 * rules out overlong forms (E0, F0), surrogates (ED) and code points past
 * U+10FFFF (F4), as in Unicode's table 3-7. */
static inline size_t utf8_seq(const unsigned char *s, size_t n, int *ok)
{
	unsigned c = s[0], lo = 0x80, hi = 0xbf;
	size_t need;
	if (c >= 0xc2 && c <= 0xdf)
		need = 2;
	else if (c >= 0xe0 && c <= 0xef)
		need = 3, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
	else if (c >= 0xf0 && c <= 0xf4)
		need = 4, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
	else {
		*ok = 0; /* a continuation byte, C0, C1 or F5..FF: never a start */
		return 1;
	}
	size_t i = 1;
	for (; i < need && i < n && s[i] >= lo && s[i] <= hi; i++)
		lo = 0x80, hi = 0xbf;
	*ok = i == need;
	return i;
}

void buf_json_str(struct buf *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	buf_reserve(b, n + 2);
	buf_addc(b, '"');
	size_t run = 0; /* start of the current run of bytes that need no escape */
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\')
			continue;
		if (c >= 0x80) {
			/* Some strings are the client's bytes (a path, a header, a
			 * query value quoted in an error): the answer must be UTF-8
			 * all the same. */
			int ok;
			size_t k = utf8_seq((const unsigned char *)s + i, n - i, &ok);
			if (!ok) {
				buf_add(b, s + run, i - run);
				buf_add(b, "\\ufffd", 6);
				run = i + k;
			}
			i += k - 1;
			continue;
		}
		buf_add(b, s + run, i - run);
		run = i + 1;
		switch (c) {
		case '"': buf_add(b, "\\\"", 2); break;
		case '\\': buf_add(b, "\\\\", 2); break;
		case '\n': buf_add(b, "\\n", 2); break;
		case '\r': buf_add(b, "\\r", 2); break;
		case '\t': buf_add(b, "\\t", 2); break;
		default: {
			char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
			buf_add(b, e, 6);
		}
		}
	}
	buf_add(b, s + run, n - run);
	buf_addc(b, '"');
}

void buf_json_cstr(struct buf *b, const char *s)
{
	if (!s)
		buf_adds(b, "null");
	else
		buf_json_str(b, s, strlen(s));
}

/* Integers and times are written by hand: they are most of what a stream of
 * futures writes, and vsnprintf (with gmtime_r for times) cost ten times as
 * much (callgrind, 2,000 single-item batches). */
/* "00" to "99": two digits a division (a stream writes three or four
 * integers per future). */
static const char digit_pairs[] = "00010203040506070809101112131415161718192021222324"
				  "25262728293031323334353637383940414243444546474849"
				  "50515253545556575859606162636465666768697071727374"
				  "75767778798081828384858687888990919293949596979899";

char *fmt_i64(char *out, int64_t v)
{
	char tmp[24];
	char *p = tmp + sizeof tmp;
	uint64_t u = v < 0 ? -(uint64_t)v : (uint64_t)v;
	while (u >= 100) {
		unsigned d = (unsigned)(u % 100);
		u /= 100;
		p -= 2;
		memcpy(p, digit_pairs + 2 * d, 2);
	}
	if (u >= 10) {
		p -= 2;
		memcpy(p, digit_pairs + 2 * u, 2);
	} else {
		*--p = (char)('0' + u);
	}
	if (v < 0)
		*--p = '-';
	size_t n = (size_t)(tmp + sizeof tmp - p);
	memcpy(out, p, n);
	return out + n;
}

void buf_json_i64(struct buf *b, int64_t v)
{
	buf_reserve(b, FMT_I64_MAX);
	b->len = (size_t)(fmt_i64(b->data + b->len, v) - b->data);
	b->data[b->len] = '\0';
}

static char *put_digits(char *p, unsigned v, int n)
{
	for (int i = n - 1; i >= 0; i--) {
		p[i] = (char)('0' + v % 10);
		v /= 10;
	}
	return p + n;
}

void buf_json_i128(struct buf *b, __int128 v)
{
	if (v >= INT64_MIN && v <= INT64_MAX) {
		buf_json_i64(b, (int64_t)v); /* two digits a division, and no 128-bit ones */
		return;
	}
	char tmp[48];
	char *p = tmp + sizeof tmp;
	unsigned __int128 u = v < 0 ? -(unsigned __int128)v : (unsigned __int128)v;
	do {
		*--p = (char)('0' + (int)(u % 10));
		u /= 10;
	} while (u);
	if (v < 0)
		*--p = '-';
	buf_add(b, p, (size_t)(tmp + sizeof tmp - p));
}

void buf_json_double(struct buf *b, double v)
{
	if (!isfinite(v)) {
		buf_adds(b, "null");
		return;
	}
	char tmp[40];
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(tmp, sizeof tmp, "%.*g", prec, v);
		if (strtod(tmp, NULL) == v)
			break;
	}
	/* Keep a float a float: "2" would read back as an integer. */
	if (!strpbrk(tmp, ".eEn"))
		strcat(tmp, ".0");
	buf_adds(b, tmp);
}

void buf_json_time(struct buf *b, int64_t ms)
{
	buf_reserve(b, FMT_TIME_MAX);
	b->len = (size_t)(fmt_time(b->data + b->len, ms) - b->data);
	b->data[b->len] = '\0';
}

char *fmt_time(char *out, int64_t ms)
{
	if (ms < 0) {
		memcpy(out, "null", 4);
		return out + 4;
	}
	/* Results come in bursts that share their millisecond: the last
	 * text is kept (per thread: the worker writes from two). */
	static __thread int64_t last_ms = -1;
	static __thread char last[32];
	static __thread size_t last_len;
	if (ms == last_ms) {
		memcpy(out, last, last_len);
		return out + last_len;
	}
	/* The proleptic Gregorian date of a day count (days since 1970-01-01),
	 * in 400-year eras of 146097 days that start on a March 1st, so that
	 * the leap day ends a year (H. Hinnant's civil_from_days). */
	int64_t days = ms / 86400000, in_day = ms % 86400000;
	int64_t z = days + 719468;
	int64_t era = z / 146097;
	unsigned doe = (unsigned)(z - era * 146097);
	unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	unsigned mp = (5 * doy + 2) / 153;
	unsigned day = doy - (153 * mp + 2) / 5 + 1;
	unsigned month = mp < 10 ? mp + 3 : mp - 9;
	int64_t year = (int64_t)yoe + era * 400 + (month <= 2);
	if (year > 9999)
		year = 9999; /* RFC 3339 has four digits */
	unsigned secs = (unsigned)(in_day / 1000), milli = (unsigned)(in_day % 1000);
	char t[32], *p = t;
	*p++ = '"';
	p = put_digits(p, (unsigned)year, 4);
	*p++ = '-';
	p = put_digits(p, month, 2);
	*p++ = '-';
	p = put_digits(p, day, 2);
	*p++ = 'T';
	p = put_digits(p, secs / 3600, 2);
	*p++ = ':';
	p = put_digits(p, secs / 60 % 60, 2);
	*p++ = ':';
	p = put_digits(p, secs % 60, 2);
	*p++ = '.';
	p = put_digits(p, milli, 3);
	*p++ = 'Z';
	*p++ = '"';
	last_ms = ms;
	last_len = (size_t)(p - t);
	memcpy(last, t, last_len);
	memcpy(out, t, last_len);
	return out + last_len;
}

void str_copy(char *dst, size_t size, const char *src)
{
	size_t n = strnlen(src, size - 1);
	memcpy(dst, src, n);
	dst[n] = '\0';
}
