/* plugin.c - C plugins (see plugin.h and include/forkpool.h).
 *
 * A plugin is never unloaded: its tasks point into it until the worker exits. */
#include "plugin.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forkpool.h"
#include "jsonw.h"
#include "tasks.h"

_Static_assert((int)FORKPOOL_INT == (int)TASK_INT && (int)FORKPOOL_UINT == (int)TASK_UINT &&
		       (int)FORKPOOL_NUMBER == (int)TASK_NUMBER &&
		       (int)FORKPOOL_UNUMBER == (int)TASK_UNUMBER &&
		       (int)FORKPOOL_STRING == (int)TASK_STRING && (int)FORKPOOL_ANY == (int)TASK_ANY,
	       "forkpool.h's types are tasks.h's, in the same order");
_Static_assert(FORKPOOL_MAX_PARAMS <= TASK_MAX_PARAMS, "a plugin task's params fit a task's");
_Static_assert(FORKPOOL_NAME_MAX == TASK_NAME_LEN - 1, "one limit on names");

struct plugin {
	char *where; /* "plugin /abs/path.so", the origin of its tasks */
	const struct forkpool_plugin *desc;
	json_t *initargs; /* JSON null when none was given */
	struct task *tasks;
	size_t ntasks;
	int inited;
};

static struct plugin *plugins;
static size_t nplugins;

static int call_plugin(const struct task *t, const json_t *args, struct buf *res, struct buf *err)
{
	const struct forkpool_task *pt = t->ctx;
	char msg[FORKPOOL_ERR_MAX] = "";
	json_t *r = pt->fn(args, msg, sizeof msg);
	if (!r) {
		msg[sizeof msg - 1] = '\0';
		return task_error(err, "%s", msg[0] ? msg : "task failed");
	}
	jsonw_value(res, r);
	json_decref(r);
	return 0;
}

/* Checks one task of a plugin's description and fills t from it. */
static int take_task(struct plugin *p, size_t i, struct task *t, struct buf *err)
{
	const struct forkpool_task *pt = &p->desc->tasks[i];
	if (!pt->fn)
		return task_error(err, "%s: task \"%s\" has no function", p->where, pt->name);
	int np = 0;
	while (np < FORKPOOL_MAX_PARAMS && pt->params[np].name)
		np++;
	for (int k = 0; k < np; k++) {
		if ((int)pt->params[k].type < 0 || pt->params[k].type > FORKPOOL_ANY)
			return task_error(err, "%s: task \"%s\": parameter %d (%s) has an unknown type %d",
					  p->where, pt->name, k, pt->params[k].name, (int)pt->params[k].type);
		for (int j = 0; j < k; j++)
			if (!strcmp(pt->params[j].name, pt->params[k].name))
				return task_error(err, "%s: task \"%s\": parameters %d and %d are both "
						       "called %s", p->where, pt->name, j, k,
						  pt->params[k].name);
		t->params[k].name = pt->params[k].name;
		t->params[k].type = (enum task_type)pt->params[k].type;
	}
	if (pt->required < 0 || pt->required > np)
		return task_error(err, "%s: task \"%s\": required is %d but it has %d parameter%s",
				  p->where, pt->name, pt->required, np, np == 1 ? "" : "s");
	if (pt->variadic && np == 0)
		return task_error(err, "%s: task \"%s\" is variadic but has no parameter to repeat",
				  p->where, pt->name);
	t->name = pt->name;
	t->doc = pt->doc ? pt->doc : "";
	t->required = pt->required;
	t->variadic = pt->variadic != 0;
	t->call = call_plugin;
	t->ctx = pt;
	t->origin = p->where;
	return 0;
}

/* Splits the spec and parses the initargs. */
static int parse_spec(const char *spec, char **path, json_t **initargs, struct buf *err)
{
	const char *eq = strchr(spec, '=');
	size_t plen = eq ? (size_t)(eq - spec) : strlen(spec);
	if (plen == 0)
		return task_error(err, "plugin \"%s\": no path (expected PATH.so or PATH.so=INITARGS_JSON)",
				  spec);
	*path = strndup(spec, plen);
	if (!*path)
		abort();
	if (!eq) {
		*initargs = json_null();
		return 0;
	}
	json_error_t jerr;
	*initargs = json_loads(eq + 1, JSON_DECODE_ANY, &jerr);
	if (!*initargs)
		return task_error(err, "plugin %s: the initargs after '=' are not valid JSON: %s (column %d)",
				  *path, jerr.text, jerr.column);
	return 0;
}

int plugin_load(const char *spec, struct buf *err)
{
	char *path = NULL;
	json_t *initargs = NULL;
	struct plugin p = {0};
	int rc = -1;
	if (parse_spec(spec, &path, &initargs, err) < 0)
		goto out;
	char abs[PATH_MAX];
	if (!realpath(path, abs)) {
		task_error(err, "plugin %s: cannot load: %s", path, strerror(errno));
		goto out;
	}
	size_t wlen = strlen(abs) + 8;
	p.where = malloc(wlen);
	if (!p.where)
		abort();
	snprintf(p.where, wlen, "plugin %s", abs);
	for (size_t i = 0; i < nplugins; i++)
		if (!strcmp(plugins[i].where, p.where)) {
			task_error(err, "%s is given twice", p.where);
			goto out;
		}
	dlerror();
	void *h = dlopen(abs, RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		const char *why = dlerror();
		task_error(err, "%s: cannot load: %s", p.where, why ? why : "dlopen failed");
		goto out;
	}
	const struct forkpool_plugin *(*entry)(void);
	*(void **)&entry = dlsym(h, "forkpool_plugin");
	if (!entry) {
		task_error(err, "%s: no entry point: it does not define forkpool_plugin() "
				"(see forkpool.h)", p.where);
		goto out;
	}
	p.desc = entry();
	if (!p.desc) {
		task_error(err, "%s: forkpool_plugin() returned NULL", p.where);
		goto out;
	}
	if (p.desc->abi != FORKPOOL_PLUGIN_ABI) {
		task_error(err, "%s: built for plugin ABI %d, but this worker has ABI %d: rebuild it "
				"against this forkpool.h", p.where, p.desc->abi, FORKPOOL_PLUGIN_ABI);
		goto out;
	}
	while (p.desc->tasks && p.desc->tasks[p.ntasks].name)
		p.ntasks++;
	if (p.ntasks == 0) {
		task_error(err, "%s: it declares no tasks", p.where);
		goto out;
	}
	p.tasks = calloc(p.ntasks, sizeof *p.tasks);
	if (!p.tasks)
		abort();
	for (size_t i = 0; i < p.ntasks; i++)
		if (take_task(&p, i, &p.tasks[i], err) < 0)
			goto out;
	struct plugin *np = realloc(plugins, (nplugins + 1) * sizeof *np);
	if (!np)
		abort();
	plugins = np;
	/* From here the table points into plugins[nplugins]: it must stay. */
	p.initargs = initargs;
	initargs = NULL;
	plugins[nplugins++] = p;
	struct plugin *kept = &plugins[nplugins - 1];
	for (size_t i = 0; i < kept->ntasks; i++)
		if (task_add(&kept->tasks[i], err) < 0)
			return -1; /* the worker gives up: nothing to undo */
	p = (struct plugin){0};
	rc = 0;
out:
	free(path);
	json_decref(initargs);
	free(p.where);
	free(p.tasks);
	return rc;
}

int plugin_init_all(struct buf *err)
{
	for (size_t i = 0; i < nplugins; i++) {
		struct plugin *p = &plugins[i];
		if (!p->desc->init) {
			p->inited = 1;
			continue;
		}
		char msg[FORKPOOL_ERR_MAX] = "";
		if (p->desc->init(p->initargs, msg, sizeof msg) != 0) {
			msg[sizeof msg - 1] = '\0';
			task_error(err, "%s: initializer failed: %s", p->where,
				   msg[0] ? msg : "(it gave no reason)");
			plugin_fini_all();
			return -1;
		}
		p->inited = 1;
	}
	return 0;
}

void plugin_fini_all(void)
{
	for (size_t i = nplugins; i-- > 0;) {
		struct plugin *p = &plugins[i];
		if (p->inited && p->desc->fini)
			p->desc->fini();
		p->inited = 0;
	}
}
