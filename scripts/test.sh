#!/usr/bin/env bash
# The whole test suite, the README's second command and what CI runs:
# installs what the tests need, then format check, clippy, and every test
# (unit, in-process routes, real ZooKeeper + real node processes).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --all-targets --locked
