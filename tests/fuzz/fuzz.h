/*
 * tests/fuzz/fuzz.h — what every fuzz target shares.
 *
 * A target is one file defining LLVMFuzzerTestOneInput (and optionally
 * LLVMFuzzerInitialize). It links two ways:
 *   - with clang's libFuzzer (-fsanitize=fuzzer, plus ASan and UBSan) for
 *     tools/ci-fuzz.sh and long background runs;
 *   - with replay.c and the normal compiler, which feeds it the committed
 *     seed corpus and every input that once crashed it (suite fuzz-regress),
 *     so a fixed crash stays fixed in every CI run, clang or not.
 * FUZZ_CHECK states a property the code under test promises (a round trip, a
 * one-line error); a broken promise aborts, which libFuzzer reports as a
 * crash with the input saved.
 */
#ifndef PL_FUZZ_H
#define PL_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_CHECK(cond, ...)                                                  \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: property broken: %s: ", __FILE__,          \
                    __LINE__, #cond);                                          \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
            abort();                                                           \
        }                                                                      \
    } while (0)

#endif
