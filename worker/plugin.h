/* plugin.h - C plugins: shared objects, loaded with dlopen, whose tasks join
 * the task table (the interface plugins implement is include/forkpool.h).
 *
 * Loading (dlopen, the entry point, checking the description, adding the
 * tasks) is all the `--describe` run does; a serving worker then runs every
 * initializer once before it says hello, and the finalizers when it ends in
 * an orderly way. */
#ifndef FORKPOOL_PLUGIN_H
#define FORKPOOL_PLUGIN_H

#include "buf.h"

/* Loads "PATH[=INITARGS_JSON]" (PATH may not hold '='; relative to the cwd)
 * and adds its tasks. 0, or -1 with what and where appended to err, such as
 * "plugin ./x.so: cannot load: ...: cannot open shared object file". */
int plugin_load(const char *spec, struct buf *err);
/* Runs the initializers in load order. 0, or -1 with the failing plugin's
 * message appended to err (the ones that ran are finalized again). */
int plugin_init_all(struct buf *err);
/* Runs the finalizers of the initialized plugins in reverse order. */
void plugin_fini_all(void);

#endif
