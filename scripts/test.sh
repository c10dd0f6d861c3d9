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
cargo test --all-targets --locked --no-run
# The tests themselves take 10 to 25 minutes on a 2-core machine. A test that
# hangs (a node that no longer refuses a flag and waits for its ZooKeeper)
# must fail the run with its name on screen, not eat CI's whole 90 minutes:
# libtest names a test running over 60 s, and this bound stops the rest.
TEST_LIMIT="${TREECACHE_TEST_LIMIT:-50m}"
status=0
timeout --kill-after=30s "$TEST_LIMIT" cargo test --all-targets --locked --no-fail-fast </dev/null || status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "scripts/test.sh: the tests ran past $TEST_LIMIT (TREECACHE_TEST_LIMIT); the test named as running for over 60 seconds above is the one that hangs" >&2
fi
[ "$status" -eq 0 ] || exit "$status"
echo "== doc tests against a local tree"
exec scripts/doctest.sh </dev/null
