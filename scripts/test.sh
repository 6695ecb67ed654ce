#!/usr/bin/env bash
# The README's test command (and CI's): set up what is missing, then lint, type-check,
# and then side by side: the suite on both core backends; the C tests under ASan+UBSan,
# a brief fuzz of the decoders, the benchmark bodies and the wheel installed in fresh
# virtualenvs (scripts/wheel.sh). Any failure fails the whole run.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
# the project's own builds of the C core (the editable install, the wheel) fail on any
# warning; a user's `pip install` never does (dtp_core/build_ffi.py)
export DTP_WERROR=1
bash scripts/bootstrap.sh
PYBIN=.venv/bin
export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# Bytecode, written and kept: the suite starts hundreds of Python processes (`dtp`
# commands, daemons, backends, stand-in nodes, pytest runs of their own), and where no
# current .pyc is found each one compiles every module it imports again (about half of a
# daemon's start, 0.3 s of CPU each time); pytest rewrites the asserts of the tests and of
# every module of its plugins' distributions it imports (dtp's, hypothesis', anyio's: 240
# for one ledger test file) in each of its processes, 0.8 s of CPU before a trivial test,
# unless it may keep what it rewrote. So PYTHONDONTWRITEBYTECODE (which stops both) is
# unset for the run, and the checkout compiled once before the parts start side by side
# (only missing or stale files; __pycache__ is ignored by git).
unset PYTHONDONTWRITEBYTECODE
$PYBIN/python -m compileall -q -j0 dtp tests bench fuzz >/dev/null

step "lint (ruff) and types (mypy)"
$PYBIN/ruff check dtp tests bench fuzz dtp_core
$PYBIN/ruff format --check dtp tests bench fuzz dtp_core
$PYBIN/mypy dtp

# The C core under the sanitizers, the fuzzers, the benchmark bodies and the wheel: one
# job, run beside the suite's parts (the suite waits more than it computes: sockets, timers,
# other processes), into build/checks.log.
# (each of the checks' pytest runs interrupted, as Ctrl-C would, past DTP_CHECK_LIMIT)
check_limit="timeout --signal=INT --kill-after=60 ${DTP_CHECK_LIMIT:-40m}"
checks() {
  step "C core under AddressSanitizer + UndefinedBehaviorSanitizer"
  rm -rf build/asan
  $PYBIN/python dtp_core/build_ffi.py --out build/asan --sanitize >/dev/null
  ASAN_LIB=$(ls build/asan/dtp/_dtp_core*.so | head -n1)
  CORE_TESTS=$(find tests/native -name 'test_*.py' | sort)
  # detect_leaks=0 here: CPython itself keeps allocations alive at exit. Leaks in the C
  # core are caught by the standalone driver below, which has no Python in the process.
  LD_PRELOAD="$(gcc -print-file-name=libasan.so)" \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    DTP_CORE_LIB="$ASAN_LIB" HYPOTHESIS_PROFILE=sanitizer \
    $check_limit $PYBIN/python -m pytest -q -p no:cacheprovider -x $CORE_TESTS

  step "C core alone under ASan + UBSan + LeakSanitizer (no Python in the process)"
  gcc -std=c11 -Wall -Wextra -Werror -Wshadow -Wvla \
    -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1 \
    -Idtp_core dtp_core/tests/sanitize_driver.c dtp_core/{frame,aead,flowio,reasm,ham,util,noise,udpio}.c \
    -lcrypto -o build/sanitize_driver
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    build/sanitize_driver

  step "fuzz the decoders (atheris)"
  # A fixed seed, so that a run is reproducible (a failure here is the code's, not the
  # draw's); DTP_FUZZ_SEED=0 draws one, and longer runs explore more:
  #   .venv/bin/python fuzz/fuzz_open_frames.py -runs=2000000
  for target in fuzz/fuzz_*.py; do
    $PYBIN/python "$target" -runs=30000 -seed="${DTP_FUZZ_SEED:-20261122}" \
      -print_final_stats=0 2>&1 | tail -n 2
  done

  step "benchmark bodies (run once each, no timing)"
  $check_limit $PYBIN/python -m pytest -q -p no:cacheprovider bench

  step "the wheel (scripts/wheel.sh): installed in fresh virtualenvs, the demo run from it"
  # (once, here: the suite's parts leave the tests marked wheel out)
  $check_limit $PYBIN/python -m pytest -q -p no:cacheprovider -m wheel tests/project/test_wheel.py
}

step "sanitizers, fuzzers, benchmark bodies and the wheel; beside them the suite on both core backends, the C core (the asyncio tests of tests/uvloop.txt's folders on uvloop) and pure Python (DTP_PUREPYTHON=1, asyncio's loop), in $((2 * ${DTP_TEST_PARTS:-3})) processes"
# Each backend's test files in parts of about equal time (scripts/split_tests.py, from
# the times in tests/durations.txt; DTP_TEST_PARTS, default 3), all parts side by side:
# much of the suite waits (sockets, timers, other processes), so together they take
# little longer than the longest one. Each writes its own log under build/, shown once
# all ended, and a JUnit report (build/junit-*.xml: `python scripts/split_tests.py
# --record build/junit-*.xml` refreshes the times); any failing fails the run. The files
# in tests/core_independent.txt never reach the core: the C backend runs them (and checks
# that), the pure-Python one leaves them out. The C backend's parts run the asyncio tests
# of the folders tests/uvloop.txt lists on uvloop (DTP_TEST_LOOP=uvloop-listed,
# tests/conftest.py), the pure-Python parts on asyncio's loop: each of those tests runs
# on both loops, the suite taking no longer.
mkdir -p build
parts=${DTP_TEST_PARTS:-3}
mapfile -t c_chunks < <($PYBIN/python scripts/split_tests.py "$parts")
mapfile -t pure_chunks < <($PYBIN/python scripts/split_tests.py "$parts" --core)
for chunk in "${c_chunks[@]}" "${pure_chunks[@]}"; do
  [ -n "$chunk" ] || { echo "scripts/split_tests.py made an empty part: fewer test files than DTP_TEST_PARTS=$parts?" >&2; exit 2; }
done
[ "${#c_chunks[@]}" -eq "$parts" ] && [ "${#pure_chunks[@]}" -eq "$parts" ] \
  || { echo "scripts/split_tests.py did not split the test files in $parts parts" >&2; exit 2; }
# the CPUs' busy and idle ticks (/proc/stat's first line), read again once the parts end:
# how busy the machine was says whether more parts would end sooner (it waited) or not
cpu_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat; }
read -r busy_before idle_before < <(cpu_ticks)
parts_started=$SECONDS
pids=()
logs=()
# (the checks job in a process group of its own: an interrupted run ends its children too)
trap 'kill "${pids[@]}" ${heartbeat_pid:-} 2>/dev/null; [ -z "${checks_pid:-}" ] || kill -- "-$checks_pid" 2>/dev/null || true' EXIT INT TERM
set -m
(set -e; checks) >build/checks.log 2>&1 &
checks_pid=$!
set +m
# A part still running after DTP_PART_LIMIT (default 70 minutes, inside CI's 90) is
# interrupted as Ctrl-C would: pytest reports what it had done and the test it was in,
# and the run fails saying so, rather than being cut off by CI's limit with no word.
limit="timeout --signal=INT --kill-after=60 ${DTP_PART_LIMIT:-70m}"
for backend in c pure; do
  for ((part = 0; part < parts; part++)); do
    log="build/suite-$backend-$part.log"
    logs+=("$log")
    junit="--junitxml=build/junit-$backend-$part.xml"
    # shellcheck disable=SC2086  # (a part is a list of file names, without spaces)
    if [ "$backend" = pure ]; then
      DTP_PUREPYTHON=1 $limit $PYBIN/python -m pytest -q -p no:cacheprovider -m "not wheel" \
        "$junit" ${pure_chunks[part]} >"$log" 2>&1 &
    else
      DTP_TEST_LOOP=uvloop-listed $limit $PYBIN/python -m pytest -q -p no:cacheprovider \
        -m "not wheel" "$junit" ${c_chunks[part]} >"$log" 2>&1 &
    fi
    pids+=($!)
  done
done
# A line every five minutes while the parts run: how far each has got (the last
# percentage its log shows) and the checks' current step, so that the output of a run
# stopped from outside still says where it was.
heartbeat() {
  local line log pct
  while sleep "${DTP_TEST_HEARTBEAT:-300}"; do
    line="[$(( ($(date +%s) - parts_started_at) / 60 )) min]"
    for log in "${logs[@]}"; do
      pct=$(grep -ao '\[ *[0-9]*%\]' "$log" 2>/dev/null | tail -n1 | tr -d '[] ')
      line+=" ${log#build/suite-}"
      line="${line%.log} ${pct:-0%}"
    done
    echo "$line; checks: $(grep -a '== ' build/checks.log | tail -n1 | sed 's/.*== //; s/\x1b\[0m//')"
  done
}
parts_started_at=$(date +%s)
heartbeat &
heartbeat_pid=$!
status=0
checks_status=0
wait "$checks_pid" || checks_status=1
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
kill "$heartbeat_pid" 2>/dev/null || true
trap - EXIT INT TERM
read -r busy_after idle_after < <(cpu_ticks)
cpu_busy=$(( 100 * (busy_after - busy_before) / (busy_after - busy_before + idle_after - idle_before + 1) ))
parts_took=$((SECONDS - parts_started))
# the timing probe, now that the machine is quiet: the wall-clock figures of the tests
# that check only bounds load cannot break beside the rest of the suite
# (scripts/timing_probe.sh, tests/support/timing.py)
probe_status=0
bash scripts/timing_probe.sh >build/timing-probe.log 2>&1 || probe_status=1
printf '\n-- build/checks.log --\n'
cat build/checks.log
printf '\n-- build/timing-probe.log --\n'
cat build/timing-probe.log
for log in "${logs[@]}"; do
  printf '\n-- %s --\n' "$log"
  cat "$log"
done
printf '\n(the pure-Python core ran every test file but the %s in tests/core_independent.txt, which\nnever reach the core: the C backend ran them, checking that)\n' \
  "$(grep -c '^tests/' tests/core_independent.txt)"
printf '(the parts and the checks took %d min %d s, the %d CPUs %d%% busy meanwhile)\n' \
  "$((parts_took / 60))" "$((parts_took % 60))" "$(nproc)" "$cpu_busy"
# the last line: the whole run's total (every part's pytest summary added up)
$PYBIN/python - "$status" "$checks_status" "$probe_status" "$((SECONDS - started))" "${logs[@]}" <<'PY'
import re, sys
status, checks, probe, seconds = map(int, sys.argv[1:5])
logs = sys.argv[5:]
totals: dict[str, int] = {}
for log in logs:
    lines = [line for line in open(log, errors="replace").read().splitlines() if line.strip()]
    # pytest's summary line: the last one, unless something printed after it (an
    # unraisable warning at the process's exit)
    summaries = [line for line in lines if re.search(r" in [0-9.]+s( \(|$)", line)]
    summary = summaries[-1] if summaries else ""
    for count, what in re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)", summary):
        what = "errors" if what.startswith("error") else what
        totals[what] = totals.get(what, 0) + int(count)
shown = ", ".join(f"{n} {what}" for what, n in totals.items()) or "no test summary found"
print(f"TOTAL (both backends, {len(logs)} parts): {shown}; sanitizers, fuzzers, "
      f"benchmark bodies and the wheel {'passed' if checks == 0 else 'FAILED'}; the timing probe "
      f"{'passed' if probe == 0 else 'FAILED'}; the whole run took "
      f"{seconds // 60} min {seconds % 60} s; {'PASS' if status == checks == probe == 0 else 'FAIL'}")
PY
[ "$status" -eq 0 ] && [ "$checks_status" -eq 0 ] && [ "$probe_status" -eq 0 ]
