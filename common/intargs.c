/* intargs.c - argument lists of plain integers (see intargs.h). */
#include "intargs.h"

#include "buf.h"

static const char *skip_ws(const char *p, const char *e)
{
	while (p < e && (*p == ' ' || *p == '\t'))
		p++;
	return p;
}

/* One JSON integer without leading zeros, sign and at most 18 digits
 * (within int64_t); -0 is left to jansson. NULL if there is none. */
static const char *fast_int(const char *p, const char *e, int64_t *v)
{
	int neg = p < e && *p == '-';
	const char *d = p + neg, *q = d;
	int64_t x = 0;
	while (q < e && *q >= '0' && *q <= '9' && q - d < 18)
		x = x * 10 + (*q++ - '0');
	size_t nd = (size_t)(q - d);
	if (nd == 0 || (q < e && *q >= '0' && *q <= '9') || (nd > 1 && *d == '0') ||
	    (neg && x == 0))
		return NULL;
	if (q < e && (*q == '.' || *q == 'e' || *q == 'E'))
		return NULL;
	*v = neg ? -x : x;
	return q;
}

int intargs_parse(const char *p, size_t n, int64_t *v)
{
	const char *e = p + n;
	p = skip_ws(p, e);
	if (p == e || *p++ != '[')
		return -1;
	p = skip_ws(p, e);
	int k = 0;
	if (p < e && *p == ']') {
		p++;
	} else {
		for (;;) {
			if (k == INTARGS_MAX || !(p = fast_int(p, e, &v[k])))
				return -1;
			k++;
			p = skip_ws(p, e);
			if (p < e && *p == ',') {
				p = skip_ws(p + 1, e);
				continue;
			}
			if (p < e && *p == ']') {
				p++;
				break;
			}
			return -1;
		}
	}
	return skip_ws(p, e) == e ? k : -1;
}

void intargs_write(struct buf *b, const int64_t *v, int n)
{
	buf_addc(b, '[');
	for (int i = 0; i < n; i++) {
		if (i)
			buf_addc(b, ',');
		buf_json_i64(b, v[i]);
	}
	buf_addc(b, ']');
}
