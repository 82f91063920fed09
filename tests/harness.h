/* harness.h - the test runner: tests register themselves with TEST(name); each
 * runs in its own forked process, in a fresh temporary directory (the cwd),
 * under a deadline. A failed check prints where and why and ends that test.
 *
 *   build/forkpool-tests                 run every test
 *   build/forkpool-tests store_ api_post  run the tests whose names contain
 *                                         any of the words
 * The last line is "N passed, N failed"; the exit status is 1 on any failure. */
#ifndef FORKPOOL_HARNESS_H
#define FORKPOOL_HARNESS_H

#include <stdint.h>
#include <string.h>

typedef void (*test_fn)(void);
void harness_register(const char *name, test_fn fn, const char *file, int timeout_s);
__attribute__((noreturn, format(printf, 3, 4))) void harness_fail(const char *file, int line,
								  const char *fmt, ...);
/* The directory holding the built programs (FORKPOOL_BIN_DIR, default "build"),
 * as an absolute path. */
const char *harness_bin_dir(void);
/* Milliseconds on the monotonic clock. */
int64_t harness_now_ms(void);

/* TEST_T gives a test its own deadline in seconds (default 60). */
#define TEST_T(name, secs)                                                                       \
	static void name(void);                                                                  \
	__attribute__((constructor)) static void reg_##name(void)                                \
	{                                                                                        \
		harness_register(#name, name, __FILE__, secs);                                   \
	}                                                                                        \
	static void name(void)
#define TEST(name) TEST_T(name, 60)

#define FAILF(...) harness_fail(__FILE__, __LINE__, __VA_ARGS__)
#define CHECK(c)                                                                                 \
	do {                                                                                     \
		if (!(c))                                                                        \
			FAILF("check failed: %s", #c);                                           \
	} while (0)
#define CHECK_INT(a, b)                                                                          \
	do {                                                                                     \
		long long a_ = (long long)(a), b_ = (long long)(b);                              \
		if (a_ != b_)                                                                    \
			FAILF("%s == %lld, expected %s == %lld", #a, a_, #b, b_);                \
	} while (0)
#define CHECK_STR(a, b)                                                                          \
	do {                                                                                     \
		const char *a_ = (a), *b_ = (b);                                                 \
		if (!a_ || !b_ || strcmp(a_, b_) != 0)                                           \
			FAILF("%s is \"%s\", expected \"%s\"", #a, a_ ? a_ : "(null)",          \
			      b_ ? b_ : "(null)");                                               \
	} while (0)
#define CHECK_CONTAINS(hay, needle)                                                              \
	do {                                                                                     \
		const char *h_ = (hay), *n_ = (needle);                                          \
		if (!h_ || !strstr(h_, n_))                                                      \
			FAILF("%s does not contain \"%s\": %.2000s", #hay, n_, h_ ? h_ : "(null)"); \
	} while (0)

#endif
