#!/usr/bin/env bash
# Formatting check: every line of C (*.c, *.h) changed since a base commit must be as
# clang-format (repo .clang-format) would write it. Only changed lines are checked
# (clang-format --lines), so untouched legacy code never fails, however it is formatted.
#
#   bash .ci/check-format.sh            # base chosen as below
#   FL_FORMAT_BASE=<rev> bash .ci/check-format.sh
#
# What "changed" means. CI runs on a fresh clone, where there is no local branch point and often
# no origin/main distinct from HEAD (a run on main itself: the merge-base is HEAD, so "changed
# relative to main" would be nothing). So the base is, in order:
#   1. FL_FORMAT_BASE, when set;
#   2. the recorded baseline .ci/format-baseline, when it is an ancestor of HEAD: every line
#      changed since then is checked, on a branch and on main alike (a ratchet: code merged
#      after the baseline stays formatted; move the baseline forward only to a commit that passes);
#   3. a branch that forked before the baseline: its merge-base with origin/main (or main);
#   4. else the last commit (HEAD~1).
# The diff is taken against the working tree, so uncommitted edits are checked too, and
# untracked C files are checked whole. A shallow clone that lacks the baseline is an error, not
# a silent pass: fetch more history (git fetch --unshallow) or set FL_FORMAT_BASE.
set -euo pipefail
cd "$(dirname "$0")/.."

CLANG_FORMAT=${CLANG_FORMAT:-clang-format}
command -v "$CLANG_FORMAT" >/dev/null || {
  echo "check-format: $CLANG_FORMAT not found (deploy/install-deps.sh installs it)" >&2
  exit 2
}

have() { git rev-parse -q --verify "$1^{commit}" >/dev/null 2>&1; }

base=${FL_FORMAT_BASE:-}
why="FL_FORMAT_BASE"
if [ -z "$base" ]; then
  baseline=$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' .ci/format-baseline | head -n 1 | tr -d '[:space:]')
  if have "$baseline" && git merge-base --is-ancestor "$baseline" HEAD; then
    base=$baseline
    why="the recorded baseline (.ci/format-baseline)"
  elif ! have "$baseline" && [ "$(git rev-parse --is-shallow-repository)" = true ]; then
    echo "check-format: shallow clone without the baseline $baseline:" \
         "git fetch --unshallow, or set FL_FORMAT_BASE" >&2
    exit 2
  else
    for ref in origin/main main; do
      if have "$ref"; then
        base=$(git merge-base HEAD "$ref" || true)
        why="the merge-base with $ref"
        [ -n "$base" ] && break
      fi
    done
    if [ -z "$base" ] || [ "$(git rev-parse "$base")" = "$(git rev-parse HEAD)" ]; then
      have HEAD~1 || { echo "check-format: no parent commit to compare with" >&2; exit 2; }
      base=HEAD~1
      why="the last commit"
    fi
  fi
fi
have "$base" || { echo "check-format: unknown base $base" >&2; exit 2; }
echo "check-format: C lines changed since $(git rev-parse --short "$base") ($why)"

# file -> clang-format --lines arguments, from the zero-context diff's new-side hunks.
declare -A lines=()
file=
while IFS= read -r l; do
  case $l in
    '+++ b/'*) file=${l#+++ b/} ;;
    '+++ '*) file= ;; # deleted
    '@@ '*)
      [ -n "$file" ] || continue
      hunk=${l#*+}
      hunk=${hunk%% *}
      start=${hunk%,*}
      count=1
      [ "$hunk" != "$start" ] && count=${hunk#*,}
      [ "$count" -gt 0 ] || continue # lines only removed
      lines[$file]+=" --lines=$start:$((start + count - 1))"
      ;;
  esac
done < <(git diff -U0 --no-color --no-ext-diff -M "$base" -- '*.c' '*.h')
while IFS= read -r f; do
  lines[$f]=" " # new file: all of it
done < <(git ls-files --others --exclude-standard -- '*.c' '*.h')

status=0
n=0
for f in "${!lines[@]}"; do
  [ -f "$f" ] || continue
  n=$((n + 1))
  # shellcheck disable=SC2086
  "$CLANG_FORMAT" --dry-run --Werror ${lines[$f]} "$f" || status=1
done
if [ $status -ne 0 ]; then
  echo "check-format: FAILED: run clang-format -i on the files above (or" \
       "git clang-format $(git rev-parse --short "$base") for the changed lines only)" >&2
else
  echo "check-format: $n changed C files, all changed lines formatted"
fi
exit $status
