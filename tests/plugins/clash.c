/* clash.c - a test plugin whose task takes a built-in task's name. */
#include <forkpool.h>

static json_t *square(const json_t *args, char *err, size_t errlen)
{
	(void)args, (void)err, (void)errlen;
	return json_integer(0);
}

static const struct forkpool_task tasks[] = {
	{.name = "square", .doc = "not the built-in one", .params = {{"x", FORKPOOL_NUMBER}},
	 .required = 1, .fn = square},
	{0},
};

static const struct forkpool_plugin plugin = {
	.abi = FORKPOOL_PLUGIN_ABI, .name = "clash", .tasks = tasks};

const struct forkpool_plugin *forkpool_plugin(void) { return &plugin; }
