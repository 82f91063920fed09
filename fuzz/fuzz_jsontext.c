/* fuzz_jsontext.c - libFuzzer target for the checker of the JSON text
 * programs write (common/jsontext.c), against jansson. Each input is what a
 * program might print as its result. What must hold:
 *   - the two take and refuse the same texts, except the numbers jansson
 *     cannot hold (json_error_numeric_overflow), which jsontext keeps, and
 *     texts with a NUL byte, which jansson takes for their end;
 *   - what both take is the same value once compacted (jansson reads the
 *     compact text back as it read the input);
 *   - compacting is idempotent, and a refused text leaves the buffer as it
 *     was;
 *   - jsontext_only_member stays inside the compact text.
 * Built and run by `make fuzz`, after the request target. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "jsontext.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s = (const char *)data;
	struct buf out = {0};
	buf_adds(&out, "x"); /* what was there stays */
	int ours = jsontext_compact(&out, s, size) == 0;
	if (!ours && (out.len != 1 || out.data[0] != 'x'))
		abort(); /* a refusal changed the buffer */
	/* jansson reads a NUL byte as the end of the text ("4\0" is 4 to it),
	 * where it is a byte that no JSON text holds: no comparison then. */
	int nul = memchr(s, 0, size) != NULL;
	if (nul && ours)
		abort(); /* a NUL is outside every JSON token */
	json_error_t err;
	json_t *v = nul ? NULL : json_loadb(s, size, JSON_DECODE_ANY, &err);
	if (!nul && !v && ours && json_error_code(&err) != json_error_numeric_overflow) {
		fprintf(stderr, "jsontext takes what jansson refuses: %s\n", err.text);
		abort();
	}
	if (v && !ours) {
		fprintf(stderr, "jsontext refuses what jansson takes\n");
		abort();
	}
	if (ours) {
		const char *c = out.data + 1;
		size_t n = out.len - 1;
		struct buf again = {0};
		if (jsontext_compact(&again, c, n) < 0 || again.len != n || memcmp(again.data, c, n))
			abort(); /* not idempotent */
		buf_free(&again);
		if (v) {
			json_t *w = json_loadb(c, n, JSON_DECODE_ANY, &err);
			if (!w || !json_equal(v, w)) {
				fprintf(stderr, "the compact text is another value\n");
				abort();
			}
			json_decref(w);
		}
		const char *key, *val;
		size_t klen, vlen;
		if (jsontext_only_member(c, n, &key, &klen, &val, &vlen) &&
		    (key < c || key + klen > c + n || val < c || val + vlen > c + n))
			abort();
	}
	json_decref(v);
	buf_free(&out);
	return 0;
}
