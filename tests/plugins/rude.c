/* rude.c - a test plugin whose forkpool_plugin() misbehaves, as the
 * environment variable RUDE says: "hang" (it and a child it forks sleep, their
 * pids appended to the file RUDE_PIDS), "crash" (SIGSEGV), "print" (writes to
 * stdout, against the rules). Anything else: it behaves. */
#include <forkpool.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static json_t *rude_ok(const json_t *args, char *err, size_t errlen)
{
	(void)args, (void)err, (void)errlen;
	return json_true();
}

static const struct forkpool_task tasks[] = {
	{.name = "rude_ok", .doc = "true", .fn = rude_ok},
	{0},
};

static const struct forkpool_plugin plugin = {
	.abi = FORKPOOL_PLUGIN_ABI, .name = "rude", .tasks = tasks};

static void note_pid(void)
{
	const char *path = getenv("RUDE_PIDS");
	FILE *f = path ? fopen(path, "a") : NULL;
	if (f) {
		fprintf(f, "%d\n", (int)getpid());
		fclose(f);
	}
}

const struct forkpool_plugin *forkpool_plugin(void)
{
	const char *how = getenv("RUDE");
	if (how && !strcmp(how, "hang")) {
		if (fork() == 0) {
			note_pid();
			sleep(100);
			_exit(0);
		}
		note_pid();
		sleep(100);
	} else if (how && !strcmp(how, "crash")) {
		*(volatile int *)0 = 1;
	} else if (how && !strcmp(how, "print")) {
		printf("rude: hello from forkpool_plugin()\n");
	}
	return &plugin;
}
