/* test_pyclient.c - runs tests/test_pyclient.py (the Python client,
 * clients/python/forkpool.py, as a concurrent.futures.Executor) against the
 * real server with a token. Without python3 the test says so and passes. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client.h"
#include "harness.h"

#define TOKEN "pyclient-test-token-0123456789"

/* The source tree: the nearest directory above the build directory that
 * holds the client. */
static const char *source_dir(void)
{
	static char dir[PATH_MAX];
	snprintf(dir, sizeof dir, "%s", harness_bin_dir());
	for (;;) {
		char probe[PATH_MAX + 64];
		snprintf(probe, sizeof probe, "%s/clients/python/forkpool.py", dir);
		if (access(probe, R_OK) == 0)
			return dir;
		char *slash = strrchr(dir, '/');
		if (!slash || slash == dir)
			FAILF("no clients/python/forkpool.py above %s", harness_bin_dir());
		*slash = '\0';
	}
}

TEST_T(pyclient_executor_against_the_real_server, 240)
{
	if (system("command -v python3 >/dev/null 2>&1") != 0) {
		printf("     note: python3 is not installed; the Python client was not tested\n");
		return;
	}
	FILE *f = fopen("token", "w");
	fputs(TOKEN "\n", f);
	fclose(f);
	struct server s;
	server_start(&s, "--workers", "2", "--token-file", "token", NULL);
	char dir[PATH_MAX + 32];
	snprintf(dir, sizeof dir, "%s/clients/python", source_dir());
	setenv("FORKPOOL_CLIENT_DIR", dir, 1);
	setenv("FORKPOOL_URL", s.base, 1);
	setenv("FORKPOOL_TOKEN", TOKEN, 1);
	char cmd[2 * PATH_MAX];
	snprintf(cmd, sizeof cmd, "python3 %s/tests/test_pyclient.py > py.out 2>&1", source_dir());
	int rc = system(cmd);
	FILE *o = fopen("py.out", "r");
	static char out[65536];
	size_t n = o ? fread(out, 1, sizeof out - 1, o) : 0;
	out[n] = '\0';
	if (o)
		fclose(o);
	if (rc != 0)
		FAILF("test_pyclient.py failed (exit %d):\n%s", rc, out);
	/* unittest's summary: "Ran N tests in Xs". */
	char *ran = strstr(out, "Ran ");
	if (ran)
		printf("     python: %.*s\n", (int)strcspn(ran, "\n"), ran);
	CHECK_INT(WEXITSTATUS(server_stop(&s)), 0);
}
