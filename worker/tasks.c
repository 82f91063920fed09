/* tasks.c - the built-in tasks and the table that lists them (see tasks.h).
 *
 * Integer results are exact: they are computed in (unsigned) __int128 with
 * overflow checks, and anything past signed 128 bits is the error "overflow".
 * Real results that leave the doubles (inf) are "overflow" too, since JSON has
 * no way to write them. */
#include "tasks.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "intargs.h"
#include "jsonw.h"

#define I128_MAX ((__int128)(((unsigned __int128)1 << 127) - 1))
#define COUNT_PRIMES_MAX 1000000000000000LL /* 1e15: the sieve's base primes stay < 32M */
#define SIEVE_SEG (128 * 1024)              /* odd numbers (bytes) per sieve segment */

int task_error(struct buf *err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n > 0) {
		buf_reserve(err, (size_t)n);
		va_start(ap, fmt);
		vsnprintf(err->data + err->len, (size_t)n + 1, fmt, ap);
		va_end(ap);
		err->len += (size_t)n;
	}
	return -1;
}

static int64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- Argument helpers. The arguments were checked against the params. ---- */

/* A "number" argument: a JSON integer (exact) or real. */
struct num {
	bool is_int;
	json_int_t i;
	double d; /* the value as a double, either way */
};

static struct num num_arg(const json_t *args, size_t k)
{
	const json_t *v = json_array_get(args, k);
	return (struct num){json_is_integer(v), json_integer_value(v), json_number_value(v)};
}

static int64_t int_arg(const json_t *args, size_t k)
{
	return (int64_t)json_integer_value(json_array_get(args, k));
}

static void num_json(struct buf *b, struct num n)
{
	if (n.is_int)
		buf_json_i64(b, n.i);
	else
		buf_json_double(b, n.d);
}

/* Exact equality, the way Python compares an int with a float: 3 == 3.0, but
 * 2**53 + 1 != 2.0**53. */
static bool num_eq(struct num a, struct num b)
{
	if (a.is_int && b.is_int)
		return a.i == b.i;
	if (!a.is_int && !b.is_int)
		return a.d == b.d;
	struct num r = a.is_int ? b : a, n = a.is_int ? a : b;
	if (!(r.d >= -0x1p63 && r.d < 0x1p63) || r.d != floor(r.d))
		return false;
	return (json_int_t)r.d == n.i;
}

static int real_result(double v, struct buf *res, struct buf *err)
{
	if (!isfinite(v))
		return task_error(err, "overflow");
	buf_json_double(res, v);
	return 0;
}

/* Seconds (>= 0, from an "unumber") as a timespec; past ~31 years is forever. */
static struct timespec secs_ts(double secs)
{
	if (secs > 1e9)
		secs = 1e9;
	time_t whole = (time_t)secs;
	long ns = (long)((secs - (double)whole) * 1e9);
	if (ns > 999999999)
		ns = 999999999;
	return (struct timespec){whole, ns};
}

/* ---- Arithmetic. ---- */

static int square_of(struct num x, struct buf *res, struct buf *err)
{
	if (x.is_int) {
		buf_json_i128(res, (__int128)x.i * x.i); /* |x| < 2^63: cannot overflow */
		return 0;
	}
	return real_result(x.d * x.d, res, err);
}

static int t_square(const json_t *args, struct buf *res, struct buf *err)
{
	return square_of(num_arg(args, 0), res, err);
}

/* base**e by squaring. When squaring b overflows and bits of e remain, the
 * result would be at least b*b in magnitude, so it overflows too. */
static int ipow(int64_t base, uint64_t e, __int128 *out)
{
	__int128 r = 1, b = base;
	while (e) {
		if ((e & 1) && __builtin_mul_overflow(r, b, &r))
			return -1;
		e >>= 1;
		if (e && __builtin_mul_overflow(b, b, &b))
			return -1;
	}
	*out = r;
	return 0;
}

static int t_power(const json_t *args, struct buf *res, struct buf *err)
{
	struct num base = num_arg(args, 0);
	int64_t e = int_arg(args, 1);
	if (!base.is_int)
		return real_result(pow(base.d, (double)e), res, err);
	__int128 r;
	if (ipow(base.i, (uint64_t)e, &r) < 0)
		return task_error(err, "overflow");
	buf_json_i128(res, r);
	return 0;
}

static int u128_result(unsigned __int128 v, bool overflow, struct buf *res, struct buf *err)
{
	if (overflow || v > (unsigned __int128)I128_MAX)
		return task_error(err, "overflow");
	buf_json_i128(res, (__int128)v);
	return 0;
}

/* Σ i² for 0 <= i < n = (n-1)n(2n-1)/6. Two of the factors share the 2 and
 * one holds the 3: divide those out first, so only the true result can
 * overflow. */
static int t_sum_squares(const json_t *args, struct buf *res, struct buf *err)
{
	uint64_t n = (uint64_t)int_arg(args, 0);
	if (n < 2)
		return u128_result(0, false, res, err);
	unsigned __int128 a = n - 1, b = n, c = 2 * (unsigned __int128)n - 1, p;
	if (a % 2 == 0)
		a /= 2;
	else
		b /= 2;
	if (a % 3 == 0)
		a /= 3;
	else if (b % 3 == 0)
		b /= 3;
	else
		c /= 3;
	bool over = __builtin_mul_overflow(a, b, &p) || __builtin_mul_overflow(p, c, &p);
	return u128_result(p, over, res, err);
}

/* Σ i³ for 0 <= i < n = ((n-1)n/2)². */
static int t_sum_cubes(const json_t *args, struct buf *res, struct buf *err)
{
	uint64_t n = (uint64_t)int_arg(args, 0);
	if (n < 2)
		return u128_result(0, false, res, err);
	unsigned __int128 t = (unsigned __int128)(n - 1) * n / 2, p; /* < 2^126 */
	bool over = __builtin_mul_overflow(t, t, &p);
	return u128_result(p, over, res, err);
}

/* ---- Primes. ---- */

static uint64_t mulmod(uint64_t a, uint64_t b, uint64_t m)
{
	return (uint64_t)((unsigned __int128)a * b % m);
}

static uint64_t powmod(uint64_t a, uint64_t e, uint64_t m)
{
	uint64_t r = 1;
	a %= m;
	while (e) {
		if (e & 1)
			r = mulmod(r, a, m);
		a = mulmod(a, a, m);
		e >>= 1;
	}
	return r;
}

/* Miller–Rabin with the first 12 primes as bases: deterministic for every
 * n < 3.3e24, so for all 64-bit n. */
bool task_is_prime_u64(uint64_t n)
{
	static const uint64_t bases[] = {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37};
	if (n < 2)
		return false;
	for (size_t i = 0; i < sizeof bases / sizeof bases[0]; i++)
		if (n % bases[i] == 0)
			return n == bases[i];
	uint64_t d = n - 1;
	int s = 0;
	while (!(d & 1)) {
		d >>= 1;
		s++;
	}
	for (size_t i = 0; i < sizeof bases / sizeof bases[0]; i++) {
		uint64_t x = powmod(bases[i], d, n);
		if (x == 1 || x == n - 1)
			continue;
		int r;
		for (r = 1; r < s; r++) {
			x = mulmod(x, x, n);
			if (x == n - 1)
				break;
		}
		if (r == s)
			return false;
	}
	return true;
}

static int t_is_prime(const json_t *args, struct buf *res, struct buf *err)
{
	(void)err;
	int64_t n = int_arg(args, 0);
	buf_adds(res, n >= 2 && task_is_prime_u64((uint64_t)n) ? "true" : "false");
	return 0;
}

static uint64_t isqrt64(uint64_t n)
{
	uint64_t r = (uint64_t)sqrt((double)n);
	while (r > 0 && r * r > n)
		r--;
	while ((r + 1) * (r + 1) <= n)
		r++;
	return r;
}

struct primes {
	uint32_t *p;
	size_t n, cap;
};

static int primes_push(struct primes *ps, uint32_t p)
{
	if (ps->n == ps->cap) {
		size_t cap = ps->cap ? 2 * ps->cap : 1024;
		uint32_t *np = realloc(ps->p, cap * sizeof *np);
		if (!np)
			return -1;
		ps->p = np;
		ps->cap = cap;
	}
	ps->p[ps->n++] = p;
	return 0;
}

/* Counts the primes among the odd numbers of [lo, hi), for odd lo >= 3 and
 * hi <= COUNT_PRIMES_MAX; with out (hi < 2^32 then), also appends them to it
 * in order. A segmented sieve of Eratosthenes over odd numbers: a segment of
 * SIEVE_SEG bytes, one per odd number, and the odd base primes up to
 * sqrt(hi), found by the same sieve one level down. For each base prime, next
 * holds the index of its next odd multiple past the current segment, so a
 * segment costs one pass per prime, not a division. Returns the count, or -1
 * when out of memory. */
static int64_t sieve_odd(uint64_t lo, uint64_t hi, struct primes *out)
{
	if (lo >= hi)
		return 0;
	struct primes base = {0};
	uint64_t root = isqrt64(hi - 1);
	uint8_t *seg = NULL;
	uint32_t *next = NULL;
	int64_t count = -1;
	if (root >= 3 && sieve_odd(3, root + 1, &base) < 0)
		goto done;
	seg = malloc(SIEVE_SEG);
	next = malloc((base.n ? base.n : 1) * sizeof *next);
	if (!seg || !next)
		goto done;
	count = 0;
	size_t active = 0; /* base primes whose square has been reached */
	for (uint64_t s = lo; s < hi; s += 2 * (uint64_t)SIEVE_SEG) {
		size_t len = (size_t)((hi - s + 1) / 2 < SIEVE_SEG ? (hi - s + 1) / 2 : SIEVE_SEG);
		uint64_t last = s + 2 * (uint64_t)(len - 1);
		memset(seg, 1, len);
		while (active < base.n && (uint64_t)base.p[active] * base.p[active] <= last) {
			uint64_t p = base.p[active], m = p * p;
			if (m < s) { /* only in the first segment: its first odd multiple >= s */
				m = (s + p - 1) / p * p;
				if (!(m & 1))
					m += p;
			}
			next[active++] = (uint32_t)((m - s) / 2);
		}
		for (size_t i = 0; i < active; i++) {
			size_t p = base.p[i], j = next[i];
			for (; j < len; j += p)
				seg[j] = 0;
			next[i] = (uint32_t)(j - len);
		}
		if (out) {
			for (size_t j = 0; j < len; j++)
				if (seg[j] && primes_push(out, (uint32_t)(s + 2 * j)) < 0) {
					count = -1;
					goto done;
				}
		}
		for (size_t j = 0; j < len; j++)
			count += seg[j];
	}
done:
	free(seg);
	free(next);
	free(base.p);
	return count;
}

int64_t task_count_primes(int64_t start, int64_t end)
{
	if (start < 0)
		start = 0;
	if (end <= start)
		return 0;
	int64_t count = start <= 2 && 2 < end;
	uint64_t lo = start < 3 ? 3 : (uint64_t)start | 1;
	int64_t odd = sieve_odd(lo, (uint64_t)end, NULL);
	return odd < 0 ? -1 : count + odd;
}

static int t_count_primes(const json_t *args, struct buf *res, struct buf *err)
{
	int64_t start = int_arg(args, 0), end = int_arg(args, 1);
	if (end > COUNT_PRIMES_MAX)
		return task_error(err, "count_primes: end must be at most 1e15 (%lld), got %lld",
				  COUNT_PRIMES_MAX, (long long)end);
	int64_t n = task_count_primes(start, end);
	if (n < 0)
		return task_error(err, "count_primes: out of memory");
	buf_json_i64(res, n);
	return 0;
}

/* Primes answer null at Miller–Rabin speed; composites by 6k±1 trial
 * division, which finds the smallest factor first. */
static int t_smallest_factor(const json_t *args, struct buf *res, struct buf *err)
{
	(void)err;
	int64_t n = int_arg(args, 0);
	if (n < 4 || task_is_prime_u64((uint64_t)n)) {
		buf_adds(res, "null");
		return 0;
	}
	uint64_t u = (uint64_t)n, f = 0;
	if (u % 2 == 0)
		f = 2;
	else if (u % 3 == 0)
		f = 3;
	for (uint64_t d = 5; !f && d <= u / d; d += 6) {
		if (u % d == 0)
			f = d;
		else if (u % (d + 2) == 0)
			f = d + 2;
	}
	if (f)
		buf_json_i64(res, (int64_t)f);
	else
		buf_adds(res, "null"); /* not reached: n is composite */
	return 0;
}

/* ---- Randomness. ---- */

/* splitmix64 (Steele, Lea, Flood 2014; Vigna's reference constants). */
static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15u);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
	return z ^ (z >> 31);
}

/* The state starts at the seed; each sample draws x then y as the top 53
 * bits of the next output, scaled to [0, 1). */
static int t_monte_carlo_pi(const json_t *args, struct buf *res, struct buf *err)
{
	(void)err;
	uint64_t samples = (uint64_t)int_arg(args, 0), s;
	if (json_array_size(args) > 1)
		s = (uint64_t)int_arg(args, 1);
	else if (getrandom(&s, sizeof s, 0) != (ssize_t)sizeof s)
		s = (uint64_t)mono_ns() ^ ((uint64_t)getpid() << 32);
	uint64_t inside = 0;
	for (uint64_t i = 0; i < samples; i++) {
		double x = (double)(splitmix64(&s) >> 11) * 0x1p-53;
		double y = (double)(splitmix64(&s) >> 11) * 0x1p-53;
		inside += x * x + y * y <= 1.0;
	}
	buf_json_i64(res, (int64_t)inside);
	return 0;
}

/* ---- Time. ---- */

static int t_sleep(const json_t *args, struct buf *res, struct buf *err)
{
	(void)err;
	struct timespec ts = secs_ts(json_number_value(json_array_get(args, 0)));
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
	buf_adds(res, "null");
	return 0;
}

static int t_spin(const json_t *args, struct buf *res, struct buf *err)
{
	(void)err;
	struct timespec ts = secs_ts(json_number_value(json_array_get(args, 0)));
	int64_t end = mono_ns() + (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
	while (mono_ns() < end)
		;
	buf_adds(res, "null");
	return 0;
}

/* ---- Failures, for testing the pool. ---- */

static int t_fail(const json_t *args, struct buf *res, struct buf *err)
{
	(void)res;
	const json_t *m = json_array_get(args, 0);
	buf_add(err, json_string_value(m), json_string_length(m)); /* not a format */
	return -1;
}

static int t_fail_if(const json_t *args, struct buf *res, struct buf *err)
{
	struct num x = num_arg(args, 0);
	if (num_eq(x, num_arg(args, 1))) {
		buf_adds(err, "Cannot process ");
		num_json(err, x);
		return -1;
	}
	return square_of(x, res, err);
}

static int t_crash(const json_t *args, struct buf *res, struct buf *err)
{
	(void)args, (void)res, (void)err;
	abort();
}

static int t_crash_if(const json_t *args, struct buf *res, struct buf *err)
{
	(void)err;
	struct num x = num_arg(args, 0);
	if (num_eq(x, num_arg(args, 1)))
		abort();
	num_json(res, x);
	return 0;
}

/* Maps and touches mb MiB (mmap, not malloc, so that the memory really
 * returns to the system when it is not kept, and so that a capped address
 * space is a clean ENOMEM rather than an abort inside malloc). */
static int t_alloc(const json_t *args, struct buf *res, struct buf *err)
{
	const json_t *keep = json_array_get(args, 1);
	double mb = json_number_value(json_array_get(args, 0));
	if (mb > 1 << 30)
		return task_error(err, "cannot allocate %g MiB: too much", mb);
	size_t len = (size_t)(mb * 1048576.0);
	if (len == 0) {
		buf_adds(res, "null");
		return 0;
	}
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return task_error(err, "cannot allocate %g MiB: %s", mb, strerror(errno));
	long page = sysconf(_SC_PAGESIZE);
	for (size_t off = 0; off < len; off += (size_t)page)
		p[off] = 1;
	if (!(json_is_true(keep) || (json_is_number(keep) && json_number_value(keep) != 0)))
		munmap(p, len);
	buf_adds(res, "null");
	return 0;
}

static int t_getpid(const json_t *args, struct buf *res, struct buf *err)
{
	(void)args, (void)err;
	buf_json_i64(res, getpid());
	return 0;
}

static int t_echo(const json_t *args, struct buf *res, struct buf *err)
{
	(void)err;
	jsonw_value(res, args); /* reals in shortest form, unlike json_dumps */
	return 0;
}

/* ---- The table. ---- */

static const struct task tasks[] = {
	{.name = "square", .doc = "x*x", .params = {{"x", TASK_NUMBER}}, .required = 1,
	 .fn = t_square},
	{.name = "power", .doc = "base**exp (exact for an integer base)",
	 .params = {{"base", TASK_NUMBER}, {"exp", TASK_UINT}}, .required = 2, .fn = t_power},
	{.name = "sum_squares", .doc = "sum of i*i for 0 <= i < n", .params = {{"n", TASK_UINT}},
	 .required = 1, .fn = t_sum_squares},
	{.name = "sum_cubes", .doc = "sum of i**3 for 0 <= i < n", .params = {{"n", TASK_UINT}},
	 .required = 1, .fn = t_sum_cubes},
	{.name = "is_prime", .doc = "whether n is prime", .params = {{"n", TASK_INT}}, .required = 1,
	 .fn = t_is_prime},
	{.name = "count_primes", .doc = "the number of primes p with start <= p < end (end <= 1e15)",
	 .params = {{"start", TASK_INT}, {"end", TASK_INT}}, .required = 2, .fn = t_count_primes},
	{.name = "smallest_factor", .doc = "the smallest d with 2 <= d <= sqrt(n) dividing n, or null",
	 .params = {{"n", TASK_INT}}, .required = 1, .fn = t_smallest_factor},
	{.name = "monte_carlo_pi",
	 .doc = "how many of samples uniform points in the unit square fall in the quarter circle "
		"(splitmix64 from seed, or a random seed; x then y, 53 bits each)",
	 .params = {{"samples", TASK_UINT}, {"seed", TASK_INT}}, .required = 1,
	 .fn = t_monte_carlo_pi},
	{.name = "sleep", .doc = "null after sleeping for seconds", .params = {{"seconds", TASK_UNUMBER}},
	 .required = 1, .fn = t_sleep},
	{.name = "spin", .doc = "null after burning CPU for seconds",
	 .params = {{"seconds", TASK_UNUMBER}}, .required = 1, .fn = t_spin},
	{.name = "fail", .doc = "fails with message", .params = {{"message", TASK_STRING}},
	 .required = 1, .fn = t_fail},
	{.name = "fail_if", .doc = "x*x; fails with \"Cannot process x\" when x == bad",
	 .params = {{"x", TASK_NUMBER}, {"bad", TASK_NUMBER}}, .required = 2, .fn = t_fail_if},
	{.name = "crash", .doc = "aborts the worker process", .fn = t_crash},
	{.name = "crash_if", .doc = "x; aborts the worker process when x == bad",
	 .params = {{"x", TASK_NUMBER}, {"bad", TASK_NUMBER}}, .required = 2, .fn = t_crash_if},
	{.name = "getpid", .doc = "the worker's process id", .fn = t_getpid},
	{.name = "echo", .doc = "its arguments, as an array", .params = {{"args", TASK_ANY}},
	 .variadic = true, .fn = t_echo},
	{.name = "alloc",
	 .doc = "null after allocating and touching mb MiB (kept until the worker exits if keep is "
		"true)",
	 .params = {{"mb", TASK_UNUMBER}, {"keep", TASK_ANY}}, .required = 1, .fn = t_alloc},
};

#define NBUILTIN (sizeof tasks / sizeof tasks[0])

/* The tasks added at start-up (owned by their modules). */
static const struct task **added;
static size_t nadded;

size_t task_count(void) { return NBUILTIN + nadded; }

const struct task *task_at(size_t i)
{
	if (i < NBUILTIN)
		return &tasks[i];
	return i - NBUILTIN < nadded ? added[i - NBUILTIN] : NULL;
}

const struct task *task_find(const char *name)
{
	for (size_t i = 0; i < task_count(); i++)
		if (!strcmp(task_at(i)->name, name))
			return task_at(i);
	return NULL;
}

bool task_name_ok(const char *name)
{
	size_t n = 0;
	for (const char *p = name; *p; p++, n++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		      *p == '_' || *p == '.' || *p == '-'))
			return false;
	return n > 0 && n < TASK_NAME_LEN;
}

int task_add(const struct task *t, struct buf *err)
{
	const char *origin = t->origin ? t->origin : "?";
	if (!task_name_ok(t->name))
		return task_error(err, "%s: task name \"%s\" must be 1 to %d letters, digits, _ . or -",
				  origin, t->name, TASK_NAME_LEN - 1);
	const struct task *old = task_find(t->name);
	if (old && !old->origin)
		return task_error(err, "task \"%s\" of %s clashes with the built-in task \"%s\"",
				  t->name, origin, old->name);
	if (old)
		return task_error(err, "task \"%s\" of %s clashes with task \"%s\" of %s", t->name,
				  origin, old->name, old->origin);
	const struct task **na = realloc(added, (nadded + 1) * sizeof *na);
	if (!na)
		abort();
	added = na;
	added[nadded++] = t;
	return 0;
}

int task_nparams(const struct task *t)
{
	int n = 0;
	while (n < TASK_MAX_PARAMS && t->params[n].name)
		n++;
	return n;
}

static const char *const type_names[] = {"int", "uint", "number", "unumber", "string", "any"};
static const char *const type_words[] = {"an integer", "an integer >= 0", "a number",
					 "a number >= 0", "a string", "any value"};

const char *task_type_name(enum task_type type) { return type_names[type]; }

void task_describe(struct buf *out)
{
	buf_adds(out, "{\"tasks\":[");
	for (size_t i = 0; i < task_count(); i++) {
		const struct task *t = task_at(i);
		buf_adds(out, i ? ",{\"name\":" : "{\"name\":");
		buf_json_cstr(out, t->name);
		buf_adds(out, ",\"doc\":");
		buf_json_cstr(out, t->doc);
		buf_adds(out, ",\"params\":[");
		for (int k = 0; k < task_nparams(t); k++) {
			buf_adds(out, k ? ",{\"name\":" : "{\"name\":");
			buf_json_cstr(out, t->params[k].name);
			buf_adds(out, ",\"type\":");
			buf_json_cstr(out, task_type_name(t->params[k].type));
			buf_addc(out, '}');
		}
		buf_printf(out, "],\"required\":%d,\"variadic\":%s", t->required,
			   t->variadic ? "true" : "false");
		if (t->timeout > 0) {
			buf_adds(out, ",\"timeout\":");
			buf_json_double(out, t->timeout);
		}
		if (t->origin) {
			buf_adds(out, ",\"origin\":");
			buf_json_cstr(out, t->origin);
		}
		buf_addc(out, '}');
	}
	buf_adds(out, "]}");
}

static const char *json_kind(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return "an object";
	case JSON_ARRAY: return "an array";
	case JSON_STRING: return "a string";
	case JSON_INTEGER: return "an integer";
	case JSON_REAL: return "a number";
	case JSON_TRUE:
	case JSON_FALSE: return "a boolean";
	default: return "null";
	}
}

static bool type_ok(enum task_type type, const json_t *v)
{
	switch (type) {
	case TASK_INT: return json_is_integer(v);
	case TASK_UINT: return json_is_integer(v) && json_integer_value(v) >= 0;
	case TASK_NUMBER: return json_is_number(v);
	case TASK_UNUMBER: return json_is_number(v) && json_number_value(v) >= 0;
	case TASK_STRING: return json_is_string(v);
	case TASK_ANY: return true;
	}
	return false;
}

/* The same rules, and nearly the same words, as the server's catalog_check. */
static int check_args(const struct task *t, const json_t *args, struct buf *err)
{
	if (!json_is_array(args))
		return task_error(err, "%s: arguments must be an array, got %s", t->name,
				  json_kind(args));
	int np = task_nparams(t), n = (int)json_array_size(args);
	if (n < t->required || (!t->variadic && n > np)) {
		if (t->variadic)
			return task_error(err, "%s takes at least %d argument%s, got %d", t->name,
					  t->required, t->required == 1 ? "" : "s", n);
		if (np == t->required)
			return task_error(err, "%s takes %d argument%s, got %d", t->name, np,
					  np == 1 ? "" : "s", n);
		return task_error(err, "%s takes %d to %d arguments, got %d", t->name, t->required,
				  np, n);
	}
	for (int i = 0; i < n; i++) {
		const struct task_param *p = &t->params[i < np ? i : np - 1];
		const json_t *v = json_array_get(args, (size_t)i);
		if (type_ok(p->type, v))
			continue;
		const char *got = p->type == TASK_UINT && json_is_integer(v)    ? "a negative integer"
				  : p->type == TASK_UNUMBER && json_is_number(v) ? "a negative number"
										 : json_kind(v);
		return task_error(err, "%s: argument %d (%s) must be %s, got %s", t->name, i, p->name,
				  type_words[p->type], got);
	}
	return 0;
}

/* The arguments as jansson values. Plain integers (most items) are read by
 * intargs_parse: jansson's parser was half of a worker's time per square. */
static json_t *load_args(const char *args, size_t len, json_error_t *jerr)
{
	int64_t v[INTARGS_MAX];
	int n = intargs_parse(args, len, v);
	if (n < 0)
		return json_loadb(args, len, JSON_ALLOW_NUL, jerr);
	json_t *a = json_array();
	for (int i = 0; a && i < n; i++)
		if (json_array_append_new(a, json_integer((json_int_t)v[i])) < 0) {
			json_decref(a);
			a = NULL;
		}
	if (!a)
		snprintf(jerr->text, sizeof jerr->text, "out of memory");
	return a;
}

int task_run(const struct task *t, const char *args, size_t len, struct buf *res, struct buf *err)
{
	json_error_t jerr;
	json_t *a = load_args(args, len, &jerr);
	if (!a)
		return task_error(err, "%s: arguments are not valid JSON: %s", t->name, jerr.text);
	size_t res_len = res->len, err_len = err->len;
	int rc = check_args(t, a, err);
	if (rc == 0)
		rc = (t->fn ? t->fn(a, res, err) : t->call(t, a, res, err)) < 0 ? -1 : 0;
	if (rc == 0 && res->len - res_len > TASK_RESULT_MAX)
		rc = task_error(err, "%s: its result is %zu bytes of JSON, more than the %u (%u MiB) "
				"one result may be", t->name, res->len - res_len, TASK_RESULT_MAX,
				TASK_RESULT_MAX >> 20);
	json_decref(a);
	if (rc < 0) {
		/* No half-written result; and an error always says something. */
		res->len = res_len;
		if (res->data)
			res->data[res_len] = '\0';
		if (err->len == err_len)
			buf_adds(err, "task failed");
	}
	return rc;
}
