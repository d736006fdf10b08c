#!/usr/bin/env bash
# Runs a fuzz target for a fixed time, or every target one after another:
#
#   fuzz/run.sh TARGET SECONDS [libFuzzer flags...]
#   fuzz/run.sh all SECONDS [libFuzzer flags...]
#
# Each target runs on a scratch copy of its committed seeds (fuzz/scratch/TARGET, not
# committed; it keeps growing from run to run, `rm -rf fuzz/scratch` starts over), one
# process at a time. A crash, panic, timeout or out-of-memory leaves its input in
# fuzz/artifacts/TARGET/ and makes the script fail once every target asked for has run.
# The last line per target is a summary: executions, executions per second, coverage,
# corpus size and the result; logs are in fuzz/scratch/TARGET.log.
#
# FUZZ_SANITIZER (default none): the code fuzzed is safe Rust, so AddressSanitizer finds
# nothing more and halves the speed; panics and overflow checks (on: cargo fuzz builds with
# debug assertions) are what find bugs here. FUZZ_JOBS is not offered on purpose: one
# process at a time.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(framed transparent ttms ddp modbus_tcp dlt645 rtu points settings)
usage() {
  echo "usage: fuzz/run.sh TARGET|all SECONDS [libFuzzer flags...]" >&2
  echo "targets: ${TARGETS[*]}" >&2
  exit 2
}
[ $# -ge 2 ] || usage
target=$1
seconds=$2
shift 2
[[ $seconds =~ ^[0-9]+$ ]] || usage
if [ "$target" = all ]; then
  targets=("${TARGETS[@]}")
else
  [[ " ${TARGETS[*]} " == *" $target "* ]] || usage
  targets=("$target")
fi

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
sanitizer=${FUZZ_SANITIZER:-none}

echo "== building ${targets[*]}"
if [ "$target" = all ]; then
  cargo +nightly fuzz build --sanitizer "$sanitizer"
else
  cargo +nightly fuzz build --sanitizer "$sanitizer" "$target"
fi

failed=()
summaries=()
for t in "${targets[@]}"; do
  scratch=fuzz/scratch/$t
  mkdir -p "$scratch"
  cp -n fuzz/corpus/"$t"/* "$scratch"/ 2>/dev/null || true
  log=fuzz/scratch/$t.log
  echo "== $t for ${seconds}s (corpus $scratch, log $log)"
  status=0
  # -timeout: an input that takes 10 s is a finding; -max_len: room for the longest
  # frames (DDP 1040 bytes, $TTMS 8 KiB) and settings files.
  cargo +nightly fuzz run --sanitizer "$sanitizer" "$t" "$scratch" -- \
    -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -max_len=8192 \
    "$@" >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([^ ]*\).*/\1/p' <<<"$last")
  result=ok
  if [ "$status" -ne 0 ]; then
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    result="FAILED (exit $status${artifact:+, $artifact})"
    failed+=("$t")
    grep -m1 -E "panicked at|ERROR: libFuzzer" "$log" || tail -20 "$log"
  fi
  summary="$t: ${seconds}s, ${execs:-?} execs, ${rate:-?} execs/s, cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}, $result"
  echo "$summary"
  summaries+=("$summary")
done

echo "== summary"
printf '%s\n' "${summaries[@]}"
if [ ${#failed[@]} -ne 0 ]; then
  echo "== findings in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
