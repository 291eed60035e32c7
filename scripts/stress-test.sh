#!/usr/bin/env bash
# Runs the whole `cargo test --all-features --no-fail-fast` N times while busy loops keep
# every core loaded (a busy CI machine), and prints pass/fail per run.
#
#   scripts/stress-test.sh 10        # 10 runs; exit 0 only if all passed
#   STRESS_LOOPS=4 scripts/stress-test.sh 3   # 4 busy loops instead of one per core
#
# Logs of each run: target/stress/run-<i>.log. The busy loops are this
# script's own children and end with it.
set -uo pipefail
cd "$(dirname "$0")/.."

runs="${1:-10}"
loops="${STRESS_LOOPS:-$(nproc)}"
mkdir -p target/stress

echo "==> building the tests once (not under load)"
cargo test --all-features --no-run -q || exit 1

busy=()
for _ in $(seq "$loops"); do
    ( while :; do :; done ) &
    busy+=($!)
done
trap 'kill "${busy[@]}" 2>/dev/null' EXIT
echo "==> $loops busy loops running (pids ${busy[*]}); $runs runs of cargo test --all-features"

passed=0
for i in $(seq "$runs"); do
    log="target/stress/run-$i.log"
    started=$(date +%s)
    if cargo test --all-features --no-fail-fast >"$log" 2>&1; then
        result=pass
        passed=$((passed + 1))
    else
        result=FAIL
    fi
    echo "run $i/$runs: $result in $(($(date +%s) - started)) s ($log)"
    if [ "$result" = FAIL ]; then
        grep -E "^test .* FAILED$|panicked at" "$log" | head -10 | sed 's/^/    /'
    fi
done
echo "stress: $passed of $runs runs passed, $loops busy loops on $(nproc) cores, $(date -u +%FT%TZ)"
[ "$passed" -eq "$runs" ]
