#!/bin/sh
# fuzz.sh runs every `go test -fuzz` target in the tree for FUZZTIME each,
# one after another (go test fuzzes one target per invocation).
#
#   FUZZTIME=20s      time per target (a duration, or Nx iterations)
#   FUZZ=regexp       only targets whose "package/FuzzName" matches
#   FUZZ_PARALLEL=n   fuzzing workers per target (default: GOMAXPROCS)
#   FUZZMINIMIZETIME  time to minimize a new input (default 5s; go's 60s
#                     stalls targets whose coverage is not deterministic,
#                     such as the scheduler's and the API's)
#
# A failing target leaves its crasher in <pkg>/testdata/fuzz/<Target>/;
# keep it there (it becomes a seed that `go test` runs) and fix the code.
# The script goes on with the other targets and fails at the end.
set -eu
cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-20s}
FUZZ=${FUZZ:-.}
FUZZMINIMIZETIME=${FUZZMINIMIZETIME:-5s}
par=""
[ -n "${FUZZ_PARALLEL:-}" ] && par="-parallel ${FUZZ_PARALLEL}"

targets=$(grep -rl --include='*_test.go' -E '^func Fuzz[A-Za-z0-9_]*\(' . |
	while read -r f; do
		d=$(dirname "$f")
		grep -oE '^func Fuzz[A-Za-z0-9_]*' "$f" | sed "s|^func |${d#./}/|"
	done | sort -u | grep -E -- "$FUZZ" || true)
[ -n "$targets" ] || { echo "fuzz.sh: no target matches $FUZZ" >&2; exit 1; }

failed=""
n=0
for t in $targets; do
	pkg=./${t%/*}
	name=${t##*/}
	n=$((n + 1))
	echo "=== fuzz $pkg $name ($FUZZTIME)"
	# shellcheck disable=SC2086
	if ! $GO test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$FUZZMINIMIZETIME" $par "$pkg"; then
		failed="$failed $pkg:$name"
	fi
done
if [ -n "$failed" ]; then
	echo "fuzz.sh: FAILED:$failed (crashers under testdata/fuzz/)" >&2
	exit 1
fi
echo "fuzz.sh: $n targets, no failure"
