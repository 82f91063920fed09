/* test_bench.c - `make bench` must not rot: forkpool-bench --quick runs every
 * workload at a tiny size against the real server and writes a well-formed
 * table. No timing is checked; the targets are the bench report's business. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define BEGIN_MARK "<!-- forkpool-bench: begin"
#define END_MARK   "<!-- forkpool-bench: end -->"

/* Runs forkpool-bench --quick --out out with the extra environment setting
 * (NAME=value, or NULL); its stdout goes to bench.out. Returns the exit status. */
static int run_bench(const char *out, const char *env)
{
	char bin[1024];
	snprintf(bin, sizeof bin, "%s/forkpool-bench", harness_bin_dir());
	pid_t pid = fork();
	if (pid < 0)
		FAILF("fork: %s", strerror(errno));
	if (pid == 0) {
		int fd = open("bench.out", O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0)
			_exit(126);
		dup2(fd, 1);
		close(fd);
		if (env)
			putenv((char *)env);
		execl(bin, bin, "--quick", "--out", out, (char *)NULL);
		fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
	int status;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			FAILF("waitpid: %s", strerror(errno));
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		FAILF("cannot read %s: %s", path, strerror(errno));
	char *text = NULL;
	size_t cap = 0;
	if (getdelim(&text, &cap, '\0', f) < 0)
		text = strdup("");
	fclose(f);
	return text;
}

static int pipes(const char *line, size_t len)
{
	int n = 0;
	for (size_t i = 0; i < len; i++)
		n += line[i] == '|';
	return n;
}

/* Checks every markdown table of text: a header, a separator, rows with as
 * many cells as the header, and no failed run. Returns the number of
 * tables; rows[t] is the number of data rows of table t. */
static int check_tables(const char *text, int *rows, int max)
{
	int ntables = 0, want = 0, row = -1;
	for (const char *p = text; *p;) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);
		if (*p != '|') {
			row = -1;
		} else if (row < 0) {
			if (ntables == max)
				FAILF("more than %d tables", max);
			want = pipes(p, len);
			rows[ntables++] = 0;
			row = 0;
		} else {
			if (pipes(p, len) != want)
				FAILF("a row with %d cells under a header of %d: %.*s", pipes(p, len) - 1,
				      want - 1, (int)len, p);
			if (row == 0 && strncmp(p, "|---", 4) && strncmp(p, "|--:", 4))
				FAILF("no separator line under the header: %.*s", (int)len, p);
			if (row > 0)
				rows[ntables - 1]++;
			if (strstr(p, "failed") && (size_t)(strstr(p, "failed") - p) < len)
				FAILF("a run failed: %.*s", (int)len, p);
			row++;
		}
		p += len + (nl != NULL);
	}
	return ntables;
}

TEST_T(bench_quick_writes_a_well_formed_table, 180)
{
	int status = run_bench("benchmarks.md", NULL);
	if (status != 0)
		FAILF("forkpool-bench --quick exited with %d; its output:\n%s", status, slurp("bench.out"));
	char *doc = slurp("benchmarks.md"), *out = slurp("bench.out");
	CHECK_CONTAINS(doc, BEGIN_MARK);
	CHECK_CONTAINS(doc, END_MARK);
	/* The file holds what was printed. */
	char *b = strstr(doc, BEGIN_MARK);
	CHECK(strstr(b, out) != NULL);
	CHECK_CONTAINS(doc, "cores online");
	int rows[4];
	CHECK_INT(check_tables(out, rows, 4), 2);
	CHECK(rows[0] >= 10);
	CHECK_INT(rows[1], 4); /* W6: 2 sizes x 1 and 2 workers */
	static const char *const expect[] = {"| W1 | items/s |",
					     "| W2 | p50 ms |",
					     "| W2 | p99 ms |",
					     "| W3 | items/s |",
					     "| W3 | control: GET /healthz answers/s",
					     "| W4 | speedup, sequential / forkpool |",
					     "| W4 | speedup; executor column: ",
					     "| W5 | server peak RSS MiB |",
					     "| W5 | database bytes per item |"};
	for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++)
		CHECK_CONTAINS(out, expect[i]);
	free(doc);
	free(out);
}

TEST_T(bench_rewrites_only_its_part_of_the_file, 120)
{
	FILE *f = fopen("benchmarks.md", "w");
	CHECK(f != NULL);
	fputs("# Kept above\n\n" BEGIN_MARK " (generated; make bench rewrites it) -->\nold table\n" END_MARK
	      "\n\n## Kept below\n",
	      f);
	fclose(f);
	CHECK_INT(run_bench("benchmarks.md", "BENCH_WORKLOADS=W4"), 0);
	char *doc = slurp("benchmarks.md");
	CHECK(!strncmp(doc, "# Kept above\n\n" BEGIN_MARK, strlen("# Kept above\n\n" BEGIN_MARK)));
	CHECK(strstr(doc, "old table") == NULL);
	CHECK_CONTAINS(doc, "| W4 | speedup");
	CHECK_CONTAINS(doc, END_MARK "\n\n## Kept below\n");
	free(doc);
}
