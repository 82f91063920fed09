/* test_jsontext.c - the checker of the JSON text programs write
 * (common/jsontext.c): what it keeps as written, what it refuses, and that it
 * refuses what jansson refuses, numbers apart. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "buf.h"
#include "harness.h"
#include "jsontext.h"

/* The compact text of s, or "(not JSON)". */
static const char *compact(const char *s, size_t n)
{
	static struct buf b;
	buf_reset(&b);
	buf_adds(&b, "x"); /* what is there already stays */
	if (jsontext_compact(&b, s, n) < 0) {
		CHECK_STR(b.data, "x");
		return "(not JSON)";
	}
	CHECK(b.data[0] == 'x');
	return b.data + 1;
}

#define COMPACT(s) compact(s, sizeof s - 1)

TEST(jsontext_keeps_numbers_as_written)
{
	CHECK_STR(COMPACT("12345678901234567890"), "12345678901234567890");
	CHECK_STR(COMPACT("-170141183460469231731687303715884105729"),
		  "-170141183460469231731687303715884105729");
	CHECK_STR(COMPACT("1e999"), "1e999");
	CHECK_STR(COMPACT(" [1.50, -0, 1E+5, 2e-400, 0.1]\n"), "[1.50,-0,1E+5,2e-400,0.1]");
}

TEST(jsontext_drops_the_whitespace_between_tokens_and_nothing_else)
{
	CHECK_STR(COMPACT("{\n  \"a b\" : [ true , false , null ],\r\n\t\"c\": {} , \"d\":[]}\n\n"),
		  "{\"a b\":[true,false,null],\"c\":{},\"d\":[]}");
	CHECK_STR(COMPACT("\"caf\xc3\xa9 \\u00e9 \\ud83d\\ude00 \\\"q\\\" \\/ \\n\""),
		  "\"caf\xc3\xa9 \\u00e9 \\ud83d\\ude00 \\\"q\\\" \\/ \\n\"");
	CHECK_STR(COMPACT("{\"a\": 1, \"a\": 2}"), "{\"a\":1,\"a\":2}");
}

TEST(jsontext_refuses_what_is_not_json)
{
	static const char *const bad[] = {
		"", " ", "hello", "1 2", "[1,]", "[1 2]", "{\"a\"}", "{\"a\":}", "{a: 1}", "{\"a\":1,}",
		"01", "1.", ".5", "-", "+1", "1e", "1e+", "0x10", "NaN", "Infinity", "tru", "nulll",
		"[", "]", "{", "\"open", "'single'", "\"tab\there\"", "\"\\x41\"", "\"\\u12\"",
		"\"\\u0000\"", "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"", "\"\xff\"",
		"\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"", "\"\xe2\x82\"", "[1]x",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		const char *got = compact(bad[i], strlen(bad[i]));
		if (strcmp(got, "(not JSON)"))
			FAILF("\"%s\" was taken, as %s", bad[i], got);
	}
	CHECK_STR(compact("\"a\0b\"", 5), "(not JSON)"); /* a raw NUL byte */
}

TEST(jsontext_nesting_stops_at_its_depth)
{
	struct buf b = {0};
	for (int i = 0; i < JSONTEXT_MAX_DEPTH; i++)
		buf_addc(&b, '[');
	for (int i = 0; i < JSONTEXT_MAX_DEPTH; i++)
		buf_addc(&b, ']');
	CHECK(strcmp(compact(b.data, b.len), "(not JSON)") != 0);
	buf_reset(&b);
	for (int i = 0; i < 100000; i++)
		buf_addc(&b, '[');
	CHECK_STR(compact(b.data, b.len), "(not JSON)");
	buf_free(&b);
}

/* Apart from numbers past what jansson holds, the two agree. */
TEST(jsontext_agrees_with_jansson_on_everything_but_big_numbers)
{
	static const char *const texts[] = {
		"{\"x\": [1, 2.5, \"s\", null]}", "\"\\u00e9\"", "[\"\\ud83d\\ude00\"]", "\"\\u0000\"",
		"{\"a\":", "[1,,2]", "\"\x80\"", "  42  ", "true false", "\"\\ud800\"", "[]", "{}",
	};
	for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
		json_t *v = json_loads(texts[i], JSON_DECODE_ANY, NULL);
		int ours = strcmp(compact(texts[i], strlen(texts[i])), "(not JSON)") != 0;
		if (ours != (v != NULL))
			FAILF("\"%s\": jansson %s it, jsontext %s", texts[i], v ? "takes" : "refuses",
			      ours ? "takes" : "refuses");
		json_decref(v);
	}
}

TEST(jsontext_only_member_finds_the_one_member_of_an_object)
{
	static const struct {
		const char *text, *key, *val;
	} cases[] = {
		{"{\"result\":1}", "\"result\"", "1"},
		{"{\"result\":{\"a\":[1,\"}\"],\"b\":\",\"}}", "\"result\"", "{\"a\":[1,\"}\"],\"b\":\",\"}"},
		{"{\"e\\\"rror\":\"x,y\"}", "\"e\\\"rror\"", "\"x,y\""},
		{"{\"a\":1,\"b\":2}", NULL, NULL},
		{"{}", NULL, NULL},
		{"[1]", NULL, NULL},
		{"\"result\"", NULL, NULL},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const char *key, *val;
		size_t klen, vlen;
		int one = jsontext_only_member(cases[i].text, strlen(cases[i].text), &key, &klen, &val,
					       &vlen);
		if (!cases[i].key) {
			if (one)
				FAILF("%s has one member", cases[i].text);
			continue;
		}
		if (!one)
			FAILF("%s: no one member", cases[i].text);
		if (klen != strlen(cases[i].key) || memcmp(key, cases[i].key, klen) ||
		    vlen != strlen(cases[i].val) || memcmp(val, cases[i].val, vlen))
			FAILF("%s: %.*s = %.*s", cases[i].text, (int)klen, key, (int)vlen, val);
	}
}
