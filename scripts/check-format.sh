#!/usr/bin/env bash
# Fails when clang-format (.clang-format) would change any C++ line changed since the
# commit named in .ci/format-base, and prints the change it wants. Only changed lines are
# checked: the tree is not reformatted as a whole. Lines changed in the work tree and not
# committed yet count too; new files count once they are added to git (git add -N).
# Fix: apply the printed diff, or `git diff -U0 $(cat .ci/format-base) | clang-format-diff-14 -p1 -i`.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format-diff-14 >/dev/null || { echo "check-format: clang-format-diff-14 missing (apt-get install clang-format)" >&2; exit 2; }
base=$(tr -d '[:space:]' < .ci/format-base)
git cat-file -e "$base^{commit}" 2>/dev/null ||
  { echo "check-format: .ci/format-base names '$base', which is not a commit of this repository" >&2; exit 2; }
want=$(git diff -U0 --no-color "$base" -- '*.h' '*.cc' | clang-format-diff-14 -p1 -binary clang-format-14)
if [ -n "$want" ]; then
  printf '%s\n' "$want"
  echo "check-format: the lines above, changed since ${base:0:12} (.ci/format-base), are not formatted as .clang-format says" >&2
  exit 1
fi
echo "check-format: every C++ line changed since ${base:0:12} is formatted"
