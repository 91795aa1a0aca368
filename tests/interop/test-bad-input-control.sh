#!/usr/bin/env bash
# Bad input on the control side (issue 12, points 7, 8, 9, 11-15), with real peers. Each
# case asserts the error (exit status, one line naming the input) and that the files
# involved are as they were (sha256sum) and that nothing was created:
#   7.  migrate to a qemu-nbd with its defaults (one client): it goes on with the one
#       connection it gets and says so, within seconds; a qemu-nbd whose one slot is
#       taken fails within a few seconds naming -e/--shared, target unchanged.
#   8.  status --watch of a streamer killed with -9: "streamer gone", exit 1.
#   9.  ctl DIR pause 5M (and other usage errors): exit 2, one line, nothing changed.
#   11. status --watch on an 80-column terminal (script(1)): no line wider than 79;
#       at --rate 4M every tick shows a rate, within 25% of 4 MiB/s once settled.
#   12. status --json has the same fields running or not; the new fields are there;
#       state is "stopped" when nothing runs (stored_state: as last committed);
#       store is absolute; a hint when nothing runs.
#   13. a source that comes back after an error: hydration resumes by itself (no ctl
#       resume); failed reads are counted; --seed on an existing store says "needs a
#       new store"; track show of a tracking file in use, read only; a second migrate
#       after a switch refuses at once; migrate's progress line on a terminal and its
#       checkpoints by time below 256 MiB.
#   15. raw lines of invalid UTF-8 (and other garbage) on STORE/ctl.sock and on
#       serve --control: error replies, the streamer / server still serves, the store
#       and tracking file unchanged; a store whose source path holds an invalid byte:
#       status and status --json work and the streamer lives.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/stream.sh"
test_init 420
need qemu-nbd qemu-io qemu-img nbdkit nbdinfo jq python3 script sha256sum

MiB=$((1024 * 1024))

sums() { (cd "$1" && find . -type f ! -name '*.sock' -print0 | sort -z | xargs -0 -r sha256sum); }
listing() { (cd "$1" && find . | sort); }
# expect_error_line FILE PATTERN WHAT: FILE holds exactly one line, an imgstream error
# matching PATTERN (grep -E).
expect_error_line() {
    local n
    n=$(wc -l <"$1")
    [[ $n -eq 1 ]] || { cat "$1" >&2; fail "$3: $n lines on stderr, expected one"; }
    grep -qE "^imgstream: error: .*$2" "$1" || fail "$3: stderr is '$(cat "$1")', expected /$2/"
}
# ctl_raw SOCKET BYTES: sends BYTES (python escapes) as they are; prints the reply.
ctl_raw() {
    python3 - "$1" "$2" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode().decode("unicode_escape").encode("latin-1"))
s.shutdown(socket.SHUT_WR)
data = b""
while not data.endswith(b"\n"):
    b = s.recv(65536)
    if not b:
        break
    data += b
sys.stdout.write(data.decode("utf-8"))
PY
}
elapsed_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

img="$T/disk.img"
head -c $((32 * MiB)) /dev/urandom >"$img"
img_sum="$(sha256sum <"$img")"

# ---------------------------------------------------------------- 7. qemu-nbd, one client
dst="$T/dst.img"
truncate -s 32M "$dst"
qemu-nbd -f raw -k "$T/q1.sock" "$dst" >"$T/q1.log" 2>&1 &  # defaults: -e 1, not persistent
q1=$!
register_pid "$q1"
for _ in $(seq 50); do [[ -S $T/q1.sock ]] && break; sleep 0.1; done
t0=$(date +%s.%N)
rc=0
timeout 60 "$IMGSTREAM" migrate "$img" --to "nbd+unix:///?socket=$T/q1.sock" >"$T/m7.out" 2>"$T/m7.err" || rc=$?
took=$(elapsed_since "$t0")
[[ $rc -eq 0 ]] || { cat "$T/m7.err" >&2; fail "migrate to a default qemu-nbd: exit $rc"; }
grep -q "took 1 of the 4 connections" "$T/m7.err" || fail "migrate did not say it got 1 of 4 connections: $(cat "$T/m7.err")"
grep -q -- "-e/--shared" "$T/m7.err" || fail "migrate did not name the likely cause (-e/--shared): $(cat "$T/m7.err")"
awk -v e="$took" 'BEGIN { exit !(e < 20) }' || fail "migrate to a default qemu-nbd took ${took}s"
wait "$q1" 2>/dev/null || true
cmp -s "$img" "$dst" || fail "the target differs from the image after migrate to qemu-nbd"
expect_eq "$(sha256sum <"$img")" "$img_sum" "the image after migrate"
pass "migrate to qemu-nbd with its defaults: 1 of 4 connections used and said, done in ${took}s, target equal"

# The one slot taken by another client: the handshake never comes.
truncate -s 32M "$T/dst2.img"
dst2_sum="$(sha256sum <"$T/dst2.img")"
qemu-nbd -f raw -t -k "$T/q2.sock" "$T/dst2.img" >"$T/q2.log" 2>&1 &
register_pid $!
for _ in $(seq 50); do [[ -S $T/q2.sock ]] && break; sleep 0.1; done
qemu-io -r -f raw -c "sleep 30000" "nbd+unix:///?socket=$T/q2.sock" >/dev/null 2>&1 &
holder=$!
register_pid "$holder"
sleep 1
t0=$(date +%s.%N)
rc=0
timeout 60 "$IMGSTREAM" migrate "$img" --to "nbd+unix:///?socket=$T/q2.sock" >"$T/m7b.out" 2>"$T/m7b.err" || rc=$?
took=$(elapsed_since "$t0")
expect_eq "$rc" 1 "exit status of migrate to a qemu-nbd whose one client slot is taken"
expect_error_line "$T/m7b.err" "no NBD greeting.*-e/--shared" "migrate to a busy qemu-nbd"
grep -q "q2.sock" "$T/m7b.err" || fail "the error does not name the target: $(cat "$T/m7b.err")"
awk -v e="$took" 'BEGIN { exit !(e < 10) }' || fail "the missing handshake was reported after ${took}s (30 s before)"
kill "$holder" 2>/dev/null || true
expect_eq "$(sha256sum <"$T/dst2.img")" "$dst2_sum" "the target of the failed migrate"
pass "qemu-nbd's one slot taken: migrate fails in ${took}s naming -e/--shared, target unchanged"

# ---------------------------------------------------------------- sources and streamers
start_source "$T/src.sock" file "$img"
src_pid=$SOURCE_PID
src="$SOURCE_URI"

# ---------------------------------------------------------------- 9. ctl usage errors
s9="$T/s9"
start_streamer "$src" "$s9" --rate 1M
s9_pid=$STREAMER_PID
for args in "pause 5M" "resume 1" "rate" "frob" "rate fast" "pause 5M 6M"; do
    rc=0
    # shellcheck disable=SC2086
    "$IMGSTREAM" ctl "$s9" $args >"$T/ctl.out" 2>"$T/ctl.err" || rc=$?
    expect_eq "$rc" 2 "exit status of 'ctl DIR $args'"
    expect_error_line "$T/ctl.err" "" "ctl DIR $args"
done
grep -q "5M" <("$IMGSTREAM" ctl "$s9" pause 5M 2>&1 || true) || fail "ctl pause 5M does not name the extra argument"
expect_eq "$(st "$s9" state)" streaming "state after the refused 'ctl pause 5M' (it must not have paused)"
stop_server_ok "$s9_pid"
pass "ctl usage errors (pause 5M, resume 1, rate, frob, ...): exit 2, one line, the stream untouched"

# ---------------------------------------------------------------- 12. status fields
s12="$T/s12"
start_streamer "$src" "$s12" --rate 2M
s12_pid=$STREAMER_PID
live="$(cd "$T" && "$IMGSTREAM" status s12 --json)"
for f in state stored_state daemon_running percent rate_bytes_per_s eta_s bytes_seeded reads_failed rate_limit \
    hit_ratio prefetch_precision error hint retry_in_s store; do
    jq -e --arg f "$f" 'has($f)' <<<"$live" >/dev/null || fail "status --json (running) has no '$f': $live"
done
expect_eq "$(jq -r .store <<<"$live")" "$s12" "store (given as a relative path) is absolute"
expect_eq "$(jq -r .daemon_running <<<"$live")" true "daemon_running while it runs"
stop_server_ok "$s12_pid"
before="$(sums "$s12")"
stored="$(cd "$T" && "$IMGSTREAM" status s12 --json)"
expect_eq "$(jq -c 'keys' <<<"$stored")" "$(jq -c 'keys' <<<"$live")" "status fields, running vs not"
expect_eq "$(jq -r .store <<<"$stored")" "$s12" "store (stored status) is absolute"
expect_eq "$(jq -r .daemon_running <<<"$stored")" false "daemon_running after the stop"
expect_eq "$(jq -r .state <<<"$live")" streaming "state while it runs"
expect_eq "$(jq -r .state <<<"$stored")" stopped "state when no streamer runs on an incomplete store"
expect_eq "$(jq -r .stored_state <<<"$stored")" streaming "stored_state: what it was doing when it stopped"
expect_eq "$(jq -r .rate_bytes_per_s <<<"$stored")" 0 "rate_bytes_per_s with nothing running"
jq -r .hint <<<"$stored" | grep -q "no streamer runs" || fail "no hint that nothing runs: $stored"
"$IMGSTREAM" status "$s12" | grep -q "^hint: no streamer runs" || fail "text status shows no hint"
expect_eq "$(sums "$s12")" "$before" "the store after status"
pass "status --json: the same fields running or not (percent, rate, eta, reads_failed, hint, ...), store absolute"

# ---------------------------------------------------------------- 11. --watch: width, rate
head -c $((80 * MiB)) /dev/urandom >"$T/big.img"  # 20 s at 4 MiB/s
start_source "$T/big.sock" file "$T/big.img"
big_pid=$SOURCE_PID
s11="$T/s11"
start_streamer "$SOURCE_URI" "$s11" --rate 4M
s11_pid=$STREAMER_PID
"$IMGSTREAM" status "$s11" --watch --json --interval 1 >"$T/watch11.json" 2>&1 &
wj=$!
register_pid "$wj"
rc=0
timeout 60 script -qfec "stty cols 80 rows 24; $(printf %q "$IMGSTREAM") status $(printf %q "$s11") --watch --interval 0.5" \
    /dev/null >"$T/watch11.tty" 2>&1 || rc=$?
[[ $rc -eq 0 ]] || { tail -c 600 "$T/watch11.tty" >&2; fail "status --watch on a terminal exited $rc"; }
wait "$wj" || fail "status --watch --json exited non-zero"
python3 - "$T/watch11.tty" <<'PY' || fail "status --watch on an 80-column terminal"
import re, sys
raw = open(sys.argv[1], "rb").read().decode("utf-8", "replace")
lines = [re.sub(r"\x1b\[K", "", l) for l in re.split(r"[\r\n]+", raw) if l.strip()]
wide = [l for l in lines if len(l) > 79]
if wide:
    sys.exit(f"{len(wide)} of {len(lines)} redrawn lines wider than 79 columns: {wide[0]!r}")
if len(lines) < 10 or not any("detached" in l for l in lines[-2:]):
    sys.exit(f"expected many redraws ending at detached, got {lines[-3:]}")
PY
python3 - "$T/watch11.json" <<'PY' || fail "rate and ETA under --rate 4M"
import json, sys
ticks = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
want = 4 * 1024 * 1024
streaming = [t for t in ticks if t["state"] == "streaming"]
settled = streaming[5:-1]
if len(settled) < 3:
    sys.exit(f"only {len(streaming)} ticks while streaming")
for t in settled:
    r = t["rate_bytes_per_s"]
    if not (0.75 * want <= r <= 1.25 * want) or t["eta_s"] is None:
        sys.exit(f"a tick with rate {r:.0f} B/s (want about {want}) and eta {t['eta_s']}: {t}")
print(f"{len(settled)} settled ticks, rate {min(t['rate_bytes_per_s'] for t in settled)/want:.2f}"
      f" to {max(t['rate_bytes_per_s'] for t in settled)/want:.2f} x 4 MiB/s")
PY
stop_server_ok "$s11_pid"
kill_source "$big_pid" TERM
rm -f "$T/big.img"
pass "status --watch: 80 columns never wrapped; at --rate 4M every tick has a rate within 25% and an ETA"

# ---------------------------------------------------------------- 8. watch, streamer killed
s8="$T/s8"
start_streamer "$src" "$s8" --rate 1M
s8_pid=$STREAMER_PID
"$IMGSTREAM" status "$s8" --watch --interval 0.3 >"$T/watch8.out" 2>"$T/watch8.err" &
w8=$!
register_pid "$w8"
sleep 1.5
kill -KILL "$s8_pid"
t0=$(date +%s.%N)
rc=0
for _ in $(seq 100); do _alive "$w8" || break; sleep 0.1; done
_alive "$w8" && fail "status --watch still runs 10 s after its streamer was killed"
wait "$w8" || rc=$?
expect_eq "$rc" 1 "exit status of status --watch when its streamer is killed"
expect_error_line "$T/watch8.err" "status .*s8: streamer gone" "status --watch, streamer killed"
before="$(listing "$s8")"
rc=0
"$IMGSTREAM" status "$s8" --watch >/dev/null 2>"$T/watch8b.err" || rc=$?
expect_eq "$rc" 1 "exit status of status --watch with no streamer"
expect_error_line "$T/watch8b.err" "no streamer runs" "status --watch with no streamer"
expect_eq "$(listing "$s8")" "$before" "the store's files after status --watch"
pass "status --watch: streamer killed -> 'streamer gone', exit 1 in $(elapsed_since "$t0")s; none running -> exit 1"

# ---------------------------------------------------------------- 13. source back: resumes by itself
start_source "$T/src13.sock" --filter=delay file "$img" rdelay=2ms
s13="$T/s13"
start_streamer "$SOURCE_URI" "$s13" --io-timeout 2 --rate 2M --batch 1M
s13_pid=$STREAMER_PID
uri13=$STREAMER_URI
wait_field_ge "$s13" regions_present 2 30
kill_source "$SOURCE_PID" KILL
timeout 60 qemu-io -r -f raw -c "read $((30 * MiB)) 4096" "$uri13" >"$T/eio13.out" 2>&1 || true
grep -q "Input/output error" "$T/eio13.out" || fail "a read of a missing region with the source down did not fail: $(cat "$T/eio13.out")"
wait_state "$s13" error 30
j="$(status_json "$s13")"
((  $(jq -r .reads_failed <<<"$j") >= 1 )) || fail "reads_failed after a failed read: $j"
jq -r .hint <<<"$j" | grep -q "by itself" || fail "state error without a hint that it retries: $j"
start_source "$T/src13.sock" --filter=delay file "$img" rdelay=2ms
expect_ok "ctl rate 0" "$IMGSTREAM" ctl "$s13" rate 0
wait_state "$s13" detached 120  # no ctl resume
stop_server_ok "$s13_pid"
expect_ok "the local copy after the outage" qemu-img compare -q -f raw "$s13/data" -F raw "$img"
pass "the source back after an error: hydration resumed by itself (no ctl resume), reads_failed counted"

# ---------------------------------------------------------------- 13. --seed on an existing store
"$IMGSTREAM" pack "$img" -o "$T/disk.pack" >/dev/null 2>&1 || fail "pack failed"
expect_ok "stream of a pack (a store made)" "$IMGSTREAM" stream "$T/disk.pack" --store "$T/sp" \
    --listen "unix:$T/sp.sock" --no-background --run true
before="$(sums "$T/sp")"
rc=0
"$IMGSTREAM" stream "$T/disk.pack" --store "$T/sp" --seed "$img" --listen "unix:$T/sp.sock" \
    --run true >/dev/null 2>"$T/seed.err" || rc=$?
[[ $rc -ne 0 ]] || fail "--seed on an existing store succeeded"
grep -q "imgstream: error: .*--seed needs a new store" "$T/seed.err" || fail "--seed on an existing store: $(cat "$T/seed.err")"
expect_eq "$(grep -c 'imgstream: error' "$T/seed.err")" 1 "error lines of --seed on an existing store"
expect_eq "$(sums "$T/sp")" "$before" "the store after the refused --seed"
pass "--seed on an existing store: 'needs a new store' (exit $rc), the store unchanged"

# ---------------------------------------------------------------- 13. track show in use
cp "$img" "$T/live.img"
start_server "$T/live.img" --track "$T/live.track" --control "$T/live.ctl"
live_pid=$SERVER_PID
live_uri=$SERVER_URI
qemu-io -f raw -c "write -P 0x11 $((4 * MiB)) 64k" -c flush "$live_uri" >/dev/null
track_sum="$(sha256sum <"$T/live.track")"
files="$(ls "$T" | grep "^live")"
rc=0
"$IMGSTREAM" track show "$T/live.track" --json >"$T/show.json" 2>"$T/show.err" || rc=$?
expect_eq "$rc" 0 "track show of a tracking file in use"
grep -q "in use by a running server: showing its last durable state" "$T/show.err" ||
    fail "track show did not say the file is in use: $(cat "$T/show.err")"
expect_eq "$(jq -r .in_use "$T/show.json")" true "track show --json in_use"
((  $(jq -r .dirty_regions "$T/show.json") >= 16 )) || fail "track show names fewer than the 16 regions written: $(cat "$T/show.json")"
expect_eq "$(sha256sum <"$T/live.track")" "$track_sum" "the tracking file after track show"
expect_eq "$(ls "$T" | grep "^live")" "$files" "files of the served disk after track show"
pass "track show of a tracking file in use: read only, says so, names the write"

# ---------------------------------------------------------------- 15. hostile lines, serve --control
img_live_sum="$(sha256sum <"$T/live.img")"
for line in 'take \xff 5\n' 'info\xc0\xaf\n' 'take x 5\n' 'take 0 -1\n' 'hold 5s\n' 'hold 99999999\n' \
    'begin\x00fresh\n' 'switch\n' "$(printf 'x%.0s' $(seq 5000))\n"; do
    reply="$(ctl_raw "$T/live.ctl" "$line")" || fail "no reply to a hostile line on serve --control"
    jq -e 'has("error")' <<<"$reply" >/dev/null || fail "line '${line:0:40}': no error reply: $reply"
done
expect_eq "$(ctl_raw "$T/live.ctl" 'info\n' | jq .held)" false "the disk is not held after the hostile lines"
expect_ok "the server serves after the hostile lines" qemu-io -r -f raw -c "read -P 0x11 $((4 * MiB)) 64k" "$live_uri"
_alive "$live_pid" || fail "serve --control died of a hostile line"
expect_eq "$(sha256sum <"$T/live.img")" "$img_live_sum" "the served image after the hostile lines"
expect_eq "$(sha256sum <"$T/live.track")" "$track_sum" "the tracking file after the hostile lines"
pass "serve --control: invalid UTF-8, bad numbers, a NUL, 5000 bytes: error replies; the server serves, files unchanged"

# ---------------------------------------------------------------- 13. a second migrate after a switch
truncate -s 32M "$T/sw.img"
start_server "$T/sw.img"
sw_pid=$SERVER_PID
sw_uri=$SERVER_URI
expect_ok "migrate --control (switch)" "$IMGSTREAM" migrate --control "$T/live.ctl" --to "$sw_uri"
expect_eq "$(ctl_raw "$T/live.ctl" 'info\n' | jq .switched)" true "info says switched"
sw_sum="$(sha256sum <"$T/sw.img")"
t0=$(date +%s.%N)
rc=0
timeout 60 "$IMGSTREAM" migrate --control "$T/live.ctl" --to "$sw_uri" >/dev/null 2>"$T/again.err" || rc=$?
took=$(elapsed_since "$t0")
expect_eq "$rc" 1 "exit status of a second migrate after a switch"
expect_error_line "$T/again.err" "was switched to .*nothing to migrate" "a second migrate after a switch"
awk -v e="$took" 'BEGIN { exit !(e < 3) }' || fail "the second migrate took ${took}s to refuse"
expect_eq "$(sha256sum <"$T/sw.img")" "$sw_sum" "the target after the refused second migrate"
stop_server_ok "$live_pid"
stop_server_ok "$sw_pid"
pass "a second migrate after a completed switch refuses in ${took}s, the target untouched"

# ---------------------------------------------------------------- 13. migrate: progress, checkpoints
cp "$img" "$T/m.img"
truncate -s 32M "$T/mdst.img"
start_server "$T/m.img" --track "$T/m.track" --control "$T/m.ctl"
m_pid=$SERVER_PID
nbdkit -f -U "$T/mk.sock" --filter=rate file "$T/mdst.img" rate=32M >"$T/mk.log" 2>&1 &
register_pid $!
for _ in $(seq 50); do [[ -S $T/mk.sock ]] && break; sleep 0.1; done
script -qfec "stty cols 80 rows 24; $(printf %q "$IMGSTREAM") migrate --control $(printf %q "$T/m.ctl") --to 'nbd+unix:///?socket=$T/mk.sock' --checkpoint 1 --finish resume" \
    /dev/null >"$T/mtty.out" 2>&1 &
mt=$!
register_pid "$mt"
# 32 MiB at 4 MB/s (32 Mbit/s): about 8 s; a checkpoint every second (256 MiB segments made none).
next=0
for _ in $(seq 40); do
    sleep 0.1
    [[ -s $T/m.track.migration ]] && next=$(jq -r .baseline_next "$T/m.track.migration" 2>/dev/null || echo 0)
    ((next > 0)) && break
done
((next > 0 && next < 32 * MiB)) || fail "no checkpoint within 4 s of a 32 MiB full copy (--checkpoint 1): baseline_next $next"
wait "$mt" || { tail -c 500 "$T/mtty.out" >&2; fail "migrate on a terminal failed"; }
python3 - "$T/mtty.out" <<'PY' || fail "migrate's progress on a terminal"
import re, sys
raw = open(sys.argv[1], "rb").read().decode("utf-8", "replace")
redraws = [l for l in raw.split("\r") if "round 0" in l and "ETA" in l and "MB/s" in l]
if len(redraws) < 3:
    sys.exit(f"{len(redraws)} redrawn progress lines with rate and ETA: {raw[:300]!r}")
if any(len(re.sub(r"\x1b\[K|\n", "", l)) > 79 for l in redraws):
    sys.exit("a progress line wider than 79 columns")
PY
stop_server_ok "$m_pid"
cmp -s "$T/m.img" "$T/mdst.img" || fail "the target differs from the source after migrate"
pass "migrate on a terminal: a redrawn line with rate and ETA; a checkpoint at $next bytes, before 256 MiB"

# ---------------------------------------------------------------- 15. hostile lines, STORE/ctl.sock
s15="$T/s15"
start_streamer "$src" "$s15"
s15_pid=$STREAMER_PID
uri15=$STREAMER_URI
wait_state "$s15" detached 60
sleep 1.5  # the last commit
before="$(sums "$s15")"
for line in 'rate \xff\n' 'status\xc3\n' 'status \xed\xa0\x80\n' 'pause\x00\n' 'rate 5M 6M\n' \
    'pause 5M\n' 'rate -1\n' "$(printf 'y%.0s' $(seq 5000))\n" '\n'; do
    reply="$(ctl_raw "$s15/ctl.sock" "$line")" || fail "no reply to a hostile line on ctl.sock"
    jq -e 'has("error")' <<<"$reply" >/dev/null || fail "line '${line:0:40}': no error reply: $reply"
done
_alive "$s15_pid" || fail "the streamer died of a hostile control line"
expect_eq "$(sums "$s15")" "$before" "the store after the hostile lines"
expect_ok "the streamer serves after the hostile lines" qemu-img compare -q -f raw "$img" -F raw "$uri15"
expect_eq "$(st "$s15" daemon_running)" true "status after the hostile lines"
expect_eq "$(st "$s15" rate_limit)" 0 "rate_limit after the hostile lines"
stop_server_ok "$s15_pid"
pass "ctl.sock: invalid UTF-8, a NUL, words too many, 5000 bytes: error replies; the streamer serves, store unchanged"

# A store whose source path holds an invalid UTF-8 byte: status must not kill the streamer.
odd="$T/odd"$'\xff'".img"
cp "$img" "$odd"
s15b="$T/s15b"
start_streamer "$odd" "$s15b" --rate 1M
s15b_pid=$STREAMER_PID
for args in "" "--json"; do
    rc=0
    # shellcheck disable=SC2086
    "$IMGSTREAM" status "$s15b" $args >"$T/odd.out" 2>"$T/odd.err" || rc=$?
    expect_eq "$rc" 0 "exit status of status $args of a store whose source path holds 0xff"
    _alive "$s15b_pid" || fail "status $args of a store whose source path holds 0xff killed the streamer"
done
jq -e .source "$T/odd.out" >/dev/null || fail "status --json output does not parse: $(head -c 300 "$T/odd.out")"
stop_server_ok "$s15b_pid"
rc=0
"$IMGSTREAM" status "$s15b" --json >"$T/odd.out" 2>"$T/odd.err" || rc=$?
expect_eq "$rc" 0 "exit status of status --json (stored) of that store"
jq -e .source "$T/odd.out" >/dev/null || fail "stored status --json does not parse"
pass "a source path with an invalid UTF-8 byte: status and status --json work, live and stored; the streamer lives"

kill_source "$src_pid" TERM
