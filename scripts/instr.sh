#!/usr/bin/env bash
# Instructions per request of the in-process stacks (BENCHMARKS.md §1):
# the binary of `cargo bench --features redis --no-run --bench overhead`
# run under callgrind for 5 000 and for 105 000 requests of one variant;
# (I(105000) - I(5000)) / 100000 leaves out the set-up.
#
#   scripts/instr.sh                          # ours, ours3, governor_headers
#   scripts/instr.sh bare tenancy ours        # any variants of benches/overhead.rs
#
# Needs valgrind. A few seconds per variant once the bench is built.
# `scripts/bench.sh` (step 1b) runs it for every variant of §1.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cargo bench --features redis --no-run --bench overhead --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
count() {
    OVERHEAD_INSTR="$1:$2" valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" 2>&1 |
        awk '/Collected/ { gsub(",", "", $4); print $4 }'
}
for v in "${@:-ours ours3 governor_headers}"; do
    for variant in $v; do
        echo "$variant $(( ($(count "$variant" 105000) - $(count "$variant" 5000)) / 100000 ))"
    done
done
