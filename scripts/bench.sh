#!/usr/bin/env bash
# Every benchmark of BENCHMARKS.md, in one command, on a fresh machine:
# installs what it needs (redis-server/redis-tools, wrk, valgrind, DejaVu
# fonts from Debian packages; rate-limiter-flexible and ioredis from npm into
# benches/node), builds the benches once, runs them one after the other and
# writes target/bench-results/*.{csv,json,txt} and docs/bench/*.png.
#
#   bash scripts/bench.sh
#
# Takes about 6 minutes on a 2-core machine once the build is warm (plus
# about 5 for a cold release build). Benchmarks are noisy when the machine is
# busy: the load average is recorded next to every result.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

packages=()
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || packages+=(redis-tools)
command -v wrk >/dev/null 2>&1 || packages+=(wrk)
command -v valgrind >/dev/null 2>&1 || packages+=(valgrind)
command -v node >/dev/null 2>&1 || packages+=(nodejs npm)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || packages+=(fonts-dejavu-core)
if [ ${#packages[@]} -gt 0 ]; then
  echo "==> installing ${packages[*]} (Debian packages)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi
if [ ! -d benches/node/node_modules/rate-limiter-flexible ] || [ ! -d benches/node/node_modules/ioredis ]; then
  echo "==> npm install (benches/node: rate-limiter-flexible, ioredis)"
  (cd benches/node && npm install --no-audit --no-fund --loglevel=error)
fi

out=target/bench-results
mkdir -p "$out" docs/bench
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "kernel: $(uname -r)"
  echo "rustc: $(rustc --version)"
  echo "redis-server: $(redis-server --version)"
  echo "wrk: $(wrk -v 2>&1 | head -1)"
  echo "node: $(node --version)"
  echo "rate-limiter-flexible: $(node -p "require('./benches/node/node_modules/rate-limiter-flexible/package.json').version")"
  echo "ioredis: $(node -p "require('./benches/node/node_modules/ioredis/package.json').version")"
  echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$out/machine.txt"
cat "$out/machine.txt"

echo "==> building the benches (release) and the demo"
cargo bench --features redis --no-run
cargo build --release --features redis --example axum_server

step() {
  echo
  echo "==> $* (load $(cut -d' ' -f1 /proc/loadavg))"
}

step "1. in-process overhead (criterion)"
cargo bench --features redis --bench overhead

step "1b. instructions per request (callgrind)"
echo "variant,instructions_per_request" > "$out/instructions.csv"
scripts/instr.sh bare tenancy ours ours3 governor governor_headers | while read -r variant per; do
  echo "$variant,$per" >> "$out/instructions.csv"
  echo "$variant: $per instructions per request"
done

step "2. MemoryStore scaling"
cargo bench --features redis --bench scaling

step "3. memory per key"
cargo bench --features redis --bench memory

step "4. Redis: RedisStore vs redis-benchmark vs rate-limiter-flexible"
cargo bench --features redis --bench redis

step "5. accuracy"
cargo bench --features redis --bench accuracy

step "6. end to end (wrk)"
cargo bench --features redis --bench e2e

step "plots"
cargo bench --features redis --bench plot

echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/machine.txt"
echo
echo "==> done in $(( SECONDS - started )) s: $out/ and docs/bench/"
ls -1 "$out" docs/bench
