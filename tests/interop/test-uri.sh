#!/usr/bin/env bash
# The NBD URI that `serve` prints (and sets as $uri in captive mode) must
# be a valid URI that libnbd can connect to, whatever the export name or
# socket path: characters outside the URI's unreserved set are
# percent-encoded (as nbdkit does: "my disk" -> my%20disk).
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
test_init 60
need nbdinfo python3

img="$T/disk.img"
truncate -s 1M "$img"

# check_uri WHAT URI EXPORT: libnbd connects with URI and sees EXPORT.
check_uri() {
    local what="$1" uri="$2" export="$3" got
    got="$(nbdinfo --json "$uri" 2>"$T/nbdinfo.err")" ||
        fail "$what: libnbd cannot use the printed URI '$uri': $(head -n 1 "$T/nbdinfo.err")"
    got="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["exports"][0]["export-name"])' <<<"$got")"
    expect_eq "$got" "$export" "$what: export name seen through '$uri'"
}

names=("plain" "a/b" "my disk" "x?y&z=1" "100%" "#frag" "ä-ü" "semi;colon+plus")
for name in "${names[@]}"; do
    start_server "$img" --export "$name"
    check_uri "unix, export '$name'" "$SERVER_URI" "$name"
    stop_server_ok "$SERVER_PID"
    start_server "$img" --export "$name" --listen tcp:127.0.0.1:0
    check_uri "tcp, export '$name'" "$SERVER_URI" "$name"
    stop_server_ok "$SERVER_PID"
    out="$("$IMGSTREAM" serve "$img" --export "$name" --run 'nbdinfo --json "$uri" >/dev/null && echo ok')" || true
    expect_eq "$out" ok "captive \$uri with export '$name'"
done
pass "URIs with special export names"

mkdir -p "$T/dir with space" "$T/odd?&#%dir"
for dir in "$T/dir with space" "$T/odd?&#%dir"; do
    start_server "$img" --listen "unix:$dir/s"
    check_uri "socket path '$dir/s'" "$SERVER_URI" ""
    stop_server_ok "$SERVER_PID"
done
pass "URIs with special socket paths"
