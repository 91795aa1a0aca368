#!/usr/bin/env bash
# Bad input never destroys anything (issue 12): every operator mistake about a file ends
# in one line "imgstream: error: ..." naming the input, the right exit status (2 for a
# usage error found before any work, 1 for a runtime refusal), every file involved with
# the same sha256sum as before, and nothing new created.
#
#  1. unix listen paths: a user's file or a live server's socket is refused and left as
#     it was (serve, stream, --control); a stale socket is replaced; a server removes
#     only the socket it bound.
#  2. stream --store of a directory of someone's files is refused; a directory left by a
#     crash during creation is resumed; missing parents are made (point 10).
#  3. output files: pack/unpack/profile merge -o and --trace refuse an input (links
#     resolved, the base chain too) and a file of another kind unless --force.
#  4. image locks against qemu-nbd in both directions, a second writable serve, offline
#     migrate of a served disk, stream --device; two serve --read-only both start.
#  5. SIGINT of pack, unpack and verify stops within a second and leaves no NAME.tmp; a
#     second SIGINT exits at once; a corrupt unpack leaves no NAME.tmp; pack -o DIR fails
#     at once.
#  9. failed streams leave no store directory: bad --region-size, 404 URL of a pack,
#     bind address in use, socket path over 108 bytes.
# 11. verify's progress line shows bytes as bytes.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
test_init 300
need qemu-nbd nbdinfo nbdcopy python3 sha256sum script

W="$T/w" # every file a case may touch lives here; snap() lists them all
mkdir "$W"
mib=$((1024 * 1024))

# Every path under $W with its type, and the sha256 of every regular file.
snap() {
    (cd "$W" && find . -mindepth 1 | LC_ALL=C sort | while read -r p; do
        if [[ -f $p && ! -L $p ]]; then
            echo "$p $(sha256sum <"$p" | cut -c1-64)"
        else
            echo "$p $(stat -c %F "$p")"
        fi
    done)
}

# refuses WHAT STATUS MESSAGE CMD...: CMD exits STATUS, prints exactly one line on
# stderr, "imgstream: error: ..." containing MESSAGE, and leaves every file under $W as
# it was (same names, same types, same sha256sum).
refuses() {
    local what="$1" status="$2" msg="$3" before rc=0
    shift 3
    before="$(snap)"
    "$@" >"$T/out" 2>"$T/err" </dev/null || rc=$?
    [[ $rc -eq $status ]] || fail "$what: exit status $rc, expected $status: $(cat "$T/err")"
    [[ $(wc -l <"$T/err") -eq 1 ]] || fail "$what: expected one line on stderr, got: $(cat "$T/err")"
    grep -q '^imgstream: error: ' "$T/err" || fail "$what: not an imgstream error: $(cat "$T/err")"
    grep -qF -- "$msg" "$T/err" || fail "$what: the message lacks '$msg': $(cat "$T/err")"
    [[ "$(snap)" == "$before" ]] ||
        fail "$what: files changed: $(diff <(echo "$before") <(snap) | head -n 5 | tr '\n' ' ')"
    pass "$what: exit $status, $(cat "$T/err")"
}

# A stale socket: bound, then its process died without removing it.
stale_socket() {
    python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' "$1"
}

img="$W/golden.img"
head -c $((8 * mib)) /dev/urandom >"$img"
cp "$img" "$W/src.img"
echo "my notes" >"$W/notes.txt"

# ---------------------------------------------------------------- 1. listen paths
refuses "serve --listen unix: on a user's file" 1 "unix:$W/notes.txt: exists and is not a socket; not replacing it" \
    "$IMGSTREAM" serve "$img" --listen "unix:$W/notes.txt"
refuses "stream --listen unix: on a user's file" 1 "unix:$W/notes.txt: exists and is not a socket" \
    "$IMGSTREAM" stream "$W/src.img" --store "$W/st" --listen "unix:$W/notes.txt"

start_server "$W/src.img" --read-only --listen "unix:$W/live.sock"
live_pid=$SERVER_PID live_uri=$SERVER_URI
refuses "serve --listen on another server's live socket" 1 "unix:$W/live.sock: in use: another server answers there" \
    "$IMGSTREAM" serve "$img" --listen "unix:$W/live.sock"
refuses "stream --listen on another server's live socket" 1 "unix:$W/live.sock: in use: another server answers there" \
    "$IMGSTREAM" stream "$W/src.img" --store "$W/st" --listen "unix:$W/live.sock"
expect_eq "$(nbdinfo --size "$live_uri")" $((8 * mib)) "the other server still answers on its socket"
refuses "serve --control on a user's file" 1 "control socket unix:$W/notes.txt: exists and is not a socket" \
    "$IMGSTREAM" serve "$img" --listen "unix:$T/c.sock" --track "$W/t.track" --control "$W/notes.txt"
refuses "serve --control on a live socket" 1 "control socket unix:$W/live.sock: in use" \
    "$IMGSTREAM" serve "$img" --listen "unix:$T/c.sock" --track "$W/t.track" --control "$W/live.sock"
stop_server_ok "$live_pid"
[[ ! -e $W/live.sock ]] || fail "the server did not remove the socket it bound"
pass "a server removes the socket file it bound when it stops"

stale_socket "$T/stale.sock"
out="$("$IMGSTREAM" serve "$img" --read-only --listen "unix:$T/stale.sock" --run 'nbdinfo --size "$uri"')" ||
    fail "serve on a stale socket exited $?"
expect_eq "$out" $((8 * mib)) "serve replaces a stale socket and serves on it"
[[ ! -e $T/stale.sock ]] || fail "the socket serve bound over a stale one was not removed at the end"
pass "a stale socket (nobody answers) is replaced"

# ---------------------------------------------------------------- 2. store directories
mkdir "$W/mine"
echo "not a disk" >"$W/mine/data"
echo "jpeg" >"$W/mine/photo.jpg"
refuses "stream --store of someone's directory" 2 "store $W/mine is not an imgstream store and not empty (it holds 'photo.jpg'); not using it" \
    "$IMGSTREAM" stream "$W/src.img" --store "$W/mine" --run true
refuses "stream --store of someone's directory, pack source" 2 "store $W/mine is not an imgstream store" \
    "$IMGSTREAM" stream "$W/none.pack" --store "$W/mine" --run true

# A directory holding only what a crash during creation leaves is a store being made.
mkdir "$T/half"
: >"$T/half/lock"
: >"$T/half/data"
expect_ok "stream resumes a store whose creation was cut short" \
    "$IMGSTREAM" stream "$W/src.img" --store "$T/half" --run "nbdcopy \"\$uri\" - | cmp - $(printf %q "$W/src.img")"
[[ -s $T/half/meta ]] || fail "the half-made store was not completed"
expect_ok "stream --store under missing parents" \
    "$IMGSTREAM" stream "$W/src.img" --store "$T/new/parents/st" --run true
[[ -s $T/new/parents/st/meta ]] || fail "stream did not make the missing parents of --store"
pass "a store being made is resumed; --store's missing parents are made"

# ---------------------------------------------------------------- 3. output files
expect_ok "pack golden.img" "$IMGSTREAM" pack "$img" -o "$W/golden.pack" -q
ln -s golden.img "$W/link.pack"
mkdir "$W/dir"
refuses "pack -o the image itself" 2 "output $img is the input $img (the same file); not overwriting it" \
    "$IMGSTREAM" pack "$img" -o "$img"
refuses "pack -o a link to the image, even with --force" 2 "output $W/link.pack is the input $img (the same file)" \
    "$IMGSTREAM" pack "$img" -o "$W/link.pack" --force
refuses "pack -o its own --base" 2 "output $W/golden.pack is the input $W/golden.pack" \
    "$IMGSTREAM" pack "$W/src.img" -o "$W/golden.pack" --base "$W/golden.pack"
refuses "pack -o a file of another kind" 2 "output $W/notes.txt exists and is not a pack (no IMGPACK1 magic); not overwriting it (--force replaces it)" \
    "$IMGSTREAM" pack "$img" -o "$W/notes.txt"
refuses "pack -o a directory" 2 "output $W/dir is a directory" \
    "$IMGSTREAM" pack "$img" -o "$W/dir"
refuses "pack -o in a missing directory" 2 "output $W/nodir/x.pack: directory $W/nodir does not exist" \
    "$IMGSTREAM" pack "$img" -o "$W/nodir/x.pack"
refuses "unpack -o the pack itself" 2 "output $W/golden.pack is the input $W/golden.pack" \
    "$IMGSTREAM" unpack "$W/golden.pack" -o "$W/golden.pack"
refuses "unpack -o an existing file" 2 "output $W/notes.txt exists and is not empty; not overwriting it (--force replaces it)" \
    "$IMGSTREAM" unpack "$W/golden.pack" -o "$W/notes.txt"
# v2's base chain is an input too, --force or not.
expect_ok "pack v2 on golden.pack" "$IMGSTREAM" pack "$W/src.img" -o "$T/v2.pack" --base "$W/golden.pack" -q
refuses "unpack -o the pack's base, even with --force" 2 "output $W/golden.pack is the input $W/golden.pack" \
    "$IMGSTREAM" unpack "$T/v2.pack" -o "$W/golden.pack" --force
refuses "serve --trace on a pack" 2 "output $W/golden.pack exists and is not a trace (no IMGTRACE magic)" \
    "$IMGSTREAM" serve "$img" --trace "$W/golden.pack" --listen "unix:$T/x.sock"
refuses "serve --trace on the image" 2 "output $img is the input $img" \
    "$IMGSTREAM" serve "$img" --trace "$img" --listen "unix:$T/x.sock"
refuses "serve --track on the image" 2 "--track $img is the image $img (the same file)" \
    "$IMGSTREAM" serve "$img" --track "$img" --listen "unix:$T/x.sock"
refuses "stream --trace on the source" 2 "output $W/src.img is the input $W/src.img" \
    "$IMGSTREAM" stream "$W/src.img" --store "$W/st" --trace "$W/src.img"
refuses "stream --trace on a pack" 2 "output $W/golden.pack exists and is not a trace" \
    "$IMGSTREAM" stream "$W/src.img" --store "$W/st" --trace "$W/golden.pack"
"$IMGSTREAM" serve "$W/src.img" --read-only --trace "$W/boot.trace" --run 'nbdcopy "$uri" - >/dev/null' ||
    fail "serve --trace exited $?"
refuses "profile merge -o one of its traces" 2 "output $W/boot.trace is the input $W/boot.trace" \
    "$IMGSTREAM" profile merge "$W/boot.trace" -o "$W/boot.trace"
refuses "profile merge -o a file of another kind" 2 "output $W/notes.txt exists and is not a profile (no IMGPROFL magic)" \
    "$IMGSTREAM" profile merge "$W/boot.trace" -o "$W/notes.txt"
# --force replaces a file of another kind (never an input).
cp "$W/notes.txt" "$T/notes.txt"
expect_ok "unpack --force over an existing file" "$IMGSTREAM" unpack "$W/golden.pack" -o "$T/notes.txt" --force -q
expect_same_file "$T/notes.txt" "$img" "unpack --force's output"
pass "--force replaces an existing file of another kind"

# ---------------------------------------------------------------- 4. image locks
start_server "$img"
serve_pid=$SERVER_PID
rc=0
timeout 10 qemu-nbd -f raw -k "$T/q.sock" "$img" >"$T/qemu-nbd.log" 2>&1 || rc=$?
[[ $rc -ne 0 ]] || fail "qemu-nbd of an image a writable serve has started"
grep -q 'lock' "$T/qemu-nbd.log" || fail "qemu-nbd failed, but not on the lock: $(cat "$T/qemu-nbd.log")"
pass "serve, then qemu-nbd of the same image: qemu-nbd refuses ($(head -n 1 "$T/qemu-nbd.log"))"
refuses "a second writable serve of one image" 1 "$img is in use: locked by process $serve_pid (imgstream), which writes to it" \
    "$IMGSTREAM" serve "$img" --listen "unix:$T/second.sock"
refuses "offline migrate of a disk a serve writes" 1 "$img is in use: locked by process $serve_pid (imgstream), which writes to it" \
    "$IMGSTREAM" migrate "$img" --to "nbd+unix:///?socket=$T/nothing.sock"
stop_server_ok "$serve_pid"

qemu-nbd -f raw -k "$T/q.sock" "$img" >"$T/qemu-nbd.log" 2>&1 &
qemu_pid=$!
register_pid "$qemu_pid"
for ((i = 0; i < 100; i++)); do
    [[ -S $T/q.sock ]] && break
    sleep 0.1
done
[[ -S $T/q.sock ]] || fail "qemu-nbd did not start: $(cat "$T/qemu-nbd.log")"
refuses "writable serve of an image qemu-nbd serves" 1 "$img is in use: locked by process $qemu_pid (qemu-nbd), which writes to it" \
    "$IMGSTREAM" serve "$img" --listen "unix:$T/second.sock"
refuses "stream --device of an image qemu-nbd serves" 1 "$img is in use: locked by process $qemu_pid (qemu-nbd)" \
    "$IMGSTREAM" stream "$W/src.img" --store "$W/st" --device "$img" --listen "unix:$T/second.sock"
_kill_pid "$qemu_pid"

start_server "$img" --read-only
ro1=$SERVER_PID
start_server "$img" --read-only
ro2=$SERVER_PID
expect_eq "$(nbdinfo --size "$SERVER_URI")" $((8 * mib)) "the second serve --read-only serves"
stop_server_ok "$ro2"
stop_server_ok "$ro1"
pass "two serve --read-only of one image both start"

# ---------------------------------------------------------------- 9. failed streams leave nothing
refuses "stream --region-size 3K" 2 "--region-size 3K: must be a power of two from 4K to 1G" \
    "$IMGSTREAM" stream "$W/src.img" --store "$W/st" --region-size 3K
long="unix:$T/$(printf 's%.0s' {1..120})"
refuses "stream --listen with a socket path over 108 bytes" 2 "socket path too long" \
    "$IMGSTREAM" stream "$W/src.img" --store "$W/st" --listen "$long"
refuses "stream --seed with a source that is no pack" 2 "--seed works with a pack source" \
    "$IMGSTREAM" stream "$W/src.img" --store "$W/st" --seed "$img"
# An HTTP server that answers 404 to everything, on a TCP port that is then in use.
python3 - "$T/http.port" <<'PY' >"$T/http.log" 2>&1 &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self): self.send_error(404)
    do_HEAD = do_GET
s = http.server.HTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1], "w").write(str(s.server_port))
s.serve_forever()
PY
register_pid $!
for ((i = 0; i < 100; i++)); do
    [[ -s $T/http.port ]] && break
    sleep 0.1
done
port="$(cat "$T/http.port")"
refuses "stream of a pack URL that is 404" 1 "http://127.0.0.1:$port/missing.pack" \
    "$IMGSTREAM" stream "http://127.0.0.1:$port/missing.pack" --store "$W/st"
refuses "stream --listen on a TCP address in use" 1 "tcp:127.0.0.1:$port" \
    "$IMGSTREAM" stream "$W/src.img" --store "$W/st" --listen "tcp:127.0.0.1:$port"
refuses "stream of a missing parent's store, source missing" 1 "$W/missing.img" \
    "$IMGSTREAM" stream "$W/missing.img" --store "$W/a/b/st"

# ---------------------------------------------------------------- 11. verify's progress
script -qec "$(printf '%q ' "$IMGSTREAM" verify "$W/golden.pack")" /dev/null >"$T/verify.tty" ||
    fail "verify on a terminal exited $?: $(cat "$T/verify.tty")"
grep -q '8.0 MiB / 8.0 MiB' "$T/verify.tty" ||
    fail "verify's progress does not show the image's bytes: $(tr '\r' '\n' <"$T/verify.tty" | tail -n 3)"
pass "verify's progress shows bytes as bytes (8.0 MiB / 8.0 MiB)"

# ---------------------------------------------------------------- 5. interruption
B="$T/big"
mkdir "$B"
head -c $((512 * mib)) /dev/urandom >"$B/big.img"
leftovers() { find "$B" -name '*.tmp' | tr '\n' ' '; }
now_ms() { date +%s%3N; }

# interrupt WHAT DELAY_S CMD...: starts CMD, sends SIGINT after DELAY_S; CMD must exit 1
# with "interrupted" within a second, and leave no NAME.tmp.
interrupt() {
    local what="$1" delay="$2" pid rc=0 t0
    shift 2
    "$@" >"$T/int.out" 2>"$T/int.err" &
    pid=$!
    register_pid "$pid"
    sleep "$delay"
    _alive "$pid" || fail "$what: finished before the signal (the test needs more work)"
    t0=$(now_ms)
    kill -INT "$pid"
    wait "$pid" || rc=$?
    local took=$(($(now_ms) - t0))
    expect_eq "$rc" 1 "$what: exit status after SIGINT"
    grep -q 'interrupted' "$T/int.err" || fail "$what: no 'interrupted' on stderr: $(cat "$T/int.err")"
    ((took < 1000)) || fail "$what: took $took ms after SIGINT"
    [[ -z $(leftovers) ]] || fail "$what: left $(leftovers)"
    pass "$what: SIGINT stopped it in $took ms, exit 1, no .tmp left"
}

interrupt "pack of 512 MiB" 1 "$IMGSTREAM" pack "$B/big.img" -o "$B/big.pack" -q
[[ ! -e $B/big.pack ]] || fail "an interrupted pack left its output"

# A second SIGINT exits at once (128 + 2), removing the registered temporaries too.
"$IMGSTREAM" pack "$B/big.img" -o "$B/big.pack" -q >/dev/null 2>"$T/int.err" &
pid=$!
register_pid "$pid"
sleep 0.5
kill -INT "$pid"
sleep 0.02 # two signals sent at once are one pending signal
kill -INT "$pid"
rc=0
wait "$pid" || rc=$?
expect_eq "$rc" 130 "pack after two SIGINTs: exit status (128 + SIGINT: exited at once)"
[[ -z $(leftovers) && ! -e $B/big.pack ]] || fail "pack after two SIGINTs left $(leftovers)"
pass "pack after two SIGINTs: exit $rc, no .tmp left"

t0=$(now_ms)
refuses "pack -o a directory fails before any work" 2 "output $W/dir is a directory" \
    "$IMGSTREAM" pack "$B/big.img" -o "$W/dir"
(($(now_ms) - t0 < 1000)) || fail "pack -o DIR took $(($(now_ms) - t0)) ms to fail"

expect_ok "pack of 512 MiB" "$IMGSTREAM" pack "$B/big.img" -o "$B/big.pack" -q
interrupt "unpack of 512 MiB" 0.2 "$IMGSTREAM" unpack "$B/big.pack" -o "$B/big.out" -q
[[ ! -e $B/big.out ]] || fail "an interrupted unpack left its output"
interrupt "verify of 512 MiB" 0.2 "$IMGSTREAM" verify "$B/big.pack" -q

# A corrupt chunk: unpack fails, naming it, and leaves no NAME.tmp.
cp "$W/golden.pack" "$B/bad.pack"
python3 - "$B/bad.pack" <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(4096 + 300000); c = f.read(1); f.seek(4096 + 300000); f.write(bytes([c[0] ^ 0x20]))
PY
rc=0
"$IMGSTREAM" unpack "$B/bad.pack" -o "$B/bad.out" -q 2>"$T/bad.err" || rc=$?
expect_eq "$rc" 1 "unpack of a corrupt pack: exit status"
grep -q "unpack $B/bad.pack" "$T/bad.err" || fail "unpack of a corrupt pack: $(cat "$T/bad.err")"
[[ -z $(leftovers) && ! -e $B/bad.out ]] || fail "a failed unpack left $(leftovers)"
pass "a failed unpack (corrupt chunk) leaves no .tmp: $(cat "$T/bad.err")"
