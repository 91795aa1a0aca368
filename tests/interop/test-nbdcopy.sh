#!/usr/bin/env bash
# nbdcopy both ways: file -> export (into a sparse, empty export) and
# export -> file, with one and with four connections (multi-conn), and
# export -> null:. Sparse input regions must come out as zeroes.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
test_init 120
need nbdcopy

MiB=$((1024 * 1024))
# Source: 96 MiB + 4 KiB (not a multiple of nbdcopy's request size) with
# random data in places and holes elsewhere.
src="$T/src.img"
size=$((96 * MiB + 4096))
truncate -s "$size" "$src"
make_random_file "$T/rand" 16
dd if="$T/rand" of="$src" bs=1M seek=0 count=3 conv=notrunc status=none
dd if="$T/rand" of="$src" bs=1M seek=10 count=16 conv=notrunc status=none
dd if="$T/rand" of="$src" bs=1M seek=60 count=5 conv=notrunc status=none
dd if="$T/rand" of="$src" bs=4096 seek=$((size / 4096 - 1)) count=1 conv=notrunc status=none

for conns in 1 4; do
    # file -> export: the target starts sparse and all zero except some
    # garbage where the source has holes (nbdcopy must zero it).
    dst="$T/dst$conns.img"
    truncate -s "$size" "$dst"
    dd if="$T/rand" of="$dst" bs=1M seek=40 count=4 conv=notrunc status=none
    start_server "$dst"
    expect_ok "nbdcopy file -> export ($conns connections)" \
        nbdcopy --connections="$conns" --requests=16 "$src" "$SERVER_URI"
    stop_server_ok "$SERVER_PID"
    expect_same_file "$dst" "$src" "file -> export ($conns connections)"
    pass "nbdcopy file -> export, --connections=$conns"

    # export -> file.
    out="$T/out$conns.img"
    start_server "$src" --read-only
    expect_ok "nbdcopy export -> file ($conns connections)" \
        nbdcopy --connections="$conns" --requests=16 "$SERVER_URI" "$out"
    expect_same_file "$out" "$src" "export -> file ($conns connections)"
    pass "nbdcopy export -> file, --connections=$conns"

    # export -> null: (reads everything, checks nothing but the protocol).
    expect_ok "nbdcopy export -> null: ($conns connections)" \
        nbdcopy --connections="$conns" "$SERVER_URI" null:
    # And without block status, so every byte is read.
    expect_ok "nbdcopy --no-extents export -> null:" \
        nbdcopy --no-extents --connections="$conns" "$SERVER_URI" null:
    stop_server_ok "$SERVER_PID"
    pass "nbdcopy export -> null:, --connections=$conns"
done

# export -> export (two imgstream servers), with --flush.
dst="$T/dst-e2e.img"
truncate -s "$size" "$dst"
start_server "$src" --read-only
src_pid="$SERVER_PID" src_uri="$SERVER_URI"
start_server "$dst"
expect_ok "nbdcopy export -> export" nbdcopy --flush --connections=4 "$src_uri" "$SERVER_URI"
stop_server_ok "$SERVER_PID"
stop_server_ok "$src_pid"
expect_same_file "$dst" "$src" "export -> export"
pass "nbdcopy export -> export with --flush"

# An image whose size is not a multiple of 512, over TCP, both ways.
odd="$T/odd.img"
head -c 1000003 /dev/urandom >"$odd"
start_server "$odd" --read-only --listen tcp:127.0.0.1:0
[[ $SERVER_URI == nbd://127.0.0.1:* ]] || fail "tcp URI: $SERVER_URI"
expect_eq "$(nbdinfo --size "$SERVER_URI")" 1000003 "size of an odd-sized export"
expect_ok "nbdcopy odd-sized export -> file over tcp" nbdcopy "$SERVER_URI" "$T/odd.out"
stop_server_ok "$SERVER_PID"
expect_same_file "$T/odd.out" "$odd" "odd-sized export -> file"
truncate -s 1000003 "$T/odd.dst"
start_server "$T/odd.dst" --listen tcp:127.0.0.1:0
expect_ok "nbdcopy file -> odd-sized export over tcp" nbdcopy "$odd" "$SERVER_URI"
stop_server_ok "$SERVER_PID"
expect_same_file "$T/odd.dst" "$odd" "file -> odd-sized export"
pass "nbdcopy with a 1000003-byte export over tcp"
