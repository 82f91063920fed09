/* test_tasks.c - the built-in tasks, called directly (worker/tasks.c). */
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "buf.h"
#include "harness.h"
#include "tasks.h"

/* Runs task on the JSON text args: the result's JSON text, or "error: <msg>". */
static const char *run(const char *task, const char *args)
{
	static struct buf res, err, out;
	const struct task *t = task_find(task);
	if (!t)
		FAILF("no task %s", task);
	buf_reset(&res);
	buf_reset(&err);
	buf_reset(&out);
	if (task_run(t, args, strlen(args), &res, &err) == 0) {
		buf_add(&out, res.data ? res.data : "", res.len);
		if (err.len)
			FAILF("%s %s succeeded but left an error: %s", task, args, err.data);
	} else {
		buf_adds(&out, "error: ");
		buf_add(&out, err.data ? err.data : "", err.len);
		if (res.len)
			FAILF("%s %s failed but left a result: %s", task, args, res.data);
	}
	return out.data;
}

/* Runs task in a child; returns its wait status. */
static int run_in_child(const char *task, const char *args)
{
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		signal(SIGABRT, SIG_DFL);
		run(task, args);
		_exit(0);
	}
	int status;
	CHECK_INT(waitpid(pid, &status, 0), pid);
	return status;
}

TEST(task_table_has_the_17_tasks_findable_by_name)
{
	static const char *const names[] = {
		"square",  "power",	  "sum_squares",	"sum_cubes", "is_prime", "count_primes",
		"smallest_factor", "monte_carlo_pi", "sleep", "spin", "fail", "fail_if", "crash",
		"crash_if", "getpid",	  "echo", "alloc"};
	CHECK_INT(task_count(), 17);
	for (size_t i = 0; i < 17; i++) {
		const struct task *t = task_find(names[i]);
		CHECK(t != NULL);
		CHECK_STR(t->name, names[i]);
		CHECK(t->required <= task_nparams(t));
		CHECK(!t->variadic || task_nparams(t) > 0);
	}
	CHECK(task_find("nosuch") == NULL);
	CHECK(task_at(17) == NULL);
}

TEST(task_describe_is_the_catalogue_json)
{
	struct buf b = {0};
	task_describe(&b);
	CHECK_CONTAINS(b.data, "{\"tasks\":[{\"name\":\"square\",\"doc\":\"x*x\",\"params\":[{\"name\":"
			       "\"x\",\"type\":\"number\"}],\"required\":1,\"variadic\":false},");
	json_t *root = json_loadb(b.data, b.len, 0, NULL);
	CHECK(root != NULL);
	json_t *list = json_object_get(root, "tasks");
	CHECK_INT(json_array_size(list), task_count());
	json_t *echo = json_array_get(list, 15);
	CHECK_STR(json_string_value(json_object_get(echo, "name")), "echo");
	CHECK(json_is_true(json_object_get(echo, "variadic")));
	CHECK_INT(json_integer_value(json_object_get(echo, "required")), 0);
	json_decref(root);
	buf_free(&b);
}

TEST(task_square_of_an_integer_is_exact)
{
	CHECK_STR(run("square", "[3]"), "9");
	CHECK_STR(run("square", "[-4]"), "16");
	CHECK_STR(run("square", "[0]"), "0");
	CHECK_STR(run("square", "[-4000000000]"), "16000000000000000000");
	CHECK_STR(run("square", "[9223372036854775807]"), "85070591730234615847396907784232501249");
	CHECK_STR(run("square", "[-9223372036854775808]"), "85070591730234615865843651857942052864");
}

/* Plain integer arguments skip jansson's parser (common/intargs.h); what
 * that path refuses goes to jansson, and the answers are the same either
 * way. The results cross the 64-bit line, where buf_json_i128 changes
 * method. */
TEST(task_integer_arguments_read_without_jansson_give_the_same_answers)
{
	CHECK_STR(run("square", "[ 3 ]"), "9");
	CHECK_STR(run("square", "\t[3]\t"), "9");
	CHECK_STR(run("square", "[-0]"), "0");                 /* jansson's */
	CHECK_STR(run("square", "[3.0]"), "9.0");              /* a real: jansson's */
	CHECK_STR(run("square", "[1e2]"), "10000.0");
	CHECK_STR(run("square", "[999999999999999999]"), "999999999999999998000000000000000001");
	CHECK_STR(run("square", "[3037000499]"), "9223372030926249001");   /* < 2^63 */
	CHECK_STR(run("square", "[3037000500]"), "9223372037000250000");   /* > 2^63 - 1 */
	CHECK_STR(run("square", "[-3037000500]"), "9223372037000250000");
	CHECK_STR(run("power", "[2, 62]"), "4611686018427387904");
	CHECK_STR(run("power", "[2, 63]"), "9223372036854775808");
	CHECK_STR(run("power", "[-2, 63]"), "-9223372036854775808"); /* INT64_MIN */
	CHECK_STR(run("power", "[-3, 41]"), "-36472996377170786403");
	CHECK_STR(run("echo", "[2,-7,  0]"), "[2,-7,0]");
	CHECK_CONTAINS(run("square", "[01]"), "not valid JSON");  /* jansson refuses it */
	CHECK_CONTAINS(run("square", "[1,]"), "not valid JSON");
	CHECK_CONTAINS(run("square", "[1, 2]"), "takes 1 argument, got 2");
	CHECK_CONTAINS(run("square", "[]"), "takes 1 argument, got 0");
	CHECK_CONTAINS(run("square", "[\"7\"]"), "must be");
}

TEST(task_square_of_a_real_is_a_double)
{
	CHECK_STR(run("square", "[1.5]"), "2.25");
	CHECK_STR(run("square", "[3.0]"), "9.0");
	CHECK_STR(run("square", "[0.1]"), "0.010000000000000002");
	CHECK_STR(run("square", "[1e200]"), "error: overflow");
}

TEST(task_power_is_exact_up_to_128_bits)
{
	CHECK_STR(run("power", "[2, 10]"), "1024");
	CHECK_STR(run("power", "[2, 126]"), "85070591730234615865843651857942052864");
	CHECK_STR(run("power", "[-2, 127]"), "-170141183460469231731687303715884105728");
	/* 3**80 is 126.8 bits: it fits; 3**81 does not. */
	CHECK_STR(run("power", "[3, 80]"), "147808829414345923316083210206383297601");
	CHECK_STR(run("power", "[10, 38]"), "100000000000000000000000000000000000000");
	CHECK_STR(run("power", "[7, 0]"), "1");
	CHECK_STR(run("power", "[0, 0]"), "1");
	CHECK_STR(run("power", "[0, 5]"), "0");
	CHECK_STR(run("power", "[-1, 9223372036854775807]"), "-1");
	CHECK_STR(run("power", "[1, 9223372036854775807]"), "1");
}

TEST(task_power_past_128_bits_is_overflow)
{
	CHECK_STR(run("power", "[2, 127]"), "error: overflow");
	CHECK_STR(run("power", "[-2, 128]"), "error: overflow");
	CHECK_STR(run("power", "[3, 81]"), "error: overflow");
	CHECK_STR(run("power", "[10, 39]"), "error: overflow");
	CHECK_STR(run("power", "[2, 9223372036854775807]"), "error: overflow");
	CHECK_STR(run("power", "[-9223372036854775808, 3]"), "error: overflow");
}

TEST(task_power_of_a_real_base_is_pow)
{
	CHECK_STR(run("power", "[2.5, 2]"), "6.25");
	CHECK_STR(run("power", "[0.5, 3]"), "0.125");
	CHECK_STR(run("power", "[2.0, 0]"), "1.0");
	CHECK_STR(run("power", "[10.0, 400]"), "error: overflow");
}

TEST(task_sum_squares_is_exact)
{
	CHECK_STR(run("sum_squares", "[0]"), "0");
	CHECK_STR(run("sum_squares", "[1]"), "0");
	CHECK_STR(run("sum_squares", "[2]"), "1");
	CHECK_STR(run("sum_squares", "[10]"), "285");
	CHECK_STR(run("sum_squares", "[10000000]"), "333333283333335000000");
	CHECK_STR(run("sum_squares", "[40000000]"), "21333332533333340000000");
	/* The largest n whose sum fits in signed 128 bits, and the next one. */
	CHECK_STR(run("sum_squares", "[7991780883561]"), "170141183460461313492259401898909956060");
	CHECK_STR(run("sum_squares", "[7991780883562]"), "error: overflow");
	CHECK_STR(run("sum_squares", "[9223372036854775807]"), "error: overflow");
}

TEST(task_sum_cubes_is_exact_or_overflow)
{
	CHECK_STR(run("sum_cubes", "[0]"), "0");
	CHECK_STR(run("sum_cubes", "[1]"), "0");
	CHECK_STR(run("sum_cubes", "[3]"), "9");
	CHECK_STR(run("sum_cubes", "[1000000]"), "249999500000250000000000");
	CHECK_STR(run("sum_cubes", "[5107605667]"), "170141183379562927243945325720953161321");
	CHECK_STR(run("sum_cubes", "[5107605668]"), "error: overflow");
	CHECK_STR(run("sum_cubes", "[9223372036854775807]"), "error: overflow");
}

TEST(task_is_prime_is_exact_for_64_bits)
{
	CHECK_STR(run("is_prime", "[2]"), "true");
	CHECK_STR(run("is_prime", "[3]"), "true");
	CHECK_STR(run("is_prime", "[4]"), "false");
	CHECK_STR(run("is_prime", "[1]"), "false");
	CHECK_STR(run("is_prime", "[0]"), "false");
	CHECK_STR(run("is_prime", "[-7]"), "false");
	CHECK_STR(run("is_prime", "[104729]"), "true");
	CHECK_STR(run("is_prime", "[561]"), "false");		   /* Carmichael */
	CHECK_STR(run("is_prime", "[3215031751]"), "false");	   /* strong pseudoprime to 2,3,5,7 */
	CHECK_STR(run("is_prime", "[3825123056546413051]"), "false"); /* ... to bases 2 through 23 */
	CHECK_STR(run("is_prime", "[9223372036854775783]"), "true");  /* largest below 2^63 */
	CHECK_STR(run("is_prime", "[9223372036854775807]"), "false");
	CHECK(task_is_prime_u64(18446744073709551557u)); /* largest below 2^64 */
	/* Against trial division for every n below 20000. */
	int count = 0;
	for (uint64_t n = 0; n < 20000; n++) {
		bool p = n >= 2;
		for (uint64_t d = 2; p && d * d <= n; d++)
			p = n % d != 0;
		CHECK_INT(task_is_prime_u64(n), p);
		count += p;
	}
	CHECK_INT(count, 2262);
}

TEST(task_count_primes_below_a_million_in_four_ranges)
{
	CHECK_STR(run("count_primes", "[0, 1000000]"), "78498");
	int64_t total = 0;
	for (int i = 0; i < 4; i++) {
		char args[64];
		snprintf(args, sizeof args, "[%d, %d]", i * 250000, (i + 1) * 250000);
		total += atoll(run("count_primes", args));
	}
	CHECK_INT(total, 78498);
	CHECK_STR(run("count_primes", "[0, 250000]"), "22044");
}

TEST(task_count_primes_edges)
{
	CHECK_STR(run("count_primes", "[0, 10]"), "4");
	CHECK_STR(run("count_primes", "[-100, 10]"), "4");
	CHECK_STR(run("count_primes", "[0, 2]"), "0");
	CHECK_STR(run("count_primes", "[2, 3]"), "1");
	CHECK_STR(run("count_primes", "[3, 4]"), "1");
	CHECK_STR(run("count_primes", "[7, 7]"), "0");
	CHECK_STR(run("count_primes", "[10, 5]"), "0");
	CHECK_STR(run("count_primes", "[-10, -5]"), "0");
	CHECK_STR(run("count_primes", "[8, 11]"), "0");
	CHECK_STR(run("count_primes", "[8, 12]"), "1");
	CHECK_STR(run("count_primes", "[1000000000000000, 1000000000000000]"), "0");
	CHECK_CONTAINS(run("count_primes", "[0, 1000000000000001]"), "error: count_primes: end must be at most 1e15");
}

/* Windows checked against Miller–Rabin: across sieve segment edges (every
 * 2^18 numbers), at an odd and an even start, and just below the 1e15 limit. */
TEST(task_count_primes_matches_miller_rabin)
{
	static const int64_t windows[][2] = {
		{0, 600000},	      {262100, 262200},	    {262143, 524289},
		{999999000000, 1000000300000},	{999999999000001, 999999999100000},
		{999999999800000, 1000000000000000},
	};
	for (size_t i = 0; i < sizeof windows / sizeof windows[0]; i++) {
		int64_t want = 0;
		for (int64_t n = windows[i][0]; n < windows[i][1]; n++)
			want += task_is_prime_u64((uint64_t)n);
		int64_t got = task_count_primes(windows[i][0], windows[i][1]);
		if (got != want)
			FAILF("count_primes(%lld, %lld) = %lld, Miller-Rabin counts %lld",
			      (long long)windows[i][0], (long long)windows[i][1], (long long)got,
			      (long long)want);
	}
}

TEST(task_count_primes_to_20_million_is_fast)
{
	int64_t t0 = harness_now_ms();
	CHECK_STR(run("count_primes", "[0, 20000000]"), "1270607");
	int64_t ms = harness_now_ms() - t0;
	if (ms >= 1000)
		FAILF("count_primes(0, 20000000) took %lld ms", (long long)ms);
}

TEST(task_smallest_factor_of_primes_is_null)
{
	static const char *const primes[] = {"104729",	  "1000003",   "1299827",   "49979687",
					     "67867979",  "104395303", "982451653", "999983",
					     "15485863",  "9223372036854775783"};
	for (size_t i = 0; i < sizeof primes / sizeof primes[0]; i++) {
		char args[48];
		snprintf(args, sizeof args, "[%s]", primes[i]);
		CHECK_STR(run("smallest_factor", args), "null");
	}
}

TEST(task_smallest_factor_of_composites)
{
	CHECK_STR(run("smallest_factor", "[62710561]"), "7919"); /* 7919² */
	CHECK_STR(run("smallest_factor", "[4]"), "2");
	CHECK_STR(run("smallest_factor", "[9]"), "3");
	CHECK_STR(run("smallest_factor", "[25]"), "5");
	CHECK_STR(run("smallest_factor", "[35]"), "5");
	CHECK_STR(run("smallest_factor", "[49]"), "7");
	CHECK_STR(run("smallest_factor", "[143]"), "11");
	CHECK_STR(run("smallest_factor", "[999985999949]"), "999983"); /* 999983 * 1000003 */
	CHECK_STR(run("smallest_factor", "[9223372036854775807]"), "7");
	CHECK_STR(run("smallest_factor", "[3]"), "null");
	CHECK_STR(run("smallest_factor", "[1]"), "null");
	CHECK_STR(run("smallest_factor", "[-10]"), "null");
}

/* The documented generator (splitmix64, x then y, 53 bits): these counts
 * were computed independently from that description. */
TEST(task_monte_carlo_pi_with_a_seed_is_deterministic)
{
	CHECK_STR(run("monte_carlo_pi", "[1000000, 42]"), "785189");
	CHECK_STR(run("monte_carlo_pi", "[1000000, 42]"), "785189");
	CHECK_STR(run("monte_carlo_pi", "[1000, 7]"), "801");
	CHECK_STR(run("monte_carlo_pi", "[1000, -1]"), "789");
	CHECK_STR(run("monte_carlo_pi", "[0, 42]"), "0");
}

TEST(task_monte_carlo_pi_without_a_seed_is_near_pi)
{
	/* σ = sqrt(n p (1-p)) ≈ 411 for n = 1e6: allow 7σ. */
	long long n = atoll(run("monte_carlo_pi", "[1000000]"));
	double want = M_PI / 4 * 1e6;
	if (fabs((double)n - want) > 3000)
		FAILF("monte_carlo_pi(1000000) = %lld, expected about %.0f", n, want);
}

TEST(task_sleep_sleeps_then_returns_null)
{
	int64_t t0 = harness_now_ms();
	CHECK_STR(run("sleep", "[0.05]"), "null");
	CHECK(harness_now_ms() - t0 >= 50);
	CHECK_STR(run("sleep", "[0]"), "null");
}

TEST(task_spin_burns_cpu_then_returns_null)
{
	/* Spinning is measured in wall time, so on a loaded machine the CPU
	 * share varies; a sleep would use next to none. */
	struct rusage r0, r1;
	int64_t t0 = harness_now_ms();
	getrusage(RUSAGE_SELF, &r0);
	CHECK_STR(run("spin", "[0.1]"), "null");
	CHECK(harness_now_ms() - t0 >= 100);
	getrusage(RUSAGE_SELF, &r1);
	double cpu = (double)(r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) +
		     (double)(r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) +
		     (double)(r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) / 1e6 +
		     (double)(r1.ru_stime.tv_usec - r0.ru_stime.tv_usec) / 1e6;
	if (cpu < 0.01)
		FAILF("spin 0.1 used %.3f s of CPU", cpu);
}

TEST(task_fail_fails_with_its_message)
{
	CHECK_STR(run("fail", "[\"boom\"]"), "error: boom");
	CHECK_STR(run("fail", "[\"100% \\\"sure\\\" %s\"]"), "error: 100% \"sure\" %s");
	CHECK_STR(run("fail", "[\"\"]"), "error: task failed");
}

TEST(task_fail_if_fails_only_on_bad)
{
	CHECK_STR(run("fail_if", "[3, 3]"), "error: Cannot process 3");
	CHECK_STR(run("fail_if", "[2, 3]"), "4");
	CHECK_STR(run("fail_if", "[1.5, 3]"), "2.25");
	CHECK_STR(run("fail_if", "[2.5, 2.5]"), "error: Cannot process 2.5");
	CHECK_STR(run("fail_if", "[3.0, 3]"), "error: Cannot process 3.0");
	CHECK_STR(run("fail_if", "[-7, -7.0]"), "error: Cannot process -7");
	CHECK_STR(run("fail_if", "[9007199254740993, 9007199254740992.0]"),
		  "81129638414606699710187514626049"); /* 2^53+1 is not 2.0^53 */
}

TEST(task_crash_aborts_the_process)
{
	int status = run_in_child("crash", "[]");
	CHECK(WIFSIGNALED(status));
	CHECK_INT(WTERMSIG(status), SIGABRT);
}

TEST(task_crash_if_aborts_only_on_bad)
{
	CHECK_STR(run("crash_if", "[1, 2]"), "1");
	CHECK_STR(run("crash_if", "[2.5, 2]"), "2.5");
	int status = run_in_child("crash_if", "[2, 2]");
	CHECK(WIFSIGNALED(status));
	CHECK_INT(WTERMSIG(status), SIGABRT);
}

TEST(task_getpid_is_the_process_id)
{
	char want[24];
	snprintf(want, sizeof want, "%d", (int)getpid());
	CHECK_STR(run("getpid", "[]"), want);
}

TEST(task_echo_returns_its_arguments)
{
	CHECK_STR(run("echo", "[1, -2, 2.5, 0.1, \"a\\\"b\\n\", null, true, false, {\"k\": [1, {}]}, []]"),
		  "[1,-2,2.5,0.1,\"a\\\"b\\n\",null,true,false,{\"k\":[1,{}]},[]]");
	CHECK_STR(run("echo", "[]"), "[]");
	CHECK_STR(run("echo", "[\"\\u0000x\"]"), "[\"\\u0000x\"]");
}

TEST(task_bad_arguments_are_errors_not_crashes)
{
	CHECK_STR(run("square", "[\"a\"]"),
		  "error: square: argument 0 (x) must be a number, got a string");
	CHECK_STR(run("square", "[1, 2]"), "error: square takes 1 argument, got 2");
	CHECK_STR(run("square", "[]"), "error: square takes 1 argument, got 0");
	CHECK_STR(run("power", "[2, -1]"),
		  "error: power: argument 1 (exp) must be an integer >= 0, got a negative integer");
	CHECK_STR(run("power", "[2, 1.5]"),
		  "error: power: argument 1 (exp) must be an integer >= 0, got a number");
	CHECK_STR(run("sleep", "[-1]"),
		  "error: sleep: argument 0 (seconds) must be a number >= 0, got a negative number");
	CHECK_STR(run("monte_carlo_pi", "[]"), "error: monte_carlo_pi takes 1 to 2 arguments, got 0");
	CHECK_STR(run("getpid", "[1]"), "error: getpid takes 0 arguments, got 1");
	CHECK_STR(run("fail", "[null]"),
		  "error: fail: argument 0 (message) must be a string, got null");
	CHECK_STR(run("square", "{\"x\": 1}"), "error: square: arguments must be an array, got an object");
	CHECK_CONTAINS(run("square", "[1"), "error: square: arguments are not valid JSON");
	CHECK_CONTAINS(run("square", ""), "error: square: arguments are not valid JSON");
	CHECK_CONTAINS(run("square", "[99999999999999999999]"), "error: square: arguments are not valid JSON");
}
