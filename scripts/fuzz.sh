#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for a while each.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     # default: 60 s, every target
#   FUZZ_CMIN=1 scripts/fuzz.sh 300           # then minimize each corpus
#   FUZZ_REQUIRED=1 scripts/fuzz.sh           # fail (not skip) without cargo-fuzz/nightly
#   FUZZ_SCRATCH=1 scripts/fuzz.sh 10         # on throw-away copies of the corpora
#                                             # (scripts/test.sh: the repository stays clean)
#   FUZZ_RUNS=10000000 FUZZ_SANITIZER=none FUZZ_MAX_LEN=4096 scripts/fuzz.sh 7200
#                                             # the long run: 10^7 inputs per target (the
#                                             # seconds are then only a cap), see fuzz/README.md
#
# Needs a nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
# `cargo install cargo-fuzz`). Without them it says so and exits 0, unless
# FUZZ_REQUIRED=1. Corpora live in fuzz/corpus/<target>/, crashes in
# fuzz/artifacts/<target>/. Exits non-zero when a target finds a crash.
set -uo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
[ $# -gt 0 ] && shift
toolchain="${FUZZ_TOOLCHAIN:-nightly}"
sanitizer="${FUZZ_SANITIZER:-address}"   # `none`: about 3x faster; the crate forbids unsafe code
max_len="${FUZZ_MAX_LEN:-65536}"
runs_arg=()
[ -n "${FUZZ_RUNS:-}" ] && runs_arg=(-runs="$FUZZ_RUNS")

missing=""
cargo fuzz --version >/dev/null 2>&1 || missing="cargo-fuzz (cargo install cargo-fuzz)"
rustup run "$toolchain" rustc --version >/dev/null 2>&1 || missing="${missing:+$missing, }the $toolchain toolchain (rustup toolchain install $toolchain)"
if [ -n "$missing" ]; then
    echo "fuzz.sh: skipped: missing $missing" >&2
    [ "${FUZZ_REQUIRED:-0}" = 1 ] && exit 1
    exit 0
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo "+$toolchain" fuzz list)
fi

cargo "+$toolchain" fuzz build -s "$sanitizer" || exit 1

scratch=""
if [ "${FUZZ_SCRATCH:-0}" = 1 ]; then
    scratch="$(mktemp -d)"
    trap 'rm -rf "$scratch"' EXIT
fi

status=0
summary=()
mkdir -p fuzz/logs
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    corpus="fuzz/corpus/$t"
    if [ -n "$scratch" ]; then
        cp -r "fuzz/corpus/$t" "$scratch/$t"
        corpus="$scratch/$t"
    fi
    log="fuzz/logs/$t.log"
    echo "== $t: ${FUZZ_RUNS:+$FUZZ_RUNS inputs, at most }${secs}s" >&2
    cargo "+$toolchain" fuzz run -s "$sanitizer" "$t" "$corpus" -- "${runs_arg[@]}" \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len="$max_len" -print_final_stats=1 \
        >"$log" 2>&1
    rc=$?
    runs=$(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 | grep -oE '[0-9]+ runs in [0-9]+' || true)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 || true)
    if [ $rc -ne 0 ]; then
        status=1
        summary+=("$t: CRASH (exit $rc), see $log and fuzz/artifacts/$t/")
    else
        summary+=("$t: ok, ${runs:-? runs} s, ${cov:-cov ?}, corpus $(find "$corpus" -type f | wc -l) files")
    fi
    if [ "${FUZZ_CMIN:-0}" = 1 ] && [ $rc -eq 0 ]; then
        cargo "+$toolchain" fuzz cmin "$t" >>"$log" 2>&1 || true
    fi
done

printf '%s\n' "${summary[@]}"
exit $status
