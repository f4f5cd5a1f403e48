#!/usr/bin/env bash
# Memory and undefined-behaviour checks, run by .ci/run after the main tests:
#  1. a second build with ASan + UBSan (LeakSanitizer included) running the
#     unit, conformance, end-to-end and fuzz-regress suites; in the e2e suite
#     every parleyd is stopped with SIGTERM and must exit 0, so a leak at
#     shutdown fails the test (PARLEY_TEST_CHECK_EXIT, tests/e2e/harness.py);
#  2. valgrind memcheck of parleyd (the normal build) on the e2e suite: any
#     invalid read or write, use of uninitialised memory, or definite leak
#     fails it (PARLEY_TEST_VALGRIND).
#
# Environment (all optional):
#   SAN_BUILD        sanitizer build directory (default build-sanitize)
#   SAN_SUITES       suites for step 1 (default "unit conformance e2e fuzz-regress")
#   MAIN_BUILD       normal build directory for step 2 (default build)
#   VALGRIND_TESTS   meson test selection for step 2 (default: --suite e2e, every
#                    wire format with every store)
set -euo pipefail
cd "$(dirname "$0")/.."

san=${SAN_BUILD:-build-sanitize}
main=${MAIN_BUILD:-build}
suites=${SAN_SUITES:-unit conformance e2e fuzz-regress cluster}
vg_tests=${VALGRIND_TESTS:---suite e2e}

# UBSan's default is to print and carry on: make every finding fatal.
# exitcode 23: what tests/e2e/harness.py recognises as a memory checker's verdict.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:exitcode=23:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

echo "ci-sanitize: ASan + UBSan build in $san"
if [ ! -d "$san" ]; then
  meson setup "$san" -Db_sanitize=address,undefined -Db_lundef=false \
    -Dc_args="-fno-sanitize-recover=undefined -fno-omit-frame-pointer" >/dev/null
fi
meson compile -C "$san" >/dev/null
args=()
for s in $suites; do args+=(--suite "$s"); done
# Sanitized code runs 2-3x slower: stretch the per-test timeouts.
PARLEY_TEST_CHECK_EXIT=1 meson test -C "$san" "${args[@]}" --print-errorlogs \
  --timeout-multiplier 3 --num-processes 2

echo "ci-sanitize: valgrind memcheck of parleyd on: $vg_tests"
command -v valgrind >/dev/null || { echo "ci-sanitize: valgrind is not installed"; exit 1; }
[ -d "$main" ] || { meson setup "$main" >/dev/null; }
meson compile -C "$main" >/dev/null
# shellcheck disable=SC2086
PARLEY_TEST_VALGRIND=1 meson test -C "$main" $vg_tests --print-errorlogs \
  --timeout-multiplier 4 --num-processes 2
echo "ci-sanitize: clean"
