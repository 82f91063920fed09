/* big.c - a test plugin of large results: big_string n is a string of n
 * 'x's (its JSON text n + 2 bytes), for the limit on one result and for
 * frames that must stay under FRAME_MAX while results pile up. */
#include <forkpool.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static json_t *big_string(const json_t *args, char *err, size_t errlen)
{
	size_t n = (size_t)json_integer_value(json_array_get(args, 0));
	char *s = malloc(n ? n : 1);
	if (!s) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	memset(s, 'x', n);
	json_t *v = json_stringn_nocheck(s, n);
	free(s);
	return v;
}

static const struct forkpool_task tasks[] = {
	{.name = "big_string", .doc = "a string of n x's", .params = {{"n", FORKPOOL_UINT}},
	 .required = 1, .fn = big_string},
	{0},
};

static const struct forkpool_plugin plugin = {
	.abi = FORKPOOL_PLUGIN_ABI, .name = "big", .tasks = tasks};

const struct forkpool_plugin *forkpool_plugin(void) { return &plugin; }
