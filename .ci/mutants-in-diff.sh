#!/usr/bin/env bash
# Mutation testing of the lines the last commit changed, inside the scope of
# .cargo/mutants.toml (docs/mutants.md). Fails when a mutant of a changed line survives: the
# change needs a test that notices it being wrong, or a reviewed entry in exclude_re.
#   MUTANTS_BASE=REV   compare against REV instead of HEAD~1
#   MUTANTS_MAX=N      test at most N mutants (a deterministic shard of them; default 24, about
#                      12 minutes on 2 cores): a large merge is sampled, not tested whole
set -euo pipefail
cd "$(dirname "$0")/.."
base=${MUTANTS_BASE:-HEAD~1}
max=${MUTANTS_MAX:-24}
if ! git rev-parse -q --verify "$base^{commit}" >/dev/null; then
  echo "mutants: no $base to compare with; nothing to test"
  exit 0
fi
command -v cargo-mutants >/dev/null 2>&1 || cargo install cargo-mutants --version 27.1.0 --locked
diff=$(mktemp)
trap 'rm -f "$diff"' EXIT
git diff "$base" HEAD -- src >"$diff"
if [ ! -s "$diff" ]; then
  echo "mutants: $base..HEAD changes no source file"
  exit 0
fi
n=$(cargo mutants --in-diff "$diff" --list | wc -l)
echo "mutants: $n mutants on the lines $base..HEAD changed inside the scope"
[ "$n" -gt 0 ] || exit 0
args=(--in-diff "$diff" --in-place --no-shuffle)
shards=$(( (n + max - 1) / max ))
if [ "$shards" -gt 1 ]; then
  echo "mutants: more than MUTANTS_MAX=$max: testing shard 0/$shards (every ${shards}th mutant)"
  args+=(--shard "0/$shards")
fi
# Exit codes of cargo-mutants: 0 all caught, 2 some missed, 3 some timed out, 4 the tests fail
# without any mutation.
rc=0
cargo mutants "${args[@]}" || rc=$?
case $rc in
  0) echo "mutants: every mutant caught" ;;
  3) echo "mutants: some mutants timed out (counted as caught: the tests did not pass)"; rc=0 ;;
  2) echo "mutants: MISSED mutants above (mutants.out/missed.txt): add a test or a reviewed exclude_re entry" ;;
esac
exit "$rc"
