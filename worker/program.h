/* program.h - programs as tasks: a tasks file (JSON, chosen by the operator,
 * never by a client) names tasks that run a program, in any language:
 *
 *   {"tasks": [{"name": "thumbnail", "mode": "exec",
 *               "argv": ["convert", "{0}", "-thumbnail", "{1}x{1}", "{2}"],
 *               "params": [{"name": "src", "type": "string"}, ...],
 *               "timeout": 30, "cwd": ".", "env": {"LANG": "C.UTF-8"},
 *               "pass_env": ["HOME"]}, ...]}
 *
 * mode "exec" runs argv once per item (no shell; {N} is replaced by argument N
 * as a string, a lone "{*}" by all of them), with the arguments as a JSON
 * array on stdin; stdout is the result, JSON as written when it is JSON
 * (numbers of any size: jsontext.h), else a string; a non-zero exit fails the
 * item (task_error) with the last lines of stderr. mode "persistent" starts argv once per worker and keeps it: one
 * JSON line of arguments in, one line {"result": ...} or {"error": "..."} out
 * per item. docs/plugins.md is the full reference.
 *
 * Every program runs in its task's cwd (default: the tasks file's directory)
 * with only the environment the file lists, and is killed when its worker
 * dies (PR_SET_PDEATHSIG), so the server's timeouts apply unchanged. */
#ifndef FORKPOOL_PROGRAM_H
#define FORKPOOL_PROGRAM_H

#include <poll.h>
#include <stdbool.h>

#include "buf.h"

/* Reads a tasks file and adds its tasks, checking everything that can be
 * checked before running anything: the JSON, every field, that each program
 * exists and is executable, that each cwd is a directory, that the file was
 * not read already. 0, or -1 with what and where appended to err ("tasks
 * file /x/t.json: tasks[1] (\"thumb\"): argv[0]: program \"convert\" was not
 * found in PATH (...)"), a line for each task that is wrong (the others are
 * added). */
int program_load_file(const char *path, struct buf *err);
/* Starts the persistent programs (in a serving worker, before its hello).
 * 0, or -1 with why appended to err. */
int program_start_all(struct buf *err);
/* Whether the item that just failed did not run because a persistent
 * program cannot start: it ended before it read its first item (or could
 * not be started again). Its error says why; the worker cannot serve. */
bool program_cannot_serve(void);
/* For a worker waiting for work: the stdout of each persistent program that
 * has not answered an item yet, as pollfds that report a hang-up alone (up
 * to max; the count). One that hangs up has ended before its first item:
 * program_check_unproven then says -1, with why in err (the worker cannot
 * serve); else 0. */
size_t program_unproven_fds(struct pollfd *pf, size_t max);
int program_check_unproven(struct buf *err);
/* Closes the persistent programs' stdin, gives them a moment to exit, then
 * kills what is left. */
void program_stop_all(void);

#endif
