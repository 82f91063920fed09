/* frame.c - length-prefixed frames (see frame.h). */
#include "frame.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

size_t frame_begin(struct buf *b)
{
	size_t off = b->len;
	buf_add(b, "\0\0\0\0", FRAME_HDR);
	return off;
}

void frame_end(struct buf *b, size_t off)
{
	uint32_t n = (uint32_t)(b->len - off - FRAME_HDR);
	unsigned char *h = (unsigned char *)b->data + off;
	h[0] = (unsigned char)n;
	h[1] = (unsigned char)(n >> 8);
	h[2] = (unsigned char)(n >> 16);
	h[3] = (unsigned char)(n >> 24);
}

int frame_write_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n > 0) {
		ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

long frame_fill(struct frame_reader *r, int fd)
{
	/* Drop consumed frames before growing. */
	if (r->off > 0) {
		memmove(r->in.data, r->in.data + r->off, r->in.len - r->off);
		r->in.len -= r->off;
		r->off = 0;
	}
	buf_reserve(&r->in, 64 * 1024);
	ssize_t got;
	do
		got = read(fd, r->in.data + r->in.len, r->in.cap - r->in.len - 1);
	while (got < 0 && errno == EINTR);
	if (got > 0)
		r->in.len += (size_t)got;
	return (long)got;
}

int frame_next(struct frame_reader *r, const char **p, size_t *n)
{
	size_t avail = r->in.len - r->off;
	if (avail < FRAME_HDR)
		return 0;
	const unsigned char *h = (const unsigned char *)r->in.data + r->off;
	uint32_t len = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24;
	if (len > FRAME_MAX)
		return -1;
	if (avail - FRAME_HDR < len) {
		buf_reserve(&r->in, len + FRAME_HDR);
		return 0;
	}
	*p = r->in.data + r->off + FRAME_HDR;
	*n = len;
	r->off += FRAME_HDR + len;
	return 1;
}

void frame_reader_free(struct frame_reader *r)
{
	buf_free(&r->in);
	r->off = 0;
}
