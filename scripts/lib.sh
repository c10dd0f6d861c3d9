# shellcheck shell=bash
# Shared by scripts/up.sh and scripts/doctest.sh (sourced, never run): a
# `treecache up` in the background, waited for, and stopped on any exit.
#
#   tree_up BIN ARGS...  runs `BIN up ARGS...` with its output in $tree_out
#                        and returns once it prints "Ctrl-C stops the tree."
#                        (every node has answered /health), at most two
#                        minutes; otherwise prints the output and exits 1.
#                        Sets the EXIT trap to tree_stop.
#   tree_stop            SIGTERM to `up`, which stops its nodes and its
#                        ZooKeeper; waits for it; removes the output.
#
# `up` prints one line per node: `node ID URL ROLE depth D parent P`.

tree_out=""
tree_pid=""

tree_stop() {
    if [ -n "$tree_pid" ] && kill -0 "$tree_pid" 2>/dev/null; then
        kill -TERM "$tree_pid" 2>/dev/null || true
        wait "$tree_pid" 2>/dev/null || true
    fi
    if [ -n "$tree_out" ]; then
        rm -f "$tree_out"
    fi
}

tree_up() {
    local bin=$1
    shift
    tree_out=$(mktemp)
    trap tree_stop EXIT
    trap 'exit 130' INT TERM
    "$bin" up "$@" </dev/null >"$tree_out" 2>&1 &
    tree_pid=$!
    for _ in $(seq 1 1200); do
        grep -q '^Ctrl-C' "$tree_out" && return 0
        if ! kill -0 "$tree_pid" 2>/dev/null; then
            cat "$tree_out"
            echo "treecache up exited before the tree was up" >&2
            exit 1
        fi
        sleep 0.1
    done
    cat "$tree_out"
    echo "treecache up did not come up within 2 minutes" >&2
    exit 1
}
