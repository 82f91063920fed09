/* loop.c - the epoll event loop (see loop.h). */
#include "loop.h"

#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static int epfd = -1;

int loop_init(void)
{
	epfd = epoll_create1(EPOLL_CLOEXEC);
	if (epfd < 0) {
		log_error("epoll", "msg=\"%s\"", strerror(errno));
		return -1;
	}
	return 0;
}

static int ctl(int op, struct loop_watch *w, uint32_t events)
{
	struct epoll_event ev = {.events = events, .data.ptr = w};
	if (epoll_ctl(epfd, op, w->fd, &ev) < 0) {
		log_error("epoll_ctl", "fd=%d op=%d msg=\"%s\"", w->fd, op, strerror(errno));
		return -1;
	}
	w->events = events;
	return 0;
}

int loop_add(struct loop_watch *w, uint32_t events) { return ctl(EPOLL_CTL_ADD, w, events); }

int loop_mod(struct loop_watch *w, uint32_t events)
{
	return w->events == events ? 0 : ctl(EPOLL_CTL_MOD, w, events);
}

int loop_rearm(struct loop_watch *w) { return ctl(EPOLL_CTL_MOD, w, w->events); }

void loop_del(struct loop_watch *w)
{
	if (w->fd >= 0)
		epoll_ctl(epfd, EPOLL_CTL_DEL, w->fd, NULL);
}

int loop_once(int timeout_ms)
{
	struct epoll_event evs[64];
	int n = epoll_wait(epfd, evs, 64, timeout_ms);
	if (n < 0)
		return errno == EINTR ? 0 : -1;
	for (int i = 0; i < n; i++) {
		struct loop_watch *w = evs[i].data.ptr;
		w->fn(w, evs[i].events);
	}
	return n;
}

int64_t now_unix_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t now_mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t now_mono_ms(void) { return now_mono_ns() / 1000000; }
