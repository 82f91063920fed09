/* executor.c - the Python baseline: executor.py, embedded in the binary so
 * that the bench needs nothing beside itself, run with `python3 -c`. */
#include "bench.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "buf.h"

__asm__(".section .rodata\n"
	".global executor_py\n"
	".type executor_py, @object\n"
	".balign 16\n"
	"executor_py:\n"
	".incbin \"bench/executor.py\"\n"
	".byte 0\n"
	".previous\n");
extern const char executor_py[];

static char version[32] = "?";

const char *executor_version(void) { return version; }

const char *executor_python(void)
{
	static char found[4096];
	const char *env = getenv("BENCH_PYTHON");
	if (env && *env)
		return access(env, X_OK) == 0 ? env : NULL;
	if (access("/usr/bin/python3", X_OK) == 0)
		return "/usr/bin/python3";
	const char *path = getenv("PATH");
	while (path && *path) {
		size_t n = strcspn(path, ":");
		snprintf(found, sizeof found, "%.*s/python3", (int)n, path);
		if (n && access(found, X_OK) == 0)
			return found;
		path += n + (path[n] == ':');
	}
	return NULL;
}

static double num(const json_t *o, const char *key)
{
	const json_t *v = json_object_get(o, key);
	return json_is_number(v) ? json_number_value(v) : -1;
}

int executor_run(const char *python, const char *workload, long long n, int workers, struct executor_run *out)
{
	char nstr[32], wstr[16];
	snprintf(nstr, sizeof nstr, "%lld", n);
	snprintf(wstr, sizeof wstr, "%d", workers);
	int fds[2];
	if (pipe(fds) < 0) {
		fprintf(stderr, "bench: pipe: %s\n", strerror(errno));
		return -1;
	}
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		fprintf(stderr, "bench: fork: %s\n", strerror(errno));
		close(fds[0]);
		close(fds[1]);
		return -1;
	}
	if (pid == 0) {
		dup2(fds[1], 1);
		close(fds[0]);
		close(fds[1]);
		execl(python, python, "-c", executor_py, workload, nstr, wstr, (char *)NULL);
		fprintf(stderr, "bench: exec %s: %s\n", python, strerror(errno));
		_exit(127);
	}
	close(fds[1]);
	struct buf text = {0};
	char chunk[4096];
	ssize_t k;
	while ((k = read(fds[0], chunk, sizeof chunk)) > 0 || (k < 0 && errno == EINTR))
		if (k > 0)
			buf_add(&text, chunk, (size_t)k);
	close(fds[0]);
	buf_addc(&text, '\0');
	int status;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	json_t *j = json_loads(text.data, JSON_DISABLE_EOF_CHECK, NULL);
	int rc = -1;
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && json_is_object(j)) {
		out->seconds = num(j, "seconds");
		out->items = (long long)num(j, "items");
		out->p50_ms = num(j, "p50_ms");
		out->p99_ms = num(j, "p99_ms");
		out->rss_kib = (long)num(j, "rss_kib");
		const char *v = json_string_value(json_object_get(j, "python"));
		if (v)
			snprintf(version, sizeof version, "%s", v);
		rc = out->seconds > 0 && out->items == n ? 0 : -1;
	}
	if (rc < 0)
		fprintf(stderr, "bench: executor.py %s %lld failed (status %#x): %.300s\n", workload, n,
			status, text.data);
	json_decref(j);
	buf_free(&text);
	return rc;
}
