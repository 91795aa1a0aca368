#!/usr/bin/env bash
# Runs clang-tidy-14 (.clang-tidy: bugprone-*, concurrency-*) over every src/*/*.cc, nproc
# at a time, with the release build's build/compile_commands.json (scripts/build.sh
# release makes it). Fails on any warning and prints it. Usage: scripts/tidy.sh [FILE...]
set -euo pipefail
cd "$(dirname "$0")/.."
tidy=clang-tidy-14
command -v "$tidy" >/dev/null || { echo "tidy: $tidy missing (apt-get install clang-tidy)" >&2; exit 2; }
[ -f build/compile_commands.json ] ||
  { echo "tidy: build/compile_commands.json missing: run scripts/build.sh release first" >&2; exit 2; }
if [ $# -gt 0 ]; then files=("$@"); else files=(src/*/*.cc); fi
start=$SECONDS
# Each file's output is printed whole, only when it has something to say.
if printf '%s\n' "${files[@]}" | xargs -P "$(nproc)" -n 1 sh -c '
    out=$('"$tidy"' -p build --quiet "$0" 2>&1) && exit 0
    printf "%s\n" "$out" | grep -v "warnings\? generated\.$\|^Suppressed [0-9]* warnings\|^Use -header-filter\|^Error while processing\|^[0-9]* warnings\? treated as error"
    exit 1'; then
  echo "tidy: ${#files[@]} files clean ($((SECONDS - start)) s)"
else
  echo "tidy: clang-tidy found the problems above ($((SECONDS - start)) s)" >&2
  exit 1
fi
