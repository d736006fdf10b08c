#!/usr/bin/env bash
# CI: every fuzz target briefly, about a minute of fuzzing in all (the build comes on top).
# Fails on any finding. FUZZ_CI_SECONDS changes the total.
set -euo pipefail
cd "$(dirname "$0")/.."
# As many targets as fuzz/run.sh lists.
targets=$(sed -n 's/^TARGETS=(\(.*\))$/\1/p' fuzz/run.sh | wc -w)
total=${FUZZ_CI_SECONDS:-60}
each=$(( total / targets ))
[ "$each" -ge 1 ] || each=1
exec fuzz/run.sh all "$each"
