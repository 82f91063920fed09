/* loop.h - the one event loop: an epoll set of watches, each a fd and a
 * callback. Everything the server does runs from here, on one thread. */
#ifndef FORKPOOL_LOOP_H
#define FORKPOOL_LOOP_H

#include <stdint.h>

struct loop_watch;
typedef void (*loop_fn)(struct loop_watch *w, uint32_t events);

/* Embed a watch in the struct that owns the fd; the callback finds it with
 * container_of-style arithmetic or the arg pointer. */
struct loop_watch {
	int fd;
	loop_fn fn;
	void *arg;
	uint32_t events; /* what it is watched for now (set by loop_add and loop_mod) */
};

/* 0 / -1 (logged). */
int loop_init(void);
int loop_add(struct loop_watch *w, uint32_t events);
/* Changing a watch to what it already is makes no system call: a worker's
 * socket was re-armed for EPOLLIN after every chunk sent. */
int loop_mod(struct loop_watch *w, uint32_t events);
/* An edge-triggered watch whose condition still holds reports it again. */
int loop_rearm(struct loop_watch *w);
void loop_del(struct loop_watch *w);
/* Waits up to timeout_ms (-1: forever) and runs the callbacks of ready
 * watches. Returns the number of events, or -1 on error other than EINTR. */
int loop_once(int timeout_ms);

/* Milliseconds: Unix time (for stored times) and monotonic (for deadlines). */
int64_t now_unix_ms(void);
int64_t now_mono_ms(void);
int64_t now_mono_ns(void);

#endif
