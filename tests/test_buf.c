/* test_buf.c - the JSON text writer's hand-written integers and times,
 * against the C library's own formatting, and its strings. */
#include <stdio.h>
#include <time.h>

#include "buf.h"
#include "harness.h"

TEST(buf_json_time_matches_gmtime_from_1970_to_9999)
{
	struct buf b = {0};
	buf_json_time(&b, -1);
	CHECK_STR(b.data, "null");
	static const int64_t fixed[] = {0, 999, 86399999, 86400000, 951782400000, /* 2000-02-29 */
					951868800000, 4102444800000, /* 2100-01-01, no leap day */
					253402300799999};
	/* Every day boundary of four centuries, plus a spread of odd instants. */
	uint64_t x = 88172645463325252u;
	for (int i = 0; i < 200000; i++) {
		int64_t ms;
		/* Every fourth instant repeats the one before (the cached text) and
		 * every fifth the one before that (the cache must be replaced). */
		if (i < (int)(sizeof fixed / sizeof fixed[0]))
			ms = fixed[i];
		else if (i < 150000)
			ms = (int64_t)(i - 8) * 86400000 + (i % 2 ? 86399999 : 0);
		else {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			ms = (int64_t)(x % 253402300800000u);
		}
		buf_reset(&b);
		static int64_t prev[2] = {0, 0};
		if (i >= 8 && i % 4 == 3)
			ms = prev[1];
		else if (i >= 8 && i % 5 == 4)
			ms = prev[0];
		prev[0] = prev[1];
		prev[1] = ms;
		buf_reset(&b);
		buf_json_time(&b, ms);
		time_t t = (time_t)(ms / 1000);
		struct tm tm;
		gmtime_r(&t, &tm);
		char want[48];
		snprintf(want, sizeof want, "\"%04d-%02d-%02dT%02d:%02d:%02d.%03dZ\"", tm.tm_year + 1900,
			 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
		if (strcmp(b.data, want))
			FAILF("%lld ms: wrote %s, expected %s", (long long)ms, b.data, want);
	}
	buf_free(&b);
}

TEST(buf_json_i64_writes_every_edge_exactly)
{
	static const int64_t v[] = {0, 1, -1, 9, 10, -10, 123456789, INT64_MAX, INT64_MIN};
	struct buf b = {0};
	for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
		buf_reset(&b);
		buf_json_i64(&b, v[i]);
		char want[32];
		snprintf(want, sizeof want, "%lld", (long long)v[i]);
		CHECK_STR(b.data, want);
	}
	/* Every digit count either side of each power of ten, and a spread. */
	uint64_t x = 0x9E3779B97F4A7C15u;
	for (int i = 0; i < 200000; i++) {
		int64_t w;
		if (i < 19 * 4) {
			int64_t p10 = 1;
			for (int k = 0; k < i / 4; k++)
				p10 *= 10;
			w = (i % 4 == 0 ? p10 - 1 : i % 4 == 1 ? p10 : i % 4 == 2 ? p10 + 1 : -p10);
		} else {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			w = (int64_t)(x >> (i % 64));
		}
		buf_reset(&b);
		buf_json_i64(&b, w);
		char want[32];
		snprintf(want, sizeof want, "%lld", (long long)w);
		if (strcmp(b.data, want))
			FAILF("%lld: wrote %s", (long long)w, b.data);
	}
	buf_free(&b);
}

TEST(buf_str_copy_cuts_short_like_snprintf)
{
	char d[5];
	str_copy(d, sizeof d, "abc");
	CHECK_STR(d, "abc");
	str_copy(d, sizeof d, "abcd");
	CHECK_STR(d, "abcd");
	str_copy(d, sizeof d, "abcdefgh");
	CHECK_STR(d, "abcd");
	str_copy(d, sizeof d, "");
	CHECK_STR(d, "");
	str_copy(d, 1, "x");
	CHECK_STR(d, "");
}

/* Strings come from requests as any bytes: what is written is UTF-8 JSON
 * whatever they hold. Each maximal ill-formed piece becomes one \ufffd (the
 * Unicode practice, as browsers decode); controls are escaped as before. */
TEST(buf_json_str_writes_invalid_utf8_as_u_fffd_and_keeps_valid_utf8)
{
	static const struct {
		const char *in, *out;
	} cases[] = {
	    {"plain", "\"plain\""},
	    {"q\"b\\\n\r\t\x01\x1f", "\"q\\\"b\\\\\\n\\r\\t\\u0001\\u001f\""},
	    {"\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf \xed\x9f\xbf \xee\x80\x80",
	     "\"\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf \xed\x9f\xbf \xee\x80\x80\""},
	    {"\xff", "\"\\ufffd\""},
	    {"a\x80z", "\"a\\ufffdz\""},
	    {"\xbf\xbf", "\"\\ufffd\\ufffd\""},
	    {"\xc3", "\"\\ufffd\""},		      /* cut short at the end */
	    {"\xe2\x82", "\"\\ufffd\""},	      /* one piece, one U+FFFD */
	    {"\xe2\x82z", "\"\\ufffdz\""},
	    {"\xf0\x9f\x98", "\"\\ufffd\""},
	    {"\xc0\xaf", "\"\\ufffd\\ufffd\""},	      /* overlong */
	    {"\xe0\x80\xaf", "\"\\ufffd\\ufffd\\ufffd\""}, /* overlong */
	    {"\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\""}, /* a surrogate */
	    {"\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\""}, /* past U+10FFFF */
	    {"\xf5\x80", "\"\\ufffd\\ufffd\""},
	    {"\xe2\x82\"", "\"\\ufffd\\\"\""},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		struct buf b = {0};
		buf_json_cstr(&b, cases[i].in);
		if (strcmp(b.data, cases[i].out))
			FAILF("case %zu: wrote %s, expected %s", i, b.data, cases[i].out);
		buf_free(&b);
	}
	/* NUL bytes inside the length are escaped, not an end. */
	struct buf b = {0};
	buf_json_str(&b, "a\0\xff", 3);
	CHECK_STR(b.data, "\"a\\u0000\\ufffd\"");
	buf_free(&b);
}
