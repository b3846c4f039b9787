#!/usr/bin/env bash
# Builds ssmd into build/ (or $SSMD_BUILD) and runs every test: the C test
# programs, the end-to-end tests and the Python client tests, all through
# `meson test`. Ends with one line `N passed, N failed, N skipped`.
#   SSMD_MESON_ARGS  extra `meson setup` arguments for a new build folder
#   SSMD_TEST_ARGS   extra `meson test` arguments (e.g. --suite store)
set -u
cd "$(dirname "$0")/.."
build=${SSMD_BUILD:-build}
if [ ! -d "$build" ]; then
	meson setup "$build" ${SSMD_MESON_ARGS:-} >/dev/null || exit 1
fi
ninja -C "$build" >/dev/null || { ninja -C "$build"; exit 1; }
meson test -C "$build" --print-errorlogs --num-processes "$(nproc)" ${SSMD_TEST_ARGS:-} \
	>"$build/test-output.txt" 2>&1
meson_rc=$?
grep -E '^ *[0-9]+/[0-9]+ ' "$build/test-output.txt"
python3 tests/summarize.py "$build/meson-logs/testlog.json"
sum_rc=$?
[ $meson_rc -eq 0 ] || tail -n 60 "$build/test-output.txt" >&2
[ $meson_rc -eq 0 ] && [ $sum_rc -eq 0 ]
