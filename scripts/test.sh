#!/usr/bin/env bash
# Installs what is needed, builds saed twice (release, and ASan+UBSan), and runs
# every test: the C unit tests and the Python reference/integration tests under
# the sanitizers, then each libFuzzer target for FUZZ_SECONDS (default 60).
# Ends with one line: "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
JOBS=$(nproc)

bash scripts/setup.sh || { echo "setup failed"; echo "0 passed, 1 failed"; exit 1; }

passed=0
failed=0
failures=()
record() {  # record NAME STATUS
  if [ "$2" -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); failures+=("$1"); fi
}
count_from() {  # count_from NAME PASSED FAILED
  passed=$((passed + $2)); failed=$((failed + $3))
  [ "$3" -gt 0 ] && failures+=("$1 ($3)")
  return 0
}

echo "== build (release)"
{ [ -d build ] || meson setup build >/dev/null; } && ninja -C build -j "$JOBS" >/dev/null
record build $?
echo "== build (asan+ubsan)"
{ [ -d build-asan ] || meson setup build-asan -Dbuildtype=debugoptimized \
    -Db_sanitize=address,undefined -Db_lundef=false -Dcuda=disabled >/dev/null; } &&
  ninja -C build-asan -j "$JOBS" >/dev/null
record build-asan $?

# Several tests run at once on two cores: OpenMP threads must sleep, not spin,
# while they wait.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/lsan.supp:print_suppressions=0}

echo "== C unit tests (asan)"
log=$(meson test -C build-asan --print-errorlogs 2>&1); echo "$log" | grep -E '^ *[0-9]+/[0-9]+ ' || true
ok=$(echo "$log" | sed -n 's/^Ok: *\([0-9]*\).*/\1/p'); bad=$(echo "$log" | sed -n 's/^Fail: *\([0-9]*\).*/\1/p')
to=$(echo "$log" | sed -n 's/^Timeout: *\([0-9]*\).*/\1/p')
count_from "unit" "${ok:-0}" "$(( ${bad:-0} + ${to:-0} ))"
[ -z "$ok" ] && record "meson test did not run" 1

echo "== reference and integration tests (pytest, asan binaries)"
export SAECTL=$PWD/build-asan/src/cli/saectl
export SAED=$PWD/build-asan/src/server/saed
log=$(python3 -m pytest -q -p no:cacheprovider tests 2>&1); echo "$log" | tail -n 30
summary=$(echo "$log" | grep -E '[0-9]+ (passed|failed)' | tail -n 1)
p=$(echo "$summary" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+'); f=$(echo "$summary" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+')
e=$(echo "$summary" | grep -oE '[0-9]+ errors?' | grep -oE '[0-9]+')
count_from "pytest" "${p:-0}" "$(( ${f:-0} + ${e:-0} ))"
[ -z "$summary" ] && record "pytest did not run" 1

if [ "$FUZZ_SECONDS" -gt 0 ]; then
  echo "== fuzz (${FUZZ_SECONDS}s per target)"
  names=$(cd tests/fuzz && ls fuzz_*.c | sed 's/\.c$//')
  { [ -d build-fuzz ] || CC=clang CXX=clang++ meson setup build-fuzz -Dfuzz=true -Dcuda=disabled \
      -Dbuildtype=debugoptimized >/dev/null; } &&
    ninja -C build-fuzz -j "$JOBS" $(for n in $names; do echo "tests/fuzz/$n"; done) >/dev/null
  record build-fuzz $?
  for name in $names; do
    target=build-fuzz/tests/fuzz/$name
    [ -f "$target" ] && [ -x "$target" ] || { record "$name (not built)" 1; continue; }
    corpus=tests/fuzz/corpus_${name#fuzz_}
    work=$(mktemp -d); cp -r "$corpus"/. "$work"/ 2>/dev/null
    "$target" -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -artifact_prefix=build-fuzz/ "$work" > "build-fuzz/$name.log" 2>&1
    rc=$?; rm -rf "$work"
    echo "$name: $(grep -E '^#[0-9]+.*DONE' "build-fuzz/$name.log" | tail -n 1) rc=$rc"
    [ $rc -ne 0 ] && tail -n 30 "build-fuzz/$name.log"
    record "$name" $rc
  done
fi

[ ${#failures[@]} -gt 0 ] && echo "failed: ${failures[*]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
