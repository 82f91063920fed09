/* sha256.h - SHA-256 (FIPS 180-4), for telling request bodies apart. */
#ifndef FORKPOOL_SHA256_H
#define FORKPOOL_SHA256_H

#include <stddef.h>

/* Writes the 32-byte digest of p[0..n) to out. */
void sha256(const void *p, size_t n, unsigned char out[32]);

#endif
