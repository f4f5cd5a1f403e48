/*
 * tests/fuzz/fuzz_config.c — the configuration loader (pl_config_parse):
 * parleyd and every client read a file an operator wrote by hand.
 *
 * Beyond "no crash, no leak": a refusal must come with the promised errors,
 * one non-empty line "NAME: KEY: REASON" per error, each starting with the
 * file name and none empty (issue 21: every error, not only the first); an
 * accepted config must be usable: at least one server with a host, ports in
 * range, plugin names set.
 */
#include <string.h>

#include "config.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    memset(err, 0x55, sizeof err);
    err[sizeof err - 1] = 0;
    pl_config *c = pl_config_parse("fuzz.json", (const char *)data, size, err, sizeof err);
    if (!c) {
        size_t n = strnlen(err, sizeof err);
        FUZZ_CHECK(n < sizeof err, "error message not terminated");
        FUZZ_CHECK(strncmp(err, "fuzz.json: ", 11) == 0, "error does not name the file: %s", err);
        FUZZ_CHECK(n > 11, "empty error reason");
        for (const char *l = err; *l;) {
            size_t len = strcspn(l, "\n");
            FUZZ_CHECK(len > 11 && strncmp(l, "fuzz.json: ", 11) == 0,
                       "an error line does not name the file, or is empty: %.*s", (int)len, l);
            l += len;
            if (*l == '\n') {
                l++;
                FUZZ_CHECK(*l, "an empty line after the last error: %s", err);
            }
        }
        return 0;
    }
    FUZZ_CHECK(c->n_servers >= 1 && c->servers, "accepted a config with no server");
    for (size_t i = 0; i < c->n_servers; i++) {
        FUZZ_CHECK(c->servers[i].host && c->servers[i].host[0], "server %zu has no host", i);
        FUZZ_CHECK(c->servers[i].port != 0, "server %zu has port 0", i);
    }
    FUZZ_CHECK(c->transport.name && c->store.name, "plugin names missing");
    pl_config_free(c);
    return 0;
}
