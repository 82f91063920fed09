/* test_catalog.c - the server's task catalogue (server/catalog.c): loaded from
 * the real worker's --describe, and the checks it makes of each item's
 * arguments before a batch is accepted. */
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "buf.h"
#include "catalog.h"
#include "harness.h"
#include "tasks.h"

static void load(void)
{
	char path[PATH_MAX];
	snprintf(path, sizeof path, "%s/forkpool-worker", harness_bin_dir());
	CHECK_INT(catalog_load(path), 0);
}

static const struct task_info *find(const char *name)
{
	const struct task_info *t = catalog_find(name);
	if (!t)
		FAILF("no task %s in the catalogue", name);
	return t;
}

/* catalog_check of task on the JSON text args (parsed as the API parses a
 * body): "ok", or the error message. */
static const char *check(const char *task, const char *args)
{
	static char err[512];
	json_error_t jerr;
	json_t *a = json_loads(args, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
	if (!a)
		FAILF("test input %s is not JSON: %s", args, jerr.text);
	snprintf(err, sizeof err, "(untouched)");
	int rc = catalog_check(find(task), a, err, sizeof err);
	json_decref(a);
	if (rc == 0)
		snprintf(err, sizeof err, "ok");
	else if (rc != -1)
		FAILF("catalog_check returned %d", rc);
	return err;
}

/* A shell script in the test's directory, standing in for the worker. */
static const char *script(const char *body)
{
	static int n;
	static char path[64];
	snprintf(path, sizeof path, "./fake-worker-%d", n++);
	FILE *f = fopen(path, "w");
	CHECK(f != NULL);
	fprintf(f, "#!/bin/sh\n%s\n", body);
	CHECK_INT(fclose(f), 0);
	CHECK_INT(chmod(path, 0755), 0);
	return path;
}

/* A stand-in worker whose --describe prints text. */
static const char *fake_worker(const char *text)
{
	struct buf b = {0};
	buf_printf(&b, "cat <<'EOF'\n%s\nEOF", text);
	const char *path = script(b.data);
	buf_free(&b);
	return path;
}

/* ---- Loading. ---- */

TEST(catalog_load_has_every_task_of_the_worker_table)
{
	load();
	CHECK_INT(catalog_count(), (long long)task_count());
	for (size_t i = 0; i < task_count(); i++) {
		const struct task *w = task_at(i);
		const struct task_info *c = catalog_at((int)i);
		CHECK(c != NULL);
		CHECK_STR(c->name, w->name);
		CHECK_STR(c->doc, w->doc);
		CHECK(catalog_find(w->name) == c);
		CHECK_INT(c->nparams, task_nparams(w));
		CHECK_INT(c->required, w->required);
		CHECK_INT(c->variadic, w->variadic);
		for (int k = 0; k < c->nparams; k++) {
			CHECK_STR(c->params[k].name, w->params[k].name);
			CHECK_STR(ptype_names[c->params[k].type], task_type_name(w->params[k].type));
		}
	}
	CHECK(catalog_at(-1) == NULL);
	CHECK(catalog_at(catalog_count()) == NULL);
	catalog_free();
	CHECK_INT(catalog_count(), 0);
	CHECK(catalog_find("square") == NULL);
}

TEST(catalog_find_of_an_unknown_task_is_null)
{
	load();
	CHECK(catalog_find("nosuch") == NULL);
	CHECK(catalog_find("") == NULL);
	CHECK(catalog_find("Square") == NULL); /* names are case-sensitive */
	CHECK(catalog_find("square ") == NULL);
	CHECK(catalog_find("squar") == NULL);
	const struct task_info *t = catalog_find("monte_carlo_pi");
	CHECK(t != NULL);
	CHECK_INT(t->nparams, 2);
	CHECK_INT(t->required, 1);
	CHECK_INT(t->params[0].type, PT_UINT);
	CHECK_INT(t->params[1].type, PT_INT);
	catalog_free();
}

TEST(catalog_load_fails_for_a_program_that_does_not_run)
{
	CHECK_INT(catalog_load("./no-such-worker"), -1);
	CHECK_INT(catalog_count(), 0);
	/* A good catalogue is no use from a program that then fails. */
	CHECK_INT(catalog_load(script("echo '{\"tasks\":[]}'; exit 3")), -1);
	CHECK_INT(catalog_load(script("echo '{\"tasks\":[]}'; kill -9 $$")), -1);
	CHECK_INT(catalog_load(script("echo '{\"tasks\":[]}'")), 0); /* the same, exiting 0 */
	CHECK_INT(catalog_count(), 0);
}

TEST(catalog_load_fails_for_a_program_that_is_not_a_worker)
{
	CHECK_INT(catalog_load("/bin/true"), -1); /* prints nothing */
	CHECK_INT(catalog_load(fake_worker("not json")), -1);
	CHECK_INT(catalog_load(fake_worker("{\"tasks\": {}}")), -1);
	CHECK_INT(catalog_load(fake_worker("[]")), -1);
}

TEST(catalog_load_rejects_a_malformed_task_list)
{
	static const char *const bad[] = {
		/* no name */
		"{\"tasks\":[{\"params\":[],\"required\":0}]}",
		/* an empty name */
		"{\"tasks\":[{\"name\":\"\",\"params\":[],\"required\":0}]}",
		/* no params */
		"{\"tasks\":[{\"name\":\"t\",\"required\":0}]}",
		/* an unknown type */
		"{\"tasks\":[{\"name\":\"t\",\"params\":[{\"name\":\"x\",\"type\":\"float\"}],"
		"\"required\":1}]}",
		/* more required than params */
		"{\"tasks\":[{\"name\":\"t\",\"params\":[{\"name\":\"x\",\"type\":\"int\"}],"
		"\"required\":2}]}",
		/* negative required */
		"{\"tasks\":[{\"name\":\"t\",\"params\":[],\"required\":-1}]}",
		/* variadic without a param to repeat */
		"{\"tasks\":[{\"name\":\"t\",\"params\":[],\"required\":0,\"variadic\":true}]}",
		/* a name twice */
		"{\"tasks\":[{\"name\":\"t\",\"params\":[],\"required\":0},"
		"{\"name\":\"t\",\"params\":[],\"required\":0}]}",
		/* a name too long for TASK_NAME_MAX */
		"{\"tasks\":[{\"name\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\","
		"\"params\":[],\"required\":0}]}",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		if (catalog_load(fake_worker(bad[i])) != -1)
			FAILF("case %zu was loaded: %s", i, bad[i]);
}

TEST(catalog_load_takes_a_minimal_task_list)
{
	CHECK_INT(catalog_load(fake_worker("{\"tasks\":[{\"name\":\"t\",\"params\":[{\"name\":\"s\","
					   "\"type\":\"string\"}],\"required\":1}]}")),
		  0);
	CHECK_INT(catalog_count(), 1);
	const struct task_info *t = find("t");
	CHECK_STR(t->doc, "");
	CHECK_INT(t->variadic, 0);
	CHECK_INT(t->params[0].type, PT_STRING);
	CHECK_STR(check("t", "[\"x\"]"), "ok");
	CHECK_STR(check("t", "[]"), "t takes 1 argument, got 0");
	catalog_free();
}

/* ---- Arity. ---- */

TEST(catalog_check_wrong_arity_messages)
{
	load();
	CHECK_STR(check("square", "[1]"), "ok");
	CHECK_STR(check("square", "[1, 2]"), "square takes 1 argument, got 2");
	CHECK_STR(check("square", "[]"), "square takes 1 argument, got 0");
	CHECK_STR(check("power", "[2]"), "power takes 2 arguments, got 1");
	CHECK_STR(check("power", "[2, 3, 4]"), "power takes 2 arguments, got 3");
	CHECK_STR(check("crash", "[]"), "ok");
	CHECK_STR(check("crash", "[1]"), "crash takes 0 arguments, got 1");
	CHECK_STR(check("getpid", "[null]"), "getpid takes 0 arguments, got 1");
	catalog_free();
}

TEST(catalog_check_optional_params)
{
	load();
	CHECK_STR(check("monte_carlo_pi", "[1000]"), "ok");
	CHECK_STR(check("monte_carlo_pi", "[1000, 42]"), "ok");
	CHECK_STR(check("monte_carlo_pi", "[1000, -42]"), "ok"); /* seed is an int */
	CHECK_STR(check("monte_carlo_pi", "[]"), "monte_carlo_pi takes 1 to 2 arguments, got 0");
	CHECK_STR(check("monte_carlo_pi", "[1, 2, 3]"),
		  "monte_carlo_pi takes 1 to 2 arguments, got 3");
	CHECK_STR(check("monte_carlo_pi", "[1000, 1.5]"),
		  "monte_carlo_pi: argument 1 (seed) must be an integer, got a number");
	CHECK_STR(check("monte_carlo_pi", "[-1]"),
		  "monte_carlo_pi: argument 0 (samples) must be an integer >= 0, got a negative integer");
	catalog_free();
}

TEST(catalog_check_variadic_echo)
{
	load();
	CHECK_STR(check("echo", "[]"), "ok");
	CHECK_STR(check("echo", "[1]"), "ok");
	CHECK_STR(check("echo", "[1, \"a\", null, true, 2.5, {\"k\": []}, [[]]]"), "ok");
	char big[8192];
	size_t n = 0;
	big[n++] = '[';
	for (int i = 0; i < 1000; i++)
		n += (size_t)snprintf(big + n, sizeof big - n, i ? ",%d" : "%d", i);
	big[n++] = ']';
	big[n] = '\0';
	CHECK_STR(check("echo", big), "ok");
	catalog_free();
}

/* ---- Types. ---- */

TEST(catalog_check_int_params)
{
	load();
	CHECK_STR(check("is_prime", "[7]"), "ok");
	CHECK_STR(check("is_prime", "[-7]"), "ok");
	CHECK_STR(check("is_prime", "[0]"), "ok");
	CHECK_STR(check("is_prime", "[7.0]"),
		  "is_prime: argument 0 (n) must be an integer, got a number");
	CHECK_STR(check("is_prime", "[\"7\"]"),
		  "is_prime: argument 0 (n) must be an integer, got a string");
	CHECK_STR(check("is_prime", "[null]"), "is_prime: argument 0 (n) must be an integer, got null");
	CHECK_STR(check("is_prime", "[[7]]"),
		  "is_prime: argument 0 (n) must be an integer, got an array");
	CHECK_STR(check("is_prime", "[{}]"),
		  "is_prime: argument 0 (n) must be an integer, got an object");
	CHECK_STR(check("count_primes", "[0, 1.5]"),
		  "count_primes: argument 1 (end) must be an integer, got a number");
	catalog_free();
}

TEST(catalog_check_booleans_are_not_integers)
{
	load();
	CHECK_STR(check("is_prime", "[true]"),
		  "is_prime: argument 0 (n) must be an integer, got a boolean");
	CHECK_STR(check("is_prime", "[false]"),
		  "is_prime: argument 0 (n) must be an integer, got a boolean");
	CHECK_STR(check("sum_squares", "[true]"),
		  "sum_squares: argument 0 (n) must be an integer >= 0, got a boolean");
	CHECK_STR(check("power", "[2, false]"),
		  "power: argument 1 (exp) must be an integer >= 0, got a boolean");
	CHECK_STR(check("square", "[true]"), "square: argument 0 (x) must be a number, got a boolean");
	CHECK_STR(check("sleep", "[false]"),
		  "sleep: argument 0 (seconds) must be a number >= 0, got a boolean");
	catalog_free();
}

TEST(catalog_check_uint_params)
{
	load();
	CHECK_STR(check("sum_squares", "[0]"), "ok");
	CHECK_STR(check("sum_squares", "[40000000]"), "ok");
	CHECK_STR(check("sum_squares", "[-1]"),
		  "sum_squares: argument 0 (n) must be an integer >= 0, got a negative integer");
	CHECK_STR(check("sum_squares", "[1.0]"),
		  "sum_squares: argument 0 (n) must be an integer >= 0, got a number");
	CHECK_STR(check("sum_squares", "[-1.0]"),
		  "sum_squares: argument 0 (n) must be an integer >= 0, got a number");
	CHECK_STR(check("power", "[2, -1]"),
		  "power: argument 1 (exp) must be an integer >= 0, got a negative integer");
	CHECK_STR(check("power", "[-2.5, 3]"), "ok"); /* the base is any number */
	catalog_free();
}

TEST(catalog_check_number_params)
{
	load();
	CHECK_STR(check("square", "[3]"), "ok");
	CHECK_STR(check("square", "[-3]"), "ok");
	CHECK_STR(check("square", "[1.5e300]"), "ok");
	CHECK_STR(check("square", "[-0.25]"), "ok");
	CHECK_STR(check("square", "[\"3\"]"), "square: argument 0 (x) must be a number, got a string");
	CHECK_STR(check("square", "[null]"), "square: argument 0 (x) must be a number, got null");
	CHECK_STR(check("fail_if", "[1, [1]]"),
		  "fail_if: argument 1 (bad) must be a number, got an array");
	catalog_free();
}

TEST(catalog_check_unumber_params)
{
	load();
	CHECK_STR(check("sleep", "[0]"), "ok");
	CHECK_STR(check("sleep", "[0.5]"), "ok");
	CHECK_STR(check("sleep", "[-0.0]"), "ok"); /* -0 == 0 is not below 0 */
	CHECK_STR(check("sleep", "[-0.5]"),
		  "sleep: argument 0 (seconds) must be a number >= 0, got a negative number");
	CHECK_STR(check("sleep", "[-1]"),
		  "sleep: argument 0 (seconds) must be a number >= 0, got a negative number");
	CHECK_STR(check("spin", "[\"1\"]"),
		  "spin: argument 0 (seconds) must be a number >= 0, got a string");
	catalog_free();
}

TEST(catalog_check_string_params)
{
	load();
	CHECK_STR(check("fail", "[\"boom\"]"), "ok");
	CHECK_STR(check("fail", "[\"\"]"), "ok");
	CHECK_STR(check("fail", "[1]"), "fail: argument 0 (message) must be a string, got an integer");
	CHECK_STR(check("fail", "[[\"boom\"]]"),
		  "fail: argument 0 (message) must be a string, got an array");
	catalog_free();
}

TEST(catalog_check_any_params)
{
	load();
	static const char *const vals[] = {"[1]", "[-1.5]", "[\"s\"]", "[null]",
					   "[true]", "[false]", "[[]]", "[{\"a\": 1}]"};
	for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++)
		CHECK_STR(check("echo", vals[i]), "ok");
	catalog_free();
}

/* jansson holds integers in 64 bits: a wider one never reaches catalog_check,
 * since the body fails to parse first; the 64-bit extremes are checked by
 * their sign like any other integer. */
TEST(catalog_check_integers_at_and_beyond_64_bits)
{
	load();
	CHECK_STR(check("sum_squares", "[9223372036854775807]"), "ok");
	CHECK_STR(check("is_prime", "[-9223372036854775808]"), "ok");
	CHECK_STR(check("sum_squares", "[-9223372036854775808]"),
		  "sum_squares: argument 0 (n) must be an integer >= 0, got a negative integer");
	json_error_t jerr;
	json_t *a = json_loads("[9223372036854775808]", JSON_REJECT_DUPLICATES, &jerr);
	CHECK(a == NULL);
	CHECK_CONTAINS(jerr.text, "too big");
	a = json_loads("[-9223372036854775809]", JSON_REJECT_DUPLICATES, &jerr);
	CHECK(a == NULL);
	/* Written as a real, a huge value is a number, not an integer. */
	CHECK_STR(check("square", "[1e20]"), "ok");
	CHECK_STR(check("sum_squares", "[1e20]"),
		  "sum_squares: argument 0 (n) must be an integer >= 0, got a number");
	CHECK_STR(check("is_prime", "[18446744073709551616.0]"),
		  "is_prime: argument 0 (n) must be an integer, got a number");
	catalog_free();
}

TEST(catalog_check_items_that_are_not_arrays)
{
	load();
	CHECK_STR(check("square", "{\"x\": 1}"), "must be an array of arguments, got an object");
	CHECK_STR(check("square", "3"), "must be an array of arguments, got an integer");
	CHECK_STR(check("square", "3.5"), "must be an array of arguments, got a number");
	CHECK_STR(check("square", "\"3\""), "must be an array of arguments, got a string");
	CHECK_STR(check("square", "null"), "must be an array of arguments, got null");
	CHECK_STR(check("square", "true"), "must be an array of arguments, got a boolean");
	CHECK_STR(check("echo", "{}"), "must be an array of arguments, got an object");
	catalog_free();
}

TEST(catalog_check_reports_the_first_bad_argument)
{
	load();
	CHECK_STR(check("fail_if", "[\"a\", \"b\"]"),
		  "fail_if: argument 0 (x) must be a number, got a string");
	CHECK_STR(check("fail_if", "[1, \"b\"]"),
		  "fail_if: argument 1 (bad) must be a number, got a string");
	/* Arity is checked before types. */
	CHECK_STR(check("fail_if", "[\"a\"]"), "fail_if takes 2 arguments, got 1");
	catalog_free();
}

TEST(catalog_check_truncates_its_message_to_the_buffer)
{
	load();
	json_t *a = json_loads("[1, 2]", 0, NULL);
	CHECK(a != NULL);
	char err[12];
	memset(err, 'Z', sizeof err);
	CHECK_INT(catalog_check(find("square"), a, err, 8), -1);
	CHECK_STR(err, "square ");
	CHECK_INT(err[8], 'Z'); /* nothing written past errlen */
	json_decref(a);
	catalog_free();
}

/* The worker checks the arguments again (worker/tasks.c); both must say the
 * same thing, so that a client sees one wording whichever side refuses. */
TEST(catalog_check_agrees_with_the_worker_check)
{
	load();
	static const struct {
		const char *task, *args;
	} cases[] = {
		{"square", "[1, 2]"},        {"square", "[]"},
		{"square", "[\"a\"]"},       {"power", "[2]"},
		{"power", "[2, -1]"},        {"power", "[2, 1.5]"},
		{"sum_squares", "[-3]"},     {"sum_squares", "[true]"},
		{"is_prime", "[null]"},      {"monte_carlo_pi", "[]"},
		{"monte_carlo_pi", "[1,2,3]"}, {"monte_carlo_pi", "[1, 0.5]"},
		{"sleep", "[-1.5]"},         {"fail", "[{}]"},
		{"crash", "[1]"},            {"getpid", "[[]]"},
		{"fail_if", "[1]"},          {"crash_if", "[1, \"x\"]"},
		{"count_primes", "[1, 2, 3]"},
	};
	struct buf res = {0}, err = {0};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const char *mine = check(cases[i].task, cases[i].args);
		if (!strcmp(mine, "ok"))
			FAILF("%s %s was accepted", cases[i].task, cases[i].args);
		buf_reset(&res);
		buf_reset(&err);
		const struct task *t = task_find(cases[i].task);
		CHECK(t != NULL);
		CHECK_INT(task_run(t, cases[i].args, strlen(cases[i].args), &res, &err), -1);
		if (strcmp(mine, err.data))
			FAILF("%s %s: the catalogue says \"%s\", the worker \"%s\"", cases[i].task,
			      cases[i].args, mine, err.data);
	}
	buf_free(&res);
	buf_free(&err);
	catalog_free();
}
