/* primes.c - an example forkpool plugin: the "load once per worker" pattern.
 *
 * The initializer builds a sieve of Eratosthenes up to a limit taken from
 * the plugin's initargs, once in each worker; is_prime_fast then answers
 * from it in constant time. sieve_info shows the per-worker state (which
 * process built it, how many times, how many items it has served since).
 *
 *   make examples
 *   forkpoold --plugin build/examples/primes.so='{"limit": 10000000}'
 *   curl -s localhost:8080/v1/batches -H 'Content-Type: application/json' \
 *        -d '{"task": "is_prime_fast", "items": [[7], [9], [9999991]]}'
 *
 * Build it alone: cc -shared -fPIC -O2 -o primes.so primes.c \
 *                    $(pkg-config --cflags --libs jansson) */
#include <forkpool.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_LIMIT 10000000
#define MAX_LIMIT 4000000000LL /* a 250 MB sieve per worker */

static uint8_t *composite; /* bit i: 2i+1 is composite */
static long long limit, nprimes;
static int inits;
static long long served;

static int is_composite_odd(long long n) { return composite[n >> 4] >> ((n >> 1) & 7) & 1; }

static int init(const json_t *initargs, char *err, size_t errlen)
{
	limit = DEFAULT_LIMIT;
	if (json_is_object(initargs)) {
		const char *key;
		json_t *v;
		json_object_foreach((json_t *)initargs, key, v)
		{
			if (strcmp(key, "limit")) {
				snprintf(err, errlen, "unknown initarg \"%s\" (expected {\"limit\": N})", key);
				return -1;
			}
			if (!json_is_integer(v) || json_integer_value(v) < 2 ||
			    json_integer_value(v) > MAX_LIMIT) {
				snprintf(err, errlen, "limit must be an integer from 2 to %lld", MAX_LIMIT);
				return -1;
			}
			limit = json_integer_value(v);
		}
	} else if (!json_is_null(initargs)) {
		snprintf(err, errlen, "initargs must be an object {\"limit\": N}");
		return -1;
	}
	composite = calloc((size_t)(limit >> 4) + 1, 1);
	if (!composite) {
		snprintf(err, errlen, "no memory for a sieve up to %lld (%lld bytes)", limit,
			 (limit >> 4) + 1);
		return -1;
	}
	for (long long i = 3; i * i <= limit; i += 2)
		if (!is_composite_odd(i))
			for (long long j = i * i; j <= limit; j += 2 * i)
				composite[j >> 4] |= (uint8_t)(1u << ((j >> 1) & 7));
	nprimes = limit >= 2;
	for (long long i = 3; i <= limit; i += 2)
		nprimes += !is_composite_odd(i);
	inits++;
	return 0;
}

static void fini(void)
{
	free(composite);
	composite = NULL;
}

static json_t *is_prime_fast(const json_t *args, char *err, size_t errlen)
{
	json_int_t n = json_integer_value(json_array_get(args, 0));
	if (n > limit) {
		snprintf(err, errlen, "%lld is past the sieve's limit %lld (raise it with the "
				      "plugin's initargs {\"limit\": N})", (long long)n, limit);
		return NULL;
	}
	served++;
	return json_boolean(n == 2 || (n > 2 && (n & 1) && !is_composite_odd(n)));
}

static json_t *sieve_info(const json_t *args, char *err, size_t errlen)
{
	(void)args, (void)err, (void)errlen;
	served++;
	return json_pack("{s:I, s:I, s:i, s:i, s:I}", "limit", (json_int_t)limit, "primes",
			 (json_int_t)nprimes, "pid", (int)getpid(), "inits", inits, "served",
			 (json_int_t)served);
}

static const struct forkpool_task tasks[] = {
	{.name = "is_prime_fast", .doc = "whether n is prime, from the worker's sieve (n <= limit)",
	 .params = {{"n", FORKPOOL_INT}}, .required = 1, .fn = is_prime_fast},
	{.name = "sieve_info",
	 .doc = "the worker's sieve: limit, primes below it, pid, inits, items served",
	 .fn = sieve_info},
	{0},
};

static const struct forkpool_plugin plugin = {
	.abi = FORKPOOL_PLUGIN_ABI,
	.name = "primes",
	.tasks = tasks,
	.init = init,
	.fini = fini,
};

const struct forkpool_plugin *forkpool_plugin(void) { return &plugin; }
