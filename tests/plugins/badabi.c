/* badabi.c - a test plugin built for an interface version that does not exist. */
#include <forkpool.h>

static json_t *noop(const json_t *args, char *err, size_t errlen)
{
	(void)args, (void)err, (void)errlen;
	return json_null();
}

static const struct forkpool_task tasks[] = {{.name = "badabi_noop", .fn = noop}, {0}};

static const struct forkpool_plugin plugin = {.abi = 99, .name = "badabi", .tasks = tasks};

const struct forkpool_plugin *forkpool_plugin(void) { return &plugin; }
