/*
 * A transport plugin from an ABI newer than this parley's: refused, with
 * both versions named, before any other field is read (all NULL here).
 */
#include <parley/transport.h>

static const pl_transport_plugin future_plugin = {
    .abi_version = PL_TRANSPORT_ABI_VERSION + 1,
    .name = "future",
    .description = "test plugin with a newer transport ABI",
};

PL_EXPORT const pl_transport_plugin *parley_transport_plugin(void);

const pl_transport_plugin *parley_transport_plugin(void)
{
    return &future_plugin;
}
