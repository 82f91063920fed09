/* harness.c - the test runner (see harness.h). */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct test {
	const char *name, *file;
	test_fn fn;
	int timeout_s;
};

static struct test tests[1024];
static int ntests;
static char bin_dir[PATH_MAX];

void harness_register(const char *name, test_fn fn, const char *file, int timeout_s)
{
	if (ntests == (int)(sizeof tests / sizeof tests[0]))
		abort();
	tests[ntests++] = (struct test){name, file, fn, timeout_s};
}

void harness_fail(const char *file, int line, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "    %s:%d: ", file, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	fflush(stderr);
	_exit(1);
}

const char *harness_bin_dir(void) { return bin_dir; }

int64_t harness_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void rm_rf(const char *path)
{
	DIR *d = opendir(path);
	if (!d) {
		unlink(path);
		return;
	}
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		char sub[PATH_MAX];
		snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
		struct stat st;
		if (lstat(sub, &st) == 0 && S_ISDIR(st.st_mode))
			rm_rf(sub);
		else
			unlink(sub);
	}
	closedir(d);
	rmdir(path);
}

/* Prints the last lines of a file of the test's directory, indented. */
static void show_tail(const char *dir, const char *name, int lines)
{
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "r");
	if (!f)
		return;
	static char ring[64][512];
	int n = 0;
	while (n < 1000000 && fgets(ring[n % 64], sizeof ring[0], f))
		n++;
	fclose(f);
	if (lines > 64)
		lines = 64;
	for (int i = n > lines ? n - lines : 0; i < n; i++) {
		const char *l = ring[i % 64];
		printf("    | %s%s", l, l[strlen(l) - 1] == '\n' ? "" : "\n");
	}
}

static int selected(const char *name, int argc, char **argv)
{
	if (argc < 2)
		return 1;
	for (int i = 1; i < argc; i++)
		if (strstr(name, argv[i]))
			return 1;
	return 0;
}

/* Runs one test in a child with its own process group, so that everything it
 * started (servers, workers) is killed with it when it overruns. */
static int run_one(const struct test *t)
{
	char dir[] = "/tmp/forkpool-test.XXXXXX";
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 0;
	}
	int64_t t0 = harness_now_ms();
	pid_t pid = fork();
	if (pid == 0) {
		setpgid(0, 0);
		if (chdir(dir) != 0)
			_exit(2);
		/* What the test and its libraries print is shown only if it fails. */
		int fd = open("test.stderr", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			dup2(fd, 2);
			close(fd);
		}
		t->fn();
		fflush(NULL);
		_exit(0);
	}
	setpgid(pid, pid);
	int status = 0, timed_out = 0;
	int64_t deadline = t0 + (int64_t)t->timeout_s * 1000;
	for (;;) {
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid)
			break;
		if (r < 0 && errno != EINTR)
			break;
		if (harness_now_ms() > deadline) {
			timed_out = 1;
			kill(-pid, SIGKILL);
			waitpid(pid, &status, 0);
			break;
		}
		struct timespec ts = {0, 5 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	kill(-pid, SIGKILL); /* anything the test left running */
	int ok = !timed_out && WIFEXITED(status) && WEXITSTATUS(status) == 0;
	if (!ok) {
		show_tail(dir, "test.stderr", 40);
		/* The server's own account of the failure (the last server the
		 * test started writes server.log in the test's directory). */
		show_tail(dir, "server.log", 20);
	}
	rm_rf(dir);
	long ms = (long)(harness_now_ms() - t0);
	if (ok)
		printf("ok   %-48s %6ld ms\n", t->name, ms);
	else if (timed_out)
		printf("FAIL %-48s timed out after %d s (%s)\n", t->name, t->timeout_s, t->file);
	else if (WIFSIGNALED(status))
		printf("FAIL %-48s killed by signal %d (%s)\n", t->name, WTERMSIG(status), t->file);
	else
		printf("FAIL %-48s (%s)\n", t->name, t->file);
	fflush(stdout);
	return ok;
}

int main(int argc, char **argv)
{
	const char *bd = getenv("FORKPOOL_BIN_DIR");
	if (!realpath(bd && *bd ? bd : "build", bin_dir)) {
		fprintf(stderr, "forkpool-tests: cannot find the build directory %s\n", bd ? bd : "build");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	int passed = 0, failed = 0;
	for (int i = 0; i < ntests; i++) {
		if (!selected(tests[i].name, argc, argv))
			continue;
		if (run_one(&tests[i]))
			passed++;
		else
			failed++;
	}
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
