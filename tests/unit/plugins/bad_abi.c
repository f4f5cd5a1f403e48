/*
 * A store plugin from a future ABI: the loader must refuse it by comparing
 * abi_version before it reads any other field, and name both versions.
 * Every other field is left NULL on purpose: a loader that read past the
 * version check would crash or report a missing member instead.
 */
#include <parley/store.h>

static const pl_store_plugin bad_abi_plugin = {
    .abi_version = 999,
    .name = "bad_abi",
    .description = "test plugin with a wrong ABI version",
};

PL_EXPORT const pl_store_plugin *parley_store_plugin(void);

const pl_store_plugin *parley_store_plugin(void)
{
    return &bad_abi_plugin;
}
