/*
 * core/loader.h — finding and dlopen()ing plugins.
 *
 * A plugin is named by short name ("sqlite" -> parley-store-sqlite.so,
 * "tcp" -> parley-transport-tcp.so) or by a path containing '/'. Short names
 * are searched, in order, in: the config's plugin_dir, $PARLEY_PLUGIN_DIR,
 * the build tree's plugin folders (when the program runs from the build
 * tree), and the install libdir/parley. Every failure is one line:
 *   plugin "foo": not found (looked in: A, B, C)
 *   plugin "x.so": symbol parley_store_plugin missing: ...
 *   plugin "x.so": ABI version 2, this parley speaks 1
 *   plugin "sqlite" (path): open failed: <the plugin's own message>
 */
#ifndef PL_CORE_LOADER_H
#define PL_CORE_LOADER_H

#include <stddef.h>
#include <parley/store.h>
#include <parley/transport.h>

typedef struct pl_plugin pl_plugin; /* a loaded module; owns the dlopen handle */

/* kind: "store" or "transport". plugin_dir may be NULL. On failure returns
 * NULL with the one-line reason in err. */
pl_plugin *pl_plugin_load(const char *kind, const char *name,
                          const char *plugin_dir, char *err, size_t errlen);
const pl_store_plugin *pl_plugin_store(const pl_plugin *p);         /* NULL if not a store */
const pl_transport_plugin *pl_plugin_transport(const pl_plugin *p); /* NULL if not a transport */
/* The store ABI minor version whose members the core may call (0: none). */
uint32_t pl_plugin_store_minor(const pl_plugin *p);
const char *pl_plugin_path(const pl_plugin *p);
void pl_plugin_unload(pl_plugin *p);

/* Open a store through a loaded store plugin. On failure err reads
 *   plugin "sqlite" (/path/parley-store-sqlite.so): open failed: <plugin's message>
 */
int pl_plugin_store_open(const pl_plugin *p, const pl_store_host *host,
                         const pl_store_options *opt, pl_store **out,
                         char *err, size_t errlen);

#endif
