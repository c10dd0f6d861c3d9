#!/usr/bin/env bash
# The whole test suite, the README's second command and what CI runs
# (.ci/run): installs what the tests need (scripts/install-test-deps.sh),
# then the format check, clippy with warnings as errors, every test (unit,
# in-process routes, real ZooKeeper + real node processes), and the doc
# tests against a local tree (scripts/doctest.sh).
# Runs unattended (CI=true, no stdin); any failure or missing tool exits
# non-zero. The last line is cargo's own doc-test summary.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh </dev/null

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test --all-targets"
cargo test --all-targets --locked --no-fail-fast </dev/null
echo "== doc tests against a local tree"
exec scripts/doctest.sh </dev/null
