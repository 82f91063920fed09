/* flaky.c - a test plugin: an initializer that fails until a file exists,
 * and a log of every initializer and finalizer run.
 *
 * initargs: {"need": PATH, "log": PATH}, both optional. init fails with
 * "waiting for PATH" while PATH does not exist; init and fini append
 * "init PID" / "fini PID" lines to the log. */
#include <forkpool.h>

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static char log_path[4096];
static int ready;

static void log_line(const char *what)
{
	if (!log_path[0])
		return;
	char line[64];
	int n = snprintf(line, sizeof line, "%s %d\n", what, (int)getpid());
	int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd >= 0) {
		ssize_t w = write(fd, line, (size_t)n);
		(void)w;
		close(fd);
	}
}

static int init(const json_t *initargs, char *err, size_t errlen)
{
	const char *lp = json_string_value(json_object_get(initargs, "log"));
	const char *need = json_string_value(json_object_get(initargs, "need"));
	snprintf(log_path, sizeof log_path, "%s", lp ? lp : "");
	log_line("init");
	if (need && access(need, F_OK) != 0) {
		snprintf(err, errlen, "waiting for %s", need);
		return -1;
	}
	ready = 1;
	return 0;
}

static void fini(void) { log_line("fini"); }

static json_t *flaky_pid(const json_t *args, char *err, size_t errlen)
{
	(void)args;
	if (!ready) {
		snprintf(err, errlen, "ran before its initializer");
		return NULL;
	}
	return json_integer(getpid());
}

static json_t *flaky_fail(const json_t *args, char *err, size_t errlen)
{
	snprintf(err, errlen, "%s", json_string_value(json_array_get(args, 0)));
	return NULL;
}

static json_t *flaky_silent_fail(const json_t *args, char *err, size_t errlen)
{
	(void)args, (void)err, (void)errlen;
	return NULL;
}

static json_t *flaky_crash(const json_t *args, char *err, size_t errlen)
{
	(void)args, (void)err, (void)errlen;
	*(volatile int *)0 = 1; /* SIGSEGV */
	return NULL;
}

static json_t *flaky_echo(const json_t *args, char *err, size_t errlen)
{
	(void)err, (void)errlen;
	return json_deep_copy(args);
}

static const struct forkpool_task tasks[] = {
	{.name = "flaky_pid", .doc = "the worker's pid", .fn = flaky_pid},
	{.name = "flaky_fail", .doc = "fails with message", .params = {{"message", FORKPOOL_STRING}},
	 .required = 1, .fn = flaky_fail},
	{.name = "flaky_silent_fail", .doc = "fails without a message", .fn = flaky_silent_fail},
	{.name = "flaky_crash", .doc = "segfaults", .fn = flaky_crash},
	{.name = "flaky_echo", .doc = "its arguments (a number, then strings)",
	 .params = {{"x", FORKPOOL_NUMBER}, {"rest", FORKPOOL_STRING}}, .required = 1, .variadic = 1,
	 .fn = flaky_echo},
	{0},
};

static const struct forkpool_plugin plugin = {
	.abi = FORKPOOL_PLUGIN_ABI, .name = "flaky", .tasks = tasks, .init = init, .fini = fini};

const struct forkpool_plugin *forkpool_plugin(void) { return &plugin; }
