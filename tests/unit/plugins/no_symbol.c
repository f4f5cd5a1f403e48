/*
 * A shared module that is not a store plugin: it lacks parley_store_plugin.
 * Loaded as a store, the loader must name the missing symbol.
 *
 * It does export parley_transport_plugin, with a descriptor whose
 * server_start is NULL, so the same file also checks that the loader names
 * a missing transport member and hints at the kind mix-up.
 */
#include <parley/store.h>
#include <parley/transport.h>

static const pl_transport_plugin incomplete_transport = {
    .abi_version = PL_TRANSPORT_ABI_VERSION,
    .name = "no_symbol",
    .description = "test module: no store entry, incomplete transport",
};

PL_EXPORT const pl_transport_plugin *parley_transport_plugin(void);
PL_EXPORT int parley_store_plugin_v0(void);

const pl_transport_plugin *parley_transport_plugin(void)
{
    return &incomplete_transport;
}

/* A near-miss name, so the module exports something store-like that the
 * loader must not accept. */
int parley_store_plugin_v0(void)
{
    return 0;
}
