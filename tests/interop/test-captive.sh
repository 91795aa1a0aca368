#!/usr/bin/env bash
# Captive mode (--run), clean stop on SIGTERM/SIGINT while clients are
# busy, and the error contract: runtime errors exit 1 with one line
# "imgstream: error: ..." naming the input, usage errors exit 2.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
test_init 120
need nbdinfo fio nbdcopy

img="$T/disk.img"
size=$((16 * 1024 * 1024 + 512))
truncate -s "$size" "$img"

# ---- captive mode
out="$("$IMGSTREAM" serve "$img" --run 'nbdinfo --size "$uri"' 2>"$T/err")" ||
    fail "serve --run 'nbdinfo --size \"\$uri\"' exited $? ($(cat "$T/err"))"
expect_eq "$out" "$size" "stdout of serve --run 'nbdinfo --size \"\$uri\"'"

rc=0
"$IMGSTREAM" serve "$img" --run 'exit 3' >/dev/null 2>&1 || rc=$?
expect_eq "$rc" 3 "exit status of serve --run 'exit 3'"

rc=0
"$IMGSTREAM" serve "$img" --run 'kill -KILL $$' >/dev/null 2>&1 || rc=$?
expect_eq "$rc" 137 "exit status of serve --run when CMD dies of SIGKILL (128+9, as sh reports it)"

# $uri names the export and works for a real client; the socket is
# private and gone afterwards.
out="$("$IMGSTREAM" serve "$img" --export disk0 --read-only \
    --run 'echo "$uri"; nbdinfo --is read-only "$uri" && echo ro; nbdcopy "$uri" - | wc -c')" ||
    fail "serve --export disk0 --read-only --run ... exited $?"
uri="$(sed -n 1p <<<"$out")"
case "$uri" in
    nbd+unix:///disk0\?socket=*) ;;
    *) fail "captive \$uri '$uri' is not nbd+unix:///disk0?socket=..." ;;
esac
expect_eq "$(sed -n 2p <<<"$out")" ro "captive --read-only export is read-only"
expect_eq "$(sed -n 3p <<<"$out" | tr -d ' ')" "$size" "bytes read through the captive \$uri"
sock="${uri#*socket=}"
[[ ! -e $sock ]] || fail "captive mode left its socket $sock behind"

# With --listen, $uri uses that address.
out="$("$IMGSTREAM" serve "$img" --listen "unix:$T/cap.sock" --run 'echo "$uri"')" || fail "serve --listen --run exited $?"
expect_eq "$out" "nbd+unix:///?socket=$T/cap.sock" "captive \$uri with --listen unix:"
out="$("$IMGSTREAM" serve "$img" --listen tcp:127.0.0.1:0 --run 'nbdinfo --size "$uri"; echo "$uri"')" ||
    fail "serve --listen tcp:127.0.0.1:0 --run exited $?"
expect_eq "$(sed -n 1p <<<"$out")" "$size" "size over tcp in captive mode"
[[ $(sed -n 2p <<<"$out") =~ ^nbd://127\.0\.0\.1:[1-9][0-9]*/$ ]] || fail "tcp \$uri '$(sed -n 2p <<<"$out")'"
pass "captive mode: output, exit status, \$uri"

# ---- SIGTERM while a client is busy: the server stops and exits 0.
big="$T/big.img"
truncate -s 16G "$big"
start_server "$big"
fio --name=busy --ioengine=nbd --uri="$SERVER_URI" --rw=randrw --bs=64k --iodepth=32 \
    --time_based=1 --runtime=60 --size=64m --verify_state_save=0 >"$T/fio.log" 2>&1 &
fio_pid=$!
register_pid "$fio_pid"
sleep 2
_alive "$fio_pid" || fail "fio exited before the server was signalled: $(tail -n 5 "$T/fio.log")"
stop_server_ok "$SERVER_PID"
for ((i = 0; i < 100; i++)); do
    _alive "$fio_pid" || break
    sleep 0.1
done
_alive "$fio_pid" && fail "fio still running 10 s after the server stopped"
[[ ! -e $SERVER_SOCK ]] || fail "server left its socket behind after SIGTERM"
pass "SIGTERM during fio randrw: server exits 0, client sees the disconnect"

# ---- SIGINT while nbdcopy reads (no extents: every byte goes over the wire).
start_server "$big" --read-only
nbdcopy --no-extents --connections=4 "$SERVER_URI" null: >"$T/nbdcopy.log" 2>&1 &
copy_pid=$!
register_pid "$copy_pid"
sleep 1
if _alive "$copy_pid"; then
    kill -INT "$SERVER_PID"
    for ((i = 0; i < 150; i++)); do
        _alive "$SERVER_PID" || break
        sleep 0.1
    done
    _alive "$SERVER_PID" && fail "server did not stop within 15 s of SIGINT"
    rc=0
    wait "$SERVER_PID" || rc=$?
    expect_eq "$rc" 0 "exit status after SIGINT during nbdcopy"
    pass "SIGINT during nbdcopy: server exits 0"
else
    note "nbdcopy finished 16 GiB within 1 s; SIGINT case not exercised"
    stop_server_ok "$SERVER_PID"
fi
_kill_pid "$copy_pid"

# ---- several --listen addresses: one URI per line, each one works.
start_server "$img" --listen "unix:$T/multi.sock" --listen tcp:127.0.0.1:0 --export two
[[ $(wc -l <"$SERVER_OUT") -eq 2 ]] || fail "two --listen: expected 2 URI lines, got: $(cat "$SERVER_OUT")"
expect_eq "$(sed -n 1p "$SERVER_OUT")" "nbd+unix:///two?socket=$T/multi.sock" "first URI with two --listen"
[[ $(sed -n 2p "$SERVER_OUT") =~ ^nbd://127\.0\.0\.1:[1-9][0-9]*/two$ ]] || fail "second URI: $(sed -n 2p "$SERVER_OUT")"
while read -r u; do
    expect_eq "$(nbdinfo --size "$u")" "$size" "size through $u"
done <"$SERVER_OUT"
stop_server_ok "$SERVER_PID"
[[ ! -e $T/multi.sock ]] || fail "socket $T/multi.sock left behind"
pass "several --listen addresses"

# ---- errors
# expect_error STATUS PATTERN WHAT ARGS...: exit STATUS, stderr's first line
# is "imgstream: error: ..." matching PATTERN.
expect_error() {
    local want="$1" pattern="$2" what="$3" rc=0
    shift 3
    timeout 10 "$IMGSTREAM" "$@" >"$T/out" 2>"$T/err" || rc=$?
    expect_eq "$rc" "$want" "$what: exit status"
    local first
    first="$(head -n 1 "$T/err")"
    [[ $first == "imgstream: error: "* ]] || fail "$what: stderr does not start with 'imgstream: error: ': $(cat "$T/err")"
    grep -q -- "$pattern" <<<"$first" || fail "$what: error line does not mention '$pattern': $first"
    [[ ! -s $T/out ]] || fail "$what: unexpected stdout: $(cat "$T/out")"
}

expect_error 1 "$T/nonexistent.img" "nonexistent image" serve "$T/nonexistent.img" --listen "unix:$T/e.sock"
expect_eq "$(wc -l <"$T/err")" 1 "nonexistent image: number of stderr lines"
expect_error 1 "$T/nonexistent.img" "nonexistent image in captive mode" serve "$T/nonexistent.img" --run true
expect_eq "$(wc -l <"$T/err")" 1 "nonexistent image (captive): number of stderr lines"
expect_error 1 "$T" "image is a directory" serve "$T" --listen "unix:$T/e.sock"
expect_eq "$(wc -l <"$T/err")" 1 "directory image: number of stderr lines"
# A unix socket in a directory that does not exist.
expect_error 1 "$T/no/such/dir/s" "socket path in a missing directory" serve "$img" --listen "unix:$T/no/such/dir/s"
expect_eq "$(wc -l <"$T/err")" 1 "bad socket directory: number of stderr lines"
# Address already in use.
start_server "$img" --listen tcp:127.0.0.1:0
port="$(sed -n 's|^nbd://127\.0\.0\.1:\([0-9]*\)/.*|\1|p' "$SERVER_OUT")"
[[ -n $port ]] || fail "no tcp port in $(cat "$SERVER_OUT")"
expect_error 1 "127.0.0.1:$port" "tcp port already in use" serve "$img" --listen "tcp:127.0.0.1:$port"
stop_server_ok "$SERVER_PID"

expect_error 2 "foo:bar" "bad --listen scheme" serve "$img" --listen foo:bar
expect_error 2 "notaport" "bad --listen port" serve "$img" --listen tcp:127.0.0.1:notaport
expect_error 2 "99999" "--listen port out of range" serve "$img" --listen tcp:127.0.0.1:99999
expect_error 2 "unix:" "empty --listen unix path" serve "$img" --listen unix:
expect_error 2 "" "missing IMAGE" serve
expect_error 2 "--bogus" "unknown option" serve "$img" --bogus
pass "errors: exit 1 for runtime failures (one line naming the input), exit 2 for usage"
