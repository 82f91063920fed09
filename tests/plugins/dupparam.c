/* dupparam.c - a test plugin whose task names two parameters alike. */
#include <forkpool.h>

static json_t *twice(const json_t *args, char *err, size_t errlen)
{
	(void)args, (void)err, (void)errlen;
	return json_null();
}

static const struct forkpool_task tasks[] = {
	{.name = "twice", .doc = "x and x",
	 .params = {{"x", FORKPOOL_INT}, {"y", FORKPOOL_INT}, {"x", FORKPOOL_STRING}}, .required = 3,
	 .fn = twice},
	{0},
};

static const struct forkpool_plugin plugin = {
	.abi = FORKPOOL_PLUGIN_ABI, .name = "dupparam", .tasks = tasks};

const struct forkpool_plugin *forkpool_plugin(void) { return &plugin; }
