#!/usr/bin/env bash
# Live migration (imgstream migrate) with real peers:
#  1. fio with verify writes through `imgstream serve --track --control`
#     while the disk migrates to `imgstream serve` of a target; after the
#     cutover the served disk switches to the target and fio's verify (which
#     reads back through it) passes.
#  2. The same with --finish hold to a qemu-nbd target: at the cutover, with
#     the machine's I/O held, the target equals the source (qemu-img compare).
#  3. kill -9 of migrate in the middle of its full copy (the target behind
#     nbdkit's rate filter, so it is slow), then migrate again: it continues
#     from the tracking file and the disks are equal at the cutover.
#  4. Offline: migrate IMAGE --to an nbdkit target: identical.
#  5. Active mode: a writer (8 MB/s) faster than the link (nbdkit's rate
#     filter, 4 MB/s, in front of the target): --active mirrors its writes,
#     the migration converges, and at the cutover the target equals the source.
#  6. kill -9 of the serving process in the middle of the full copy, with fio
#     writing: migrate fails with an error, the server restarts on the same
#     tracking file, migrate runs again and continues, and the disks are equal
#     at the cutover (every write the killed server took is copied).
#  7. kill -9 of the target (nbdkit) during active mode: migrate gives up after
#     --stall-limit with an error, the machine's writes go on, the target starts
#     again on its file, migrate --active runs again, and the disks are equal.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
test_init 660
need fio qemu-img qemu-nbd nbdkit python3 jq

MiB=$((1024 * 1024))
make_disk() { # PATH: 512 MiB, 96 MiB of random data in three places
    truncate -s 512M "$1"
    head -c $((32 * MiB)) /dev/urandom | dd of="$1" bs=1M seek=0 conv=notrunc status=none
    head -c $((32 * MiB)) /dev/urandom | dd of="$1" bs=1M seek=200 conv=notrunc status=none
    head -c $((32 * MiB)) /dev/urandom | dd of="$1" bs=1M seek=450 conv=notrunc status=none
}
ctl() { # SOCKET COMMAND -> the JSON reply
    python3 - "$1" "$2" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])
s.sendall((sys.argv[2] + "\n").encode()); print(s.recv(65536).decode().strip())
PY
}
# The end of a case whose migrate left the disk held: let it go, stop the machine and the server.
release_and_stop() { # CONTROL SERVER_PID
    ctl "$1" resume >/dev/null
    kill -TERM "$FIO_PID" 2>/dev/null || true
    wait "$FIO_PID" 2>/dev/null || true
    stop_server_ok "$2"
}
# An nbdkit file target on unix socket SOCK, behind its rate filter when RATE is given;
# its messages go to SOCK.log.
start_nbdkit_target() { # SOCK IMAGE [RATE]
    local filter=()
    [[ -n ${3:-} ]] && filter=(--filter=rate)
    rm -f "$1" "$1.pid"
    # In the foreground (-f): in the background nbdkit sends its messages to syslog.
    nbdkit -f -U "$1" -P "$1.pid" "${filter[@]}" file "$2" ${3:+rate=$3} >>"$1.log" 2>&1 &
    register_pid $!
    for _ in $(seq 50); do [[ -s $1.pid ]] && break; sleep 0.1; done
    [[ -s $1.pid ]] || fail "nbdkit did not start on $1: $(tail -3 "$1.log")"
}
# nbdkit 1.32.5 (Debian 12's) often aborts when a client dies with writes in flight
# through its rate filter ("raw_send_socket: Assertion `sock >= 0' failed": its bug, a
# server must survive any client; seen since migrate pipelines its writes). After a
# kill -9 of migrate a target that died is started again on the same file, as a host
# whose NBD server crashed would be; what it had acknowledged is in the file.
revive_nbdkit_target() { # SOCK IMAGE [RATE]
    nbdinfo --can connect "nbd+unix:///?socket=$1" 2>/dev/null && return 0
    note "nbdkit, the target, died when migrate was killed ($(grep -m1 -o 'Assertion.*' "$1.log" || echo 'no message')); starting it again"
    start_nbdkit_target "$@"
}
# A migrate in the background, to be killed or to see its peer killed. (No `timeout`
# wrapper: kill -9 must reach migrate itself; the test's own bound ends a hung one.)
start_migrate_bg() { # CONTROL TARGET_URI ERR_LOG [ARGS...] -> MIGRATE_PID
    "$IMGSTREAM" migrate --control "$1" --to "$2" "${@:4}" >/dev/null 2>"$3" &
    MIGRATE_PID=$!
    register_pid "$MIGRATE_PID"
}
# A second migrate after a kill: it must say it continued the first, and at the cutover
# (held) the target must equal the source.
migrate_again_equal() { # CONTROL TARGET_URI SOURCE_IMAGE REPORT WHAT
    "$IMGSTREAM" migrate --control "$1" --to "$2" --finish hold --hold-limit 20000 --json \
        >"$4" 2>"$4.err" || fail "migrate again failed: $(tail -3 "$4.err")"
    expect_eq "$(jq .resumed "$4")" "true" "the second migrate continued the first"
    expect_ok "after $5 and a second run the disks are equal at the cutover" \
        qemu-img compare -q -f raw "$3" -F raw "$2"
}
start_fio() { # URI SECONDS LOG [RATE]
    fio --name=machine --ioengine=nbd --uri="$1" --rw=randwrite --bs=4k --size=512M \
        --rate="${4:-8m}" --time_based --runtime="$2" --verify=crc32c --verify_backlog=256 \
        --verify_fatal=1 --verify_state_save=0 >"$3" 2>&1 &
    FIO_PID=$!
    register_pid "$FIO_PID"
}

# ---------------------------------------------------------------- 1. switch, fio verify
make_disk "$T/src.img"
truncate -s 512M "$T/dst.img"
start_server "$T/src.img" --track "$T/src.track" --control "$T/ctl"
src_pid=$SERVER_PID src_uri=$SERVER_URI
start_server "$T/dst.img"
dst_pid=$SERVER_PID dst_uri=$SERVER_URI
start_fio "$src_uri" 8 "$T/fio1.log"
sleep 1
"$IMGSTREAM" migrate --control "$T/ctl" --to "$dst_uri" --json >"$T/report1.json" 2>"$T/migrate1.err" ||
    fail "migrate failed: $(tail -3 "$T/migrate1.err")"
wait "$FIO_PID" || fail "fio's verify failed after the switch: $(grep -E 'verify|err' "$T/fio1.log" | head -5)"
pause="$(jq .pause_ms "$T/report1.json")"
rounds="$(jq '.rounds | length' "$T/report1.json")"
note "report: $(cat "$T/report1.json")"
pass "fio with verify ran through the migration and the switch to the target ($rounds rounds, pause ${pause} ms)"
stop_server_ok "$src_pid"
stop_server_ok "$dst_pid"

# ---------------------------------------------------------------- 2. hold: equal at the cutover
make_disk "$T/src2.img"
truncate -s 512M "$T/dst2.img"
qemu-nbd -f raw -t -e 8 -k "$T/q.sock" "$T/dst2.img" >/dev/null 2>&1 &
register_pid $!
for _ in $(seq 50); do [[ -S $T/q.sock ]] && break; sleep 0.1; done
start_server "$T/src2.img" --track "$T/src2.track" --control "$T/ctl2"
src_pid=$SERVER_PID src_uri=$SERVER_URI
start_fio "$src_uri" 30 "$T/fio2.log"
sleep 1
"$IMGSTREAM" migrate --control "$T/ctl2" --to "nbd+unix:///?socket=$T/q.sock" --finish hold \
    --hold-limit 20000 >/dev/null 2>"$T/migrate2.err" || fail "migrate failed: $(tail -3 "$T/migrate2.err")"
expect_eq "$(ctl "$T/ctl2" info | jq .held)" "true" "the disk is held after --finish hold"
expect_ok "at the cutover the target equals the source" \
    qemu-img compare -q -f raw "$T/src2.img" -F raw "nbd+unix:///?socket=$T/q.sock"
release_and_stop "$T/ctl2" "$src_pid"
pass "with the machine's I/O held at the cutover, qemu-nbd's copy equals the source"

# ---------------------------------------------------------------- 3. kill -9 of migrate, again
make_disk "$T/src3.img"
truncate -s 512M "$T/dst3.img"
# 100 Mbit/s: the first 256 MiB segment (32 MiB of data, and fio's writes) takes about
# 2.7 s, the second as long; --checkpoint 0 makes a checkpoint after each segment, so
# the kill at 3.5 s lands between the first checkpoint and the end of the full copy.
start_nbdkit_target "$T/k.sock" "$T/dst3.img" 100M
start_server "$T/src3.img" --track "$T/src3.track" --control "$T/ctl3"
src_pid=$SERVER_PID src_uri=$SERVER_URI
start_fio "$src_uri" 40 "$T/fio3.log"
start_migrate_bg "$T/ctl3" "nbd+unix:///?socket=$T/k.sock" "$T/m3a.err" --checkpoint 0
sleep 3.5
kill -KILL "$MIGRATE_PID"
wait "$MIGRATE_PID" 2>/dev/null || true
[[ -s $T/src3.track.migration ]] || fail "no migration state was left to continue from"
note "killed migrate at: $(cat "$T/src3.track.migration")"
killed_at="$(jq .baseline_next "$T/src3.track.migration")"
((killed_at > 0)) || fail "the kill came before the first checkpoint: nothing to continue from (timing on this machine?)"
revive_nbdkit_target "$T/k.sock" "$T/dst3.img" 100M
migrate_again_equal "$T/ctl3" "nbd+unix:///?socket=$T/k.sock" "$T/src3.img" "$T/report3.json" "kill -9 of migrate"
# It copied only what lies after the checkpoint in round 0: 64 of the 96 MiB of data when
# the kill came in the second segment.
r0_bytes="$(jq '.rounds[0].bytes' "$T/report3.json")"
((r0_bytes < 96 * MiB)) || fail "the second migrate copied all $r0_bytes bytes again, not from the checkpoint at $killed_at"
release_and_stop "$T/ctl3" "$src_pid"
pass "kill -9 of migrate mid-copy, run again: it continued and the disks are equal"

# ---------------------------------------------------------------- 4. offline
make_disk "$T/off.img"
truncate -s 512M "$T/off-dst.img"
head -c $((8 * MiB)) /dev/urandom >"$T/junk" && dd if="$T/junk" of="$T/off-dst.img" bs=1M seek=300 conv=notrunc status=none
start_nbdkit_target "$T/k4.sock" "$T/off-dst.img"
expect_ok "offline migrate" "$IMGSTREAM" migrate "$T/off.img" --to "nbd+unix:///?socket=$T/k4.sock"
expect_ok "the target equals the image (its old data in the holes zeroed)" \
    qemu-img compare -q -f raw "$T/off.img" -F raw "$T/off-dst.img"
pass "offline migrate to nbdkit: identical, holes zeroed on the target"

# ---------------------------------------------------------------- 5. active: a writer faster than the link
truncate -s 512M "$T/src5.img"
head -c $((16 * MiB)) /dev/urandom | dd of="$T/src5.img" bs=1M seek=100 conv=notrunc status=none
truncate -s 512M "$T/dst5.img"
# 32 Mbit/s = 4 MB/s to the target; the machine writes 8 MB/s.
start_nbdkit_target "$T/k5.sock" "$T/dst5.img" 32M
start_server "$T/src5.img" --track "$T/src5.track" --control "$T/ctl5"
src_pid=$SERVER_PID src_uri=$SERVER_URI
start_fio "$src_uri" 120 "$T/fio5.log" 8m
sleep 1
timeout 150 "$IMGSTREAM" migrate --control "$T/ctl5" --to "nbd+unix:///?socket=$T/k5.sock" --active \
    --finish hold --hold-limit 30000 --json >"$T/report5.json" 2>"$T/m5.err" ||
    fail "active migrate failed: $(tail -3 "$T/m5.err")"
note "report: $(cat "$T/report5.json")"
expect_eq "$(jq .active "$T/report5.json")" "true" "the report says active mode"
mirrored="$(jq .mirrored_bytes "$T/report5.json")"
((mirrored > 0)) || fail "active mode mirrored nothing: $(cat "$T/report5.json")"
expect_eq "$(ctl "$T/ctl5" info | jq .held)" "true" "the disk is held after --finish hold"
expect_eq "$(ctl "$T/ctl5" info | jq .active)" "false" "mirroring is off after the cutover"
expect_ok "at the cutover the target equals the source" \
    qemu-img compare -q -f raw "$T/src5.img" -F raw "$T/dst5.img"
release_and_stop "$T/ctl5" "$src_pid"
grep -q "err= 0" "$T/fio5.log" || fail "fio reported errors: $(grep -E 'err|verify' "$T/fio5.log" | head -3)"
pass "active mode: an 8 MB/s writer over a 4 MB/s link converged ($(jq -c '{seconds, pause_ms, mirrored_bytes, cutover_bytes}' "$T/report5.json"))"


# ---------------------------------------------------------------- 6. kill -9 of the server, again
make_disk "$T/src6.img"
truncate -s 512M "$T/dst6.img"
start_nbdkit_target "$T/k6.sock" "$T/dst6.img" 100M
start_server "$T/src6.img" --track "$T/src6.track" --control "$T/ctl6"
src_pid=$SERVER_PID src_uri=$SERVER_URI
# The machine dies with its server: fio's own verdict on this run is not the test's.
fio --name=machine --ioengine=nbd --uri="$src_uri" --rw=randwrite --bs=4k --size=512M \
    --rate=8m --time_based --runtime=30 >"$T/fio6a.log" 2>&1 &
fio_a=$!
register_pid "$fio_a"
start_migrate_bg "$T/ctl6" "nbd+unix:///?socket=$T/k6.sock" "$T/m6a.err" --checkpoint 0
sleep 3.5
kill -KILL "$src_pid"
wait "$src_pid" 2>/dev/null || true
if wait "$MIGRATE_PID"; then fail "migrate succeeded although its server was killed"; fi
grep -q "imgstream: error:" "$T/m6a.err" || fail "migrate did not say why it stopped: $(tail -3 "$T/m6a.err")"
note "migrate's error: $(tail -1 "$T/m6a.err")"
wait "$fio_a" 2>/dev/null || true
[[ -s $T/src6.track.migration ]] || fail "no migration state was left to continue from"
revive_nbdkit_target "$T/k6.sock" "$T/dst6.img" 100M
start_server "$T/src6.img" --track "$T/src6.track" --control "$T/ctl6"
src_pid=$SERVER_PID src_uri=$SERVER_URI
start_fio "$src_uri" 40 "$T/fio6b.log"
migrate_again_equal "$T/ctl6" "nbd+unix:///?socket=$T/k6.sock" "$T/src6.img" "$T/report6.json" \
    "kill -9 of the server"
note "report: $(cat "$T/report6.json")"
release_and_stop "$T/ctl6" "$src_pid"
pass "kill -9 of the serving process mid-copy, restart, migrate again: it continued and the disks are equal"

# ---------------------------------------------------------------- 7. kill -9 of the target in active mode
truncate -s 512M "$T/src7.img"
head -c $((16 * MiB)) /dev/urandom | dd of="$T/src7.img" bs=1M seek=100 conv=notrunc status=none
truncate -s 512M "$T/dst7.img"
start_nbdkit_target "$T/k7.sock" "$T/dst7.img" 32M
k7_pid="$(cat "$T/k7.sock.pid")"
start_server "$T/src7.img" --track "$T/src7.track" --control "$T/ctl7"
src_pid=$SERVER_PID src_uri=$SERVER_URI
start_fio "$src_uri" 90 "$T/fio7.log" 4m
start_migrate_bg "$T/ctl7" "nbd+unix:///?socket=$T/k7.sock" "$T/m7a.err" --active --stall-limit 3
for _ in $(seq 300); do [[ $(ctl "$T/ctl7" info | jq .active) == true ]] && break; sleep 0.1; done
[[ $(ctl "$T/ctl7" info | jq .active) == true ]] || fail "active mode did not begin within 30 s"
sleep 1
kill -KILL "$k7_pid"
if wait "$MIGRATE_PID"; then fail "migrate succeeded although its target was killed"; fi
grep -q "nothing reached the target" "$T/m7a.err" || fail "migrate did not say why it stopped: $(tail -2 "$T/m7a.err")"
expect_eq "$(ctl "$T/ctl7" info | jq .active)" "false" "mirroring is off after the target died"
_alive "$FIO_PID" || fail "the machine's writes stopped with the target: $(tail -3 "$T/fio7.log")"
start_nbdkit_target "$T/k7.sock" "$T/dst7.img" 32M
timeout 150 "$IMGSTREAM" migrate --control "$T/ctl7" --to "nbd+unix:///?socket=$T/k7.sock" --active \
    --finish hold --hold-limit 20000 --json >"$T/report7.json" 2>"$T/m7b.err" ||
    fail "migrate again failed: $(tail -3 "$T/m7b.err")"
expect_eq "$(jq .resumed "$T/report7.json")" "true" "the second migrate continued the first"
expect_ok "after kill -9 of the target and a second run the disks are equal at the cutover" \
    qemu-img compare -q -f raw "$T/src7.img" -F raw "$T/dst7.img"
release_and_stop "$T/ctl7" "$src_pid"
grep -q "err= 0" "$T/fio7.log" || fail "fio reported errors: $(grep -E 'err|verify' "$T/fio7.log" | head -3)"
pass "kill -9 of the target in active mode: migrate stopped saying why, the machine wrote on; again: equal ($(jq -c '{seconds, pause_ms}' "$T/report7.json"))"
