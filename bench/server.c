/* server.c - the forkpoold under test: started fresh for every measured run,
 * so that its peak RSS and its database belong to that run alone. */
#include "bench.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define START_DEADLINE_S 30.0
#define STOP_DEADLINE_S  60.0
#define MAX_ARGS         32

static void pause_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
	nanosleep(&ts, NULL);
}

/* The port of the log's "event=listen addr=HOST:PORT" line, or 0. */
static int logged_port(const char *log)
{
	FILE *f = fopen(log, "r");
	if (!f)
		return 0;
	char line[1024];
	int port = 0;
	while (fgets(line, sizeof line, f)) {
		char *addr = strstr(line, "addr=");
		if (!strstr(line, "event=listen") || !addr)
			continue;
		addr[strcspn(addr, " \n")] = '\0';
		char *colon = strrchr(addr, ':');
		if (colon)
			port = atoi(colon + 1);
	}
	fclose(f);
	return port;
}

static void show_log(const char *log)
{
	FILE *f = fopen(log, "r");
	if (!f)
		return;
	char line[1024];
	while (fgets(line, sizeof line, f))
		fprintf(stderr, "  | %s", line);
	fclose(f);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st, (void)flag, (void)ftw;
	remove(path);
	return 0;
}

int fpserver_start(struct fpserver *s, const char *bin, const char *const *extra)
{
	memset(s, 0, sizeof *s);
	snprintf(s->dir, sizeof s->dir, "%s/forkpool-bench.XXXXXX",
		 getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (!mkdtemp(s->dir)) {
		fprintf(stderr, "bench: mkdtemp %s: %s\n", s->dir, strerror(errno));
		return -1;
	}
	snprintf(s->db, sizeof s->db, "%s/bench.db", s->dir);
	snprintf(s->log, sizeof s->log, "%s/server.log", s->dir);
	const char *argv[MAX_ARGS];
	int n = 0;
	argv[n++] = bin;
	argv[n++] = "--listen";
	argv[n++] = "127.0.0.1:0";
	argv[n++] = "--db";
	argv[n++] = s->db;
	argv[n++] = "--sync";
	argv[n++] = "normal";
	for (int i = 0; extra && extra[i] && n < MAX_ARGS - 1; i++)
		argv[n++] = extra[i];
	argv[n] = NULL;
	int fd = open(s->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		fprintf(stderr, "bench: open %s: %s\n", s->log, strerror(errno));
		return -1;
	}
	pid_t parent = getpid();
	s->pid = fork();
	if (s->pid < 0) {
		fprintf(stderr, "bench: fork: %s\n", strerror(errno));
		close(fd);
		return -1;
	}
	if (s->pid == 0) {
		/* A bench that dies takes its server with it. */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != parent)
			_exit(1);
		dup2(fd, 1);
		dup2(fd, 2);
		execv(bin, (char *const *)argv);
		fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
	close(fd);
	double deadline = now_s() + START_DEADLINE_S;
	while (!(s->port = logged_port(s->log))) {
		int status;
		pid_t r = waitpid(s->pid, &status, WNOHANG);
		if (r == s->pid || now_s() > deadline) {
			fprintf(stderr, "bench: %s did not start listening; its log:\n", bin);
			show_log(s->log);
			if (r != s->pid) {
				kill(s->pid, SIGKILL);
				waitpid(s->pid, NULL, 0);
			}
			s->pid = 0;
			nftw(s->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
			return -1;
		}
		pause_ms(5);
	}
	snprintf(s->base, sizeof s->base, "http://127.0.0.1:%d", s->port);
	return 0;
}

long fpserver_peak_rss_kib(const struct fpserver *s)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/%d/status", (int)s->pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	long kib = -1;
	while (fgets(line, sizeof line, f))
		if (!strncmp(line, "VmHWM:", 6))
			kib = strtol(line + 6, NULL, 10);
	fclose(f);
	return kib;
}

int fpserver_switches(const struct fpserver *s, long long *vol, long long *invol)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/%d/status", (int)s->pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	int found = 0;
	while (fgets(line, sizeof line, f)) {
		if (!strncmp(line, "voluntary_ctxt_switches:", 24))
			found += sscanf(line + 24, "%lld", vol) == 1;
		else if (!strncmp(line, "nonvoluntary_ctxt_switches:", 27))
			found += sscanf(line + 27, "%lld", invol) == 1;
	}
	fclose(f);
	return found == 2 ? 0 : -1;
}

/* The parent pid and CPU seconds of process pid from /proc; 0 or -1. */
static int proc_stat(pid_t pid, pid_t *ppid, double *cpu_s)
{
	char path[64], text[1024];
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t n = fread(text, 1, sizeof text - 1, f);
	fclose(f);
	text[n] = '\0';
	/* The fields after "(comm)": state is field 3, ppid 4, utime 14, stime 15. */
	char *p = strrchr(text, ')');
	int pp;
	unsigned long long ut, st;
	if (!p || sscanf(p + 2, "%*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &pp, &ut, &st) != 3)
		return -1;
	*ppid = pp;
	*cpu_s = (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
	return 0;
}

double fpserver_cpu_s(const struct fpserver *s)
{
	pid_t ppid;
	double cpu;
	return proc_stat(s->pid, &ppid, &cpu) == 0 ? cpu : -1;
}

double fpserver_workers_cpu_s(const struct fpserver *s)
{
	DIR *d = opendir("/proc");
	if (!d)
		return -1;
	double total = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		pid_t pid = (pid_t)atoi(e->d_name), ppid;
		double cpu;
		if (pid > 0 && proc_stat(pid, &ppid, &cpu) == 0 && ppid == s->pid)
			total += cpu;
	}
	closedir(d);
	return total;
}

long long fpserver_db_bytes(const struct fpserver *s)
{
	long long total = 0;
	const char *suffix[] = {"", "-wal"};
	for (int i = 0; i < 2; i++) {
		char path[PATH_MAX + 32];
		struct stat st;
		snprintf(path, sizeof path, "%s%s", s->db, suffix[i]);
		if (stat(path, &st) == 0)
			total += st.st_size;
	}
	return total;
}

int fpserver_stop(struct fpserver *s)
{
	if (s->pid <= 0)
		return -1;
	int status = 0, rc = -1;
	kill(s->pid, SIGTERM);
	double deadline = now_s() + STOP_DEADLINE_S;
	for (;;) {
		pid_t r = waitpid(s->pid, &status, WNOHANG);
		if (r == s->pid) {
			rc = WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
			break;
		}
		if (r < 0 && errno != EINTR)
			break;
		if (now_s() > deadline) {
			fprintf(stderr, "bench: the server did not stop within %.0f s; killing it\n",
				STOP_DEADLINE_S);
			kill(s->pid, SIGKILL);
			waitpid(s->pid, &status, 0);
			break;
		}
		pause_ms(5);
	}
	if (rc < 0) {
		fprintf(stderr, "bench: the server did not exit cleanly (status %#x); its log:\n", status);
		show_log(s->log);
	}
	s->pid = 0;
	nftw(s->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
	return rc;
}
