/* fuzz_request.c - libFuzzer target for the request validator: each input is
 * the body of a POST /v1/batches, parsed and checked by request_parse_batch
 * (server/request.c) against the built-in task catalogue, as the server does
 * before it stores anything. Built and run by `make fuzz`; inputs that crash
 * it are kept in fuzz/regressions and replayed by `make test`.
 *
 * The catalogue comes from the worker program (FORKPOOL_WORKER, default
 * build/forkpool-worker), as in the server. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog.h"
#include "request.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	const char *worker = getenv("FORKPOOL_WORKER");
	if (catalog_load(worker ? worker : "build/forkpool-worker") < 0) {
		fprintf(stderr, "fuzz_request: no task catalogue (set FORKPOOL_WORKER)\n");
		exit(1);
	}
	return 0;
}

static int64_t lines(const struct buf *b)
{
	int64_t n = 0;
	for (size_t i = 0; i < b->len; i++)
		n += b->data[i] == '\n';
	return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* Small limits, so that accepted inputs stay cheap. */
	static const struct request_limits lim = {.workers = 4, .max_items = 10000};
	struct batch_request q;
	struct request_error e;
	if (request_parse_batch((const char *)data, size, &lim, &q, &e) == 0) {
		/* What the server relies on for an accepted body. */
		if (q.b.size < 1 || q.b.size > lim.max_items || q.b.chunksize < 1 || !q.task ||
		    strcmp(q.b.task, q.task->name) || lines(&q.args) != q.b.size ||
		    q.b.retries < 0 || q.b.retries > REQUEST_MAX_RETRIES || q.b.timeout < 0)
			abort();
		request_free(&q);
	} else if ((e.status != 400 && e.status != 413) || !e.code[0] || !e.message[0] ||
		   !memchr(e.message, '\0', sizeof e.message)) {
		abort();
	}
	/* The fast path says yes only to what jansson's says yes to, alike. */
	if (!request_paths_agree((const char *)data, size, &lim))
		abort();
	return 0;
}
