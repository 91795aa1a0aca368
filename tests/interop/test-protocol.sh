#!/usr/bin/env bash
# Protocol edges that real clients never send (they honour the flags), so a
# raw client (nbd_raw.py) sends them: writes to a read-only export get
# EPERM, requests beyond the end get ENOSPC / EINVAL, oversize, zero-length
# and unknown requests get an error, and the connection survives all of it.
# Clients that vanish with requests in flight, send garbage or truncated
# requests are dropped without harming the server; NBD_OPT_EXPORT_NAME
# (the old way to pick an export) works.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
test_init 60
need python3

raw="$(dirname "$0")/nbd_raw.py"
size=$((64 * 1024 * 1024))
img="$T/disk.img"
truncate -s "$size" "$img"
end=$size
max=$((32 * 1024 * 1024)) # block_size_maximum advertised by imgstream

start_server "$img"
out="$(python3 "$raw" "$SERVER_SOCK" "" flags size 2>"$T/raw.log")" || { cat "$T/raw.log" >&2; fail "raw client handshake"; }
grep -q SEND_FUA <<<"$out" || fail "read-write export lacks SEND_FUA: $out"
grep -q READ_ONLY <<<"$out" && fail "read-write export has READ_ONLY: $out"
expect_eq "$(tail -n 1 <<<"$out")" "$size" "size from NBD_INFO_EXPORT"

checks=(
    "@burst_close"
    "@burst_write_close"
    "@bad_magic"
    "@truncated"
    "@short_write"
    "@export_name"
    "@handshake_abort"
    "read:0:$max=OK"
    "write:0:$max=OK"
    "write:0:$((max + 1))=EINVAL"
    "write:$((end - 1)):1=OK"
    "read:$((end - 1)):1=OK"
    "write:$((end - 1000)):4096=ENOSPC"
    "write_zeroes:$((end - 1000)):4096=ENOSPC"
    "write_zeroes:$end:1=ENOSPC"
    "read:$((end - 1000)):4096=EINVAL"
    "read:$end:1=EINVAL"
    "trim:$((end - 1000)):4096=EINVAL"
    "cache:$((end - 1000)):4096=EINVAL"
    "read:18446744073709551104:1024=EINVAL"
    "write_zeroes:18446744073709551104:1024=ENOSPC|EINVAL"
    "trim:18446744073709551104:1024=EINVAL"
    "read:0:$((max + 1))=EINVAL"
    "write_zeroes:0:$size=OK|EINVAL|EOVERFLOW"
    "trim:0:$size=OK|EINVAL|EOVERFLOW"
    "read:0:0=OK|EINVAL"
    "write_zeroes:0:0=OK|EINVAL"
    "trim:0:0=OK|EINVAL"
    "flush:0:0=OK"
    "write:4096:4096:fua=OK"
    "write_zeroes:8192:65536:fast=OK|ENOTSUP"
    "write_zeroes:8192:65536:nohole=OK"
    "write_zeroes:8192:65536:fua:nohole=OK"
    "trim:8192:65536:fua=OK"
    "99:0:0=EINVAL|ENOTSUP"
)
python3 "$raw" "$SERVER_SOCK" "" "${checks[@]}" 2>"$T/raw.log" || { cat "$T/raw.log" >&2; fail "read-write export: wrong replies (see above)"; }
_alive "$SERVER_PID" || fail "server died after misbehaving clients"
expect_ok "nbdinfo after misbehaving clients" nbdinfo --size "$SERVER_URI"
stop_server_ok "$SERVER_PID"
pass "read-write export: misbehaving clients, out-of-range, oversize and unknown requests"

sum="$(sha256sum <"$img")"
start_server "$img" --read-only
checks=(
    "write:0:4096=EPERM"
    "write_zeroes:0:4096=EPERM"
    "trim:0:4096=EPERM"
    "write:0:4096:fua=EPERM|EINVAL"
    "write:$((end - 1000)):4096=EPERM|ENOSPC"
    "read:0:4096=OK"
    "cache:0:4096=OK"
    "flush:0:0=OK"
)
python3 "$raw" "$SERVER_SOCK" "" "${checks[@]}" 2>"$T/raw.log" || { cat "$T/raw.log" >&2; fail "read-only export: wrong replies (see above)"; }
stop_server_ok "$SERVER_PID"
expect_eq "$(sha256sum <"$img")" "$sum" "image checksum after refused writes"
pass "read-only export refuses write, write_zeroes and trim with EPERM"
