/* jsontext.c - JSON text checked and made compact, numbers as written (see
 * jsontext.h). A recursive descent over the bytes that copies each token to
 * the output as it checks it. */
#include "jsontext.h"

#include <stdbool.h>
#include <stdint.h>

struct parser {
	const char *s;
	size_t n, i;
	int depth;
	struct buf *out;
};

static bool value(struct parser *p);

static void skip_ws(struct parser *p)
{
	while (p->i < p->n &&
	       (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r'))
		p->i++;
}

static bool at(const struct parser *p, char c) { return p->i < p->n && p->s[p->i] == c; }

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

/* Copies s[from..p->i) to the output. */
static void copy_from(struct parser *p, size_t from) { buf_add(p->out, p->s + from, p->i - from); }

static int hex4(const char *h)
{
	int v = 0;
	for (int k = 0; k < 4; k++) {
		char c = h[k];
		int d = is_digit(c) ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
					      : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
		if (d < 0)
			return -1;
		v = v * 16 + d;
	}
	return v;
}

/* The length of the well-formed UTF-8 sequence at u[0..left), or 0. */
static size_t utf8_len(const unsigned char *u, size_t left)
{
	size_t k = u[0] < 0x80 ? 1 : (u[0] & 0xE0) == 0xC0 ? 2 : (u[0] & 0xF0) == 0xE0 ? 3
				 : (u[0] & 0xF8) == 0xF0 ? 4 : 0;
	if (k == 0 || k > left || (k == 2 && u[0] < 0xC2) || (k == 4 && u[0] > 0xF4))
		return 0;
	for (size_t j = 1; j < k; j++)
		if ((u[j] & 0xC0) != 0x80)
			return 0;
	if (k == 3 && ((u[0] == 0xE0 && u[1] < 0xA0) || (u[0] == 0xED && u[1] >= 0xA0)))
		return 0; /* overlong, or a surrogate */
	if (k == 4 && ((u[0] == 0xF0 && u[1] < 0x90) || (u[0] == 0xF4 && u[1] >= 0x90)))
		return 0; /* overlong, or past U+10FFFF */
	return k;
}

static bool string(struct parser *p)
{
	size_t from = p->i++; /* the opening quote */
	while (p->i < p->n) {
		unsigned char c = (unsigned char)p->s[p->i];
		if (c == '"') {
			p->i++;
			copy_from(p, from);
			return true;
		}
		if (c < 0x20)
			return false;
		if (c != '\\') {
			size_t k = utf8_len((const unsigned char *)p->s + p->i, p->n - p->i);
			if (!k)
				return false;
			p->i += k;
			continue;
		}
		if (p->i + 1 >= p->n)
			return false;
		char e = p->s[p->i + 1];
		if (e != 'u') {
			if (e != '"' && e != '\\' && e != '/' && e != 'b' && e != 'f' && e != 'n' &&
			    e != 'r' && e != 't')
				return false;
			p->i += 2;
			continue;
		}
		int u = p->i + 6 <= p->n ? hex4(p->s + p->i + 2) : -1;
		if (u <= 0 || (u >= 0xDC00 && u <= 0xDFFF))
			return false; /* not hex, \u0000, or a low surrogate alone */
		p->i += 6;
		if (u >= 0xD800 && u <= 0xDBFF) {
			int lo = p->i + 6 <= p->n && p->s[p->i] == '\\' && p->s[p->i + 1] == 'u'
				     ? hex4(p->s + p->i + 2) : -1;
			if (lo < 0xDC00 || lo > 0xDFFF)
				return false; /* a high surrogate alone */
			p->i += 6;
		}
	}
	return false;
}

static bool number(struct parser *p)
{
	size_t from = p->i;
	if (at(p, '-'))
		p->i++;
	if (at(p, '0'))
		p->i++;
	else if (p->i < p->n && is_digit(p->s[p->i]))
		while (p->i < p->n && is_digit(p->s[p->i]))
			p->i++;
	else
		return false;
	if (at(p, '.')) {
		p->i++;
		if (!(p->i < p->n && is_digit(p->s[p->i])))
			return false;
		while (p->i < p->n && is_digit(p->s[p->i]))
			p->i++;
	}
	if (at(p, 'e') || at(p, 'E')) {
		p->i++;
		if (at(p, '+') || at(p, '-'))
			p->i++;
		if (!(p->i < p->n && is_digit(p->s[p->i])))
			return false;
		while (p->i < p->n && is_digit(p->s[p->i]))
			p->i++;
	}
	copy_from(p, from);
	return true;
}

static bool literal(struct parser *p, const char *word, size_t len)
{
	if (p->n - p->i < len || memcmp(p->s + p->i, word, len))
		return false;
	p->i += len;
	buf_add(p->out, word, len);
	return true;
}

/* An array or an object: its members separated by commas, each an object's
 * "key": value or an array's value. */
static bool container(struct parser *p, char close, bool keys)
{
	if (++p->depth > JSONTEXT_MAX_DEPTH)
		return false;
	buf_addc(p->out, p->s[p->i++]);
	skip_ws(p);
	if (at(p, close)) {
		p->i++;
		buf_addc(p->out, close);
		p->depth--;
		return true;
	}
	for (;;) {
		if (keys) {
			if (!at(p, '"') || !string(p))
				return false;
			skip_ws(p);
			if (!at(p, ':'))
				return false;
			p->i++;
			buf_addc(p->out, ':');
			skip_ws(p);
		}
		if (!value(p))
			return false;
		skip_ws(p);
		if (at(p, close)) {
			p->i++;
			buf_addc(p->out, close);
			p->depth--;
			return true;
		}
		if (!at(p, ','))
			return false;
		p->i++;
		buf_addc(p->out, ',');
		skip_ws(p);
	}
}

static bool value(struct parser *p)
{
	if (p->i >= p->n)
		return false;
	switch (p->s[p->i]) {
	case '{': return container(p, '}', true);
	case '[': return container(p, ']', false);
	case '"': return string(p);
	case 't': return literal(p, "true", 4);
	case 'f': return literal(p, "false", 5);
	case 'n': return literal(p, "null", 4);
	default: return number(p);
	}
}

int jsontext_compact(struct buf *out, const char *s, size_t n)
{
	size_t start = out->len;
	struct parser p = {.s = s, .n = n, .out = out};
	skip_ws(&p);
	bool ok = value(&p);
	skip_ws(&p);
	if (ok && p.i == n)
		return 0;
	out->len = start;
	if (out->data)
		out->data[start] = '\0';
	return -1;
}

/* The end of the value that starts at c[i] in compact, checked text. */
static size_t skip_value(const char *c, size_t n, size_t i)
{
	int depth = 0;
	bool in_string = false;
	for (; i < n; i++) {
		char ch = c[i];
		if (in_string) {
			if (ch == '\\') {
				i++;
			} else if (ch == '"') {
				in_string = false;
				if (depth == 0)
					return i + 1;
			}
			continue;
		}
		if (ch == '"')
			in_string = true;
		else if (ch == '{' || ch == '[')
			depth++;
		else if (ch == '}' || ch == ']') {
			if (depth == 0)
				return i; /* the end of the enclosing container */
			if (--depth == 0)
				return i + 1;
		} else if (ch == ',' && depth == 0)
			return i;
	}
	return i;
}

int jsontext_only_member(const char *c, size_t n, const char **key, size_t *klen,
			 const char **val, size_t *vlen)
{
	if (n < 2 || c[0] != '{' || c[1] != '"')
		return 0;
	size_t kend = skip_value(c, n, 1);
	if (kend >= n || c[kend] != ':')
		return 0;
	size_t vend = skip_value(c, n, kend + 1);
	if (vend != n - 1 || c[vend] != '}')
		return 0;
	*key = c + 1;
	*klen = kend - 1;
	*val = c + kend + 1;
	*vlen = vend - kend - 1;
	return 1;
}
