#!/usr/bin/env bash
# Reliability runs (issue 8; results in RELIABILITY.md): multi-instance
# exactness, faults under load, leaks, input bounds — against redis-server
# and Redis Cluster processes the tests start on free loopback ports.
#
#   scripts/reliability.sh             # the long run (TT_LONG=1): 100 000-request
#                                      # leak runs, repeated faults, longer windows
#   TT_LONG=0 scripts/reliability.sh   # the CI-sized run (the same tests
#                                      # `cargo test --all-features` runs), plus the
#                                      # demo-process tests
#   scripts/reliability.sh reliability_bounds reliability_leaks   # only these files
#
# Steps: builds the demo (`cargo build --example axum_server --all-features`,
# which includes the `redis` feature), runs tests/reliability_{multi,faults,
# leaks,bounds}.rs with --nocapture, then the #[ignore]d demo-process tests
# of tests/reliability_processes.rs (4 real `axum_server` processes). Tests
# run one at a time (--test-threads=1) so that timings are not shared.
#
# Every figure line starts with FIGURES; the full log is kept in
# target/reliability/<UTC time>.log and the figures in
# target/reliability/<UTC time>.figures. Needs redis-server and redis-cli
# (scripts/test.sh installs them). Exits non-zero if any test failed.
set -uo pipefail
cd "$(dirname "$0")/.."

export TT_LONG="${TT_LONG:-1}"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
dir=target/reliability
mkdir -p "$dir"
log="$dir/$stamp.log"
figures="$dir/$stamp.figures"

for bin in redis-server redis-cli; do
    command -v "$bin" >/dev/null || { echo "reliability.sh: $bin not found (apt-get install redis-server)" >&2; exit 1; }
done

{
    echo "== reliability run $stamp, TT_LONG=$TT_LONG"
    echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(redis-server --version | cut -d' ' -f1-3)"
} | tee "$log"

echo "== cargo build --example axum_server --all-features" | tee -a "$log"
cargo build --example axum_server --all-features 2>&1 | tail -n 2 | tee -a "$log" || exit 1
export TT_DEMO_BIN="$PWD/target/debug/examples/axum_server"

status=0
run() {
    echo "== $*" | tee -a "$log"
    local started=$SECONDS
    "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "== exit $rc after $((SECONDS - started)) s" | tee -a "$log"
    [ "$rc" -eq 0 ] || status=1
}

if [ $# -gt 0 ]; then
    tests=("$@")
else
    tests=(reliability_multi reliability_faults reliability_leaks reliability_bounds reliability_processes)
fi
for t in "${tests[@]}"; do
    if [ "$t" = reliability_processes ]; then
        # #[ignore]d in `cargo test`: they need the demo binary built above.
        run cargo test --all-features --test "$t" -- --ignored --nocapture --test-threads=1
    else
        run cargo test --all-features --test "$t" -- --nocapture --test-threads=1
    fi
done

grep -E 'FIGURES|^== ' "$log" | sed 's/^.*FIGURES /FIGURES /' > "$figures"
echo
echo "figures: $figures   log: $log"
[ "$status" -eq 0 ] && echo "reliability.sh: all passed" || echo "reliability.sh: FAILURES (see $log)"
exit $status
