/* stubborn.c - a test plugin of badly behaved tasks, for the pool's failure
 * handling (tests/test_failures.c): one that ignores SIGTERM, so that a
 * timeout has to end it with SIGKILL, and one that calls exit(). */
#include <forkpool.h>

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>

static json_t *stubborn_sleep(const json_t *args, char *err, size_t errlen)
{
	(void)err, (void)errlen;
	signal(SIGTERM, SIG_IGN);
	double s = json_number_value(json_array_get(args, 0));
	struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
	return json_null();
}

static json_t *stubborn_exit(const json_t *args, char *err, size_t errlen)
{
	(void)err, (void)errlen;
	exit((int)json_integer_value(json_array_get(args, 0)));
}

static const struct forkpool_task tasks[] = {
	{.name = "stubborn_sleep", .doc = "sleeps for seconds, ignoring SIGTERM",
	 .params = {{"seconds", FORKPOOL_UNUMBER}}, .required = 1, .fn = stubborn_sleep},
	{.name = "stubborn_exit", .doc = "calls exit(status)", .params = {{"status", FORKPOOL_UINT}},
	 .required = 1, .fn = stubborn_exit},
	{0},
};

static const struct forkpool_plugin plugin = {
	.abi = FORKPOOL_PLUGIN_ABI, .name = "stubborn", .tasks = tasks};

const struct forkpool_plugin *forkpool_plugin(void) { return &plugin; }
