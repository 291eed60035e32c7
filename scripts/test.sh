#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need
# (redis-server and redis-cli from Debian packages, rustfmt and clippy) when
# missing, then runs formatting, lints, every test and the docs build.
# Tests start their own redis-server processes on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "==> installing redis-server (Debian package)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools
fi
# PostgreSQL server binaries (initdb, postgres) for tests/postgres_*.rs, which
# start their own cluster on a free port (never the one on 5432).
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "==> installing postgresql (Debian package)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql
fi
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    rustup component add "$component"
  fi
done

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy -D warnings"
cargo clippy --all-targets --all-features -- -D warnings
echo "==> cargo build --no-default-features"
cargo build --no-default-features --lib
echo "==> cargo test --all-features"
cargo test --all-features
echo "==> fuzz: every target for 10 s on scratch copies of its corpus (needs nightly + cargo-fuzz)"
FUZZ_SCRATCH=1 scripts/fuzz.sh 10
echo "==> cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features
echo "==> all checks passed"
