/* frame.h - length-prefixed frames on the server <-> worker socketpair.
 *
 * A frame is a 4-byte length (little-endian u32) followed by that many bytes of
 * payload. EOF on the socket means the peer is gone. The payload is text made of
 * records, one per line:
 *
 * server -> worker, one frame per chunk:
 *     C <task-name> <n>\n            then n lines, one per item:
 *     <args-json>\n                  the item's argument array, compact JSON
 *
 * worker -> server (a frame may carry several records):
 *     H <pid>\n                      hello: the worker is ready for chunks
 *     R <pos> <micros> <json>\n      item <pos> (0-based position in the chunk)
 *                                    finished after <micros> µs; <json> is the
 *                                    result as JSON text (integers may be wider
 *                                    than 64 bits)
 *     E <pos> <micros> <json-str>\n  item <pos> failed (task_error); the message
 *                                    as a JSON string
 *     F <json-str>\n                 sent instead of the hello: the worker cannot
 *                                    serve (a plugin's initializer failed, ...);
 *                                    the message says why, and the worker exits
 *                                    with status WORKER_EXIT_CONFIG. Also sent
 *                                    in a chunk, after the records of the items
 *                                    before, when a persistent program turns out
 *                                    not to start: the item it was given did not
 *                                    run, and the worker counts as one that
 *                                    could not start
 *
 * The worker runs the items of a chunk in order and reports each one; a chunk is
 * done when n records have come back. JSON text never holds a raw newline, so a
 * line is always one record. Records of fast items are batched into one frame,
 * but none waits more than about a millisecond for the next item to end.
 *
 * The progress page: the server hands each worker a shared page (a memfd, the
 * worker's fd 4) holding a struct progress. Before it starts item i of a chunk
 * the worker stores started_ns, then item = i + 1 (release). The server resets
 * item to 0 before it sends a chunk. So when a worker dies, item - 1 is exactly
 * the item it was running, even if records of earlier items were still unsent;
 * and started_ns is when the running item began (for per-item timeouts). */
#ifndef FORKPOOL_FRAME_H
#define FORKPOOL_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* The worker's fds: the socket, and the progress page. */
#define WORKER_SOCK_FD 3
#define WORKER_PROGRESS_FD 4
/* The worker's exit status when its configuration (plugins, tasks files)
 * keeps it from serving. */
#define WORKER_EXIT_CONFIG 3
/* A --describe run writes "forkpool-worker: loading plugin PATH" (or
 * "tasks file PATH") on stderr before it loads each extension, and
 * "forkpool-worker: loading done" after the last: the server tells from the
 * last one which plugin hung or crashed it. */
#define DESCRIBE_LOADING "loading "

struct progress {
	_Atomic uint32_t item;     /* 1 + position of the item running; 0 = none yet */
	uint32_t pad;
	_Atomic int64_t started_ns; /* CLOCK_MONOTONIC ns when that item started */
};

#define FRAME_MAX (256u << 20) /* a frame longer than this is a protocol error */
#define FRAME_HDR 4

/* Starts a frame in b: appends a length placeholder; returns its offset. */
size_t frame_begin(struct buf *b);
/* Fills in the length of the frame started at off (everything after it). */
void frame_end(struct buf *b, size_t off);

/* Writes all of p[0..n) to a blocking fd, retrying on EINTR and short
 * writes. Returns 0, or -1 with errno set. Never raises SIGPIPE. */
int frame_write_all(int fd, const void *p, size_t n);

/* An incremental reader for a (possibly non-blocking) socket. */
struct frame_reader {
	struct buf in; /* bytes read but not yet consumed */
	size_t off;    /* start of the first unconsumed frame in in */
};

/* Reads what the socket has (one read call). Returns the number of bytes
 * read (> 0), 0 on EOF, -1 on error (errno EAGAIN when nothing is there). */
long frame_fill(struct frame_reader *r, int fd);
/* Takes the next whole frame: returns 1 and points *p and *n at its payload
 * (valid until the next frame_fill), 0 if no whole frame is buffered yet,
 * -1 if the length is over FRAME_MAX (a broken peer). */
int frame_next(struct frame_reader *r, const char **p, size_t *n);
void frame_reader_free(struct frame_reader *r);

#endif
