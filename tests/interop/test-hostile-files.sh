#!/usr/bin/env bash
# test-hostile-files.sh - slow sources, unknown schemes, failed TLS handshakes, hostile
# packs and corrupt stores each end in one clear error naming the input, at once, in
# bounded memory, with every file as it was and nothing created (issue 12: 6, 10, 18, 19).
#
#   1. SIGINT / SIGTERM while `stream` opens a slow source (nbdkit's delay filter with
#      5 s per read: the fingerprint; a TCP server that never answers the NBD
#      handshake; an HTTP server that never answers, or stops answering after the
#      pack's header): exit 1 within a second, the error says "interrupted", no store
#      directory is made.
#   2. ftp:// and s3:// sources: "unsupported source scheme", not a missing file (stream: a usage error, exit 2).
#   3. https:// to a plain HTTP server, and to one with a certificate nobody trusts:
#      curl's message at once, not 30 s of retries.
#   4. Packs (tests/interop/hostile.py writes them, fixing up the CRC, index hash and
#      identity): two packs of 2^24 zero chunks naming each other as base (a loop); a
#      29 KB pack of 2^24 zero chunks (it opens, in under 200 MB); a header claiming
#      2^24 chunks with a 1 KB index; served over HTTP with base hints /etc/passwd,
#      another server, file:///etc/passwd (the client opens no local file); a base hint
#      naming a FIFO, a FIFO as a pack and as an image.
#   5. Stores: both slots at generation 2^64-1 (an assertion before); a header claiming
#      2^32 regions in a 12 KB meta file (536 MB allocated before): refused by
#      `status`, `status --json` and `stream`, in bounded memory.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
test_init 300
need nbdkit nbdinfo python3 openssl strace sha256sum
[[ -x /usr/bin/time ]] || fail "required tool /usr/bin/time is not installed"

HOSTILE="$(dirname "$0")/hostile.py"
RSS_MAX_KB=$((200 * 1024))

# The checksums of every file under the given paths (sorted), for "nothing changed".
sums() { find "$@" -type f -print0 2>/dev/null | sort -z | xargs -0r sha256sum; }

# expect_error NAME RC PATTERN SECS INPUT -- CMD...: CMD exits RC within SECS seconds,
# using at most RSS_MAX_KB, printing exactly one "imgstream: error:" line, which matches
# PATTERN (grep -E) and names INPUT.
expect_error() {
    local name="$1" rc_want="$2" pattern="$3" secs="$4" input="$5"
    [[ $6 == -- ]] || fail "expect_error $name: no -- before the command"
    shift 6
    local rc=0
    /usr/bin/time -f "%e %M" -o "$T/time" timeout -k 2 $((secs + 5)) "$@" \
        >"$T/out" 2>"$T/err" || rc=$?
    local elapsed rss
    read -r elapsed rss < <(tail -n 1 "$T/time")
    [[ $rc -eq $rc_want ]] || { cat "$T/err" >&2; fail "$name: exit status $rc, expected $rc_want"; }
    local errors
    errors="$(grep -c '^imgstream: error:' "$T/err" || true)"
    [[ $errors -eq 1 ]] || { cat "$T/err" >&2; fail "$name: $errors error lines, expected 1"; }
    local line
    line="$(grep '^imgstream: error:' "$T/err")"
    grep -Eq -- "$pattern" <<<"$line" || fail "$name: error '$line' does not match '$pattern'"
    [[ $line == *"$input"* ]] || fail "$name: error '$line' does not name $input"
    awk -v e="$elapsed" -v s="$secs" 'BEGIN { exit !(e <= s) }' ||
        fail "$name: took ${elapsed}s, more than ${secs}s"
    [[ $rss -le $RSS_MAX_KB ]] || fail "$name: peak RSS ${rss} KiB, more than ${RSS_MAX_KB} KiB"
    note "$name: ${elapsed}s, ${rss} KiB: ${line#imgstream: error: }"
}

# start_py NAME ARGS...: runs hostile.py serve ARGS in the background; sets PY_PORT.
start_py() {
    local name="$1"
    shift
    rm -f "$T/$name.port"
    python3 "$HOSTILE" serve "$1" "$T/$name.port" "${@:2}" >"$T/$name.log" 2>&1 &
    register_pid $!
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -s $T/$name.port ]] && break
        sleep 0.1
    done
    [[ -s $T/$name.port ]] || fail "$name server did not start: $(tail -n 3 "$T/$name.log")"
    PY_PORT="$(cat "$T/$name.port")"
}

# interrupt_stream NAME SIGNAL SOURCE: starts `stream SOURCE`, lets it reach its wait on
# the source, sends SIGNAL, and expects exit 1 within a second with "interrupted", and
# no store directory.
interrupt_stream() {
    local name="$1" sig="$2" source="$3" store="$T/store-$1"
    "$IMGSTREAM" stream "$source" --store "$store" --listen "unix:$T/$name.sock" \
        >"$T/$name.out" 2>"$T/$name.err" &
    local pid=$!
    register_pid "$pid"
    sleep 1.5
    _alive "$pid" || { cat "$T/$name.err" >&2; fail "$name: stream ended before the signal"; }
    local t0 t1 rc=0
    t0="$(date +%s%N)"
    kill -"$sig" "$pid"
    local i
    for ((i = 0; i < 100; i++)); do
        _alive "$pid" || break
        sleep 0.02
    done
    t1="$(date +%s%N)"
    wait "$pid" || rc=$?
    local ms=$(((t1 - t0) / 1000000))
    [[ $rc -eq 1 ]] || { cat "$T/$name.err" >&2; fail "$name: exit status $rc after SIG$sig, expected 1"; }
    [[ $ms -le 1000 ]] || fail "$name: stopped ${ms} ms after SIG$sig, more than a second"
    [[ $(grep -c '^imgstream: error:' "$T/$name.err") -eq 1 ]] &&
        grep -q "^imgstream: error: .*$(sed 's/[?]/./g' <<<"$source").*interrupted" "$T/$name.err" ||
        { cat "$T/$name.err" >&2; fail "$name: no one-line 'interrupted' error naming $source"; }
    [[ ! -e $store ]] || fail "$name: SIG$sig left a store directory $store"
    note "$name: SIG$sig: exit 1 after ${ms} ms"
}

# ---- 1. Stops while `stream` opens a slow source -------------------------------------

mkdir "$T/www"
python3 "$HOSTILE" zero-pack "$T/www/small.pack" --chunks 64
rm -f "$T/delay.sock"
nbdkit -f --unix "$T/delay.sock" --filter=delay memory 64M rdelay=5 >"$T/nbdkit.log" 2>&1 &
register_pid $!
for ((i = 0; i < 100; i++)); do
    [[ -S $T/delay.sock ]] && timeout 5 nbdinfo --can connect "nbd+unix:///?socket=$T/delay.sock" 2>/dev/null && break
    sleep 0.1
done
interrupt_stream delay-int INT "nbd+unix:///?socket=$T/delay.sock"
interrupt_stream delay-term TERM "nbd+unix:///?socket=$T/delay.sock"
start_py stall stall
interrupt_stream handshake-int INT "nbd://127.0.0.1:$PY_PORT"
interrupt_stream http-int INT "http://127.0.0.1:$PY_PORT/disk.pack"
# A server that answers the first two requests (the size, the header), not the index's.
start_py stall2 files "$T/www" --stall-after 2
interrupt_stream http-index-int INT "http://127.0.0.1:$PY_PORT/small.pack"
pass "SIGINT/SIGTERM end a stream opening a slow NBD or HTTP source within a second, no store made"

# ---- 2. Unknown schemes ---------------------------------------------------------------

for url in ftp://example.com/disk.img s3://bucket/disk.pack; do
    expect_error "stream $url" 2 "unsupported source scheme '${url%%:*}' \(expected nbd://" 5 "$url" -- \
        "$IMGSTREAM" stream "$url" --store "$T/store-scheme" --listen "unix:$T/scheme.sock"
    [[ ! -e $T/store-scheme ]] || fail "stream $url made a store directory"
done
expect_error "info ftp://" 1 "unsupported scheme 'ftp'" 5 ftp://example.com/x.pack -- \
    "$IMGSTREAM" info ftp://example.com/x.pack
pass "ftp:// and s3:// are reported as unsupported schemes"

# ---- 4. Hostile packs (made first: 3 serves them) ------------------------------------

N=$((1 << 24))
S=$((N * 4096))
# a.pack and b.pack: images of different sizes (so different identities), each naming
# the other as its base.
python3 "$HOSTILE" zero-pack "$T/www/a.pack" --chunks $N --image-size $S --base-image-size $((S - 1)) --hint b.pack
python3 "$HOSTILE" zero-pack "$T/www/b.pack" --chunks $N --image-size $((S - 1)) --base-image-size $S --hint a.pack
python3 "$HOSTILE" zero-pack "$T/www/big.pack" --chunks $N
python3 "$HOSTILE" zero-pack "$T/www/short.pack" --chunks $N --index-length 1000
for hint in /etc/passwd http://192.0.2.1/base.pack file:///etc/passwd; do
    python3 "$HOSTILE" zero-pack "$T/www/hint-$(echo "$hint" | tr -c 'a-z0-9\n' _).pack" \
        --chunks 16 --base-image-size 4096 --hint "$hint"
done
mkfifo "$T/fifo" "$T/fifo.pack"
python3 "$HOSTILE" zero-pack "$T/fifo-base.pack" --chunks 16 --base-image-size 4096 --hint fifo
before="$(sums "$T/www" "$T"/*.pack)"
size="$(stat -c %s "$T/www/big.pack")"
[[ $size -lt 30000 ]] || fail "big.pack is $size bytes, expected under 30 KB"

expect_error "loop" 1 "b.pack: its base pack .*a.pack: the base chain loops" 10 "$T/www/a.pack" -- \
    "$IMGSTREAM" info "$T/www/a.pack"
expect_error "loop (verify)" 1 "base chain loops" 10 "$T/www/a.pack" -- "$IMGSTREAM" verify "$T/www/a.pack"
expect_error "loop (stream)" 1 "base chain loops" 10 "$T/www/a.pack" -- \
    "$IMGSTREAM" stream "$T/www/a.pack" --store "$T/store-loop" --listen "unix:$T/loop.sock"
[[ ! -e $T/store-loop ]] || fail "stream of a looping pack made a store directory"
expect_error "short index" 1 "index of 1000 bytes cannot hold the 16777216 entries" 10 "$T/www/short.pack" -- \
    "$IMGSTREAM" info "$T/www/short.pack"
# A pack of 2^24 zero chunks in 29 KB is a valid pack (a 64 GiB image of zeros): it
# opens, and costs 4 bytes a chunk, not 1.55 GB.
/usr/bin/time -f "%e %M" -o "$T/time" timeout 60 "$IMGSTREAM" info "$T/www/big.pack" --json >"$T/big.json" ||
    fail "info of a 2^24-chunk zero pack failed: $(cat "$T/big.json")"
read -r elapsed rss < <(tail -n 1 "$T/time")
expect_eq "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["chunks_zero"])' "$T/big.json")" \
    $N "zero chunks of big.pack"
[[ $rss -le $RSS_MAX_KB ]] || fail "info of big.pack: peak RSS ${rss} KiB, more than ${RSS_MAX_KB} KiB"
note "big.pack (2^24 zero chunks, $size bytes): info in ${elapsed}s, ${rss} KiB"
pass "packs: a base loop, an index too short for its chunks refused at once; 2^24 zero chunks in ${rss} KiB"

expect_error "FIFO as base" 1 "its base pack .*fifo is a FIFO, not a regular file" 5 "$T/fifo-base.pack" -- \
    "$IMGSTREAM" info "$T/fifo-base.pack"
expect_error "FIFO as pack" 1 "is a FIFO, not a regular file" 5 "$T/fifo.pack" -- "$IMGSTREAM" info "$T/fifo.pack"
expect_error "FIFO as image" 1 "is a FIFO, not a regular file or block device" 5 "$T/fifo" -- \
    "$IMGSTREAM" stream "$T/fifo" --store "$T/store-fifo" --listen "unix:$T/fifo.sock"
[[ ! -e $T/store-fifo ]] || fail "stream of a FIFO made a store directory"
expect_error "char device as image" 1 "is a character device" 5 /dev/zero -- \
    "$IMGSTREAM" stream /dev/zero --store "$T/store-zero" --listen "unix:$T/zero.sock"
pass "FIFOs and character devices are refused as packs, bases and images, at once"

# ---- 3 and 4: over HTTP --------------------------------------------------------------

start_py www files "$T/www"
www="http://127.0.0.1:$PY_PORT"
strace -f -e trace=open,openat -o "$T/strace.log" "$IMGSTREAM" info "$www/hint-_etc_passwd.pack" \
    >/dev/null 2>"$T/err" && fail "a remote pack with base hint /etc/passwd opened"
grep -q "its base pack $www/passwd: .*404" "$T/err" ||
    fail "base hint /etc/passwd of a remote pack: $(cat "$T/err")"
! grep -q '"/etc/passwd"' "$T/strace.log" || fail "the client opened /etc/passwd for a remote pack's base hint"
expect_error "hint on another server" 1 "base hint http://192.0.2.1/base.pack is on another server" 5 \
    "$www/hint-http___192_0_2_1_base_pack.pack" -- \
    "$IMGSTREAM" info "$www/hint-http___192_0_2_1_base_pack.pack"
strace -f -e trace=open,openat -o "$T/strace.log" "$IMGSTREAM" info "$www/hint-file____etc_passwd.pack" \
    >/dev/null 2>"$T/err" && fail "a remote pack with base hint file:///etc/passwd opened"
grep -q "unsupported scheme 'file'" "$T/err" || fail "base hint file:///etc/passwd: $(cat "$T/err")"
! grep -q '"/etc/passwd"' "$T/strace.log" || fail "the client opened /etc/passwd for a file:// base hint"
expect_error "loop over HTTP" 1 "its base pack $www/b.pack: its base pack $www/a.pack: the base chain loops" 10 \
    "$www/a.pack" -- "$IMGSTREAM" info "$www/a.pack"
pass "a remote pack's base hint never opens a local file or another server"

expect_error "https to plain HTTP" 1 "SSL|TLS|wrong version" 3 "https://127.0.0.1:$PY_PORT/big.pack" -- \
    "$IMGSTREAM" info "https://127.0.0.1:$PY_PORT/big.pack"
openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost -days 1 \
    -keyout "$T/key.pem" -out "$T/cert.pem" >/dev/null 2>&1
start_py tls tls "$T/www" "$T/cert.pem" "$T/key.pem"
expect_error "untrusted certificate" 1 "certificate|SSL" 3 "https://127.0.0.1:$PY_PORT/big.pack" -- \
    "$IMGSTREAM" info "https://127.0.0.1:$PY_PORT/big.pack"
expect_error "untrusted certificate (stream)" 1 "certificate|SSL" 3 "https://127.0.0.1:$PY_PORT/big.pack" -- \
    "$IMGSTREAM" stream "https://127.0.0.1:$PY_PORT/big.pack" --store "$T/store-tls" --listen "unix:$T/tls.sock"
[[ ! -e $T/store-tls ]] || fail "a failed TLS handshake left a store directory"
pass "TLS handshake failures fail at once with curl's message"

expect_eq "$(sums "$T/www" "$T"/*.pack)" "$before" "the hostile packs after every case"

# ---- 5. Corrupt stores ----------------------------------------------------------------

head -c $((4 << 20)) /dev/urandom >"$T/disk.img"
"$IMGSTREAM" stream "$T/disk.img" --store "$T/store" --run true >"$T/make-store.log" 2>&1 ||
    fail "could not make a store: $(tail -n 3 "$T/make-store.log")"
cp -a "$T/store" "$T/store-gen"
python3 "$HOSTILE" store-generation "$T/store-gen/meta" 18446744073709551615  # 2^64 - 1
cp -a "$T/store" "$T/store-regions"
python3 "$HOSTILE" store-regions "$T/store-regions/meta" $((1 << 32))
expect_eq "$(stat -c %s "$T/store-regions/meta")" 12288 "the damaged meta file's size"
for store in store-gen store-regions; do
    case $store in
        store-gen) want="no valid bitmap slot: it is corrupt" ;;
        store-regions) want="is corrupt: meta file is 12288 bytes, its header needs [0-9]+" ;;
    esac
    sums_before="$(sums "$T/$store" "$T/disk.img")"
    expect_error "status of $store" 1 "$want" 5 "$T/$store" -- "$IMGSTREAM" status "$T/$store"
    expect_error "status --json of $store" 1 "$want" 5 "$T/$store" -- "$IMGSTREAM" status --json "$T/$store"
    expect_error "stream into $store" 1 "$want" 10 "$T/$store" -- \
        "$IMGSTREAM" stream "$T/disk.img" --listen "unix:$T/$store.sock" --store "$T/$store"
    expect_eq "$(sums "$T/$store" "$T/disk.img")" "$sums_before" "files of $store"
done
pass "corrupt stores (generation 2^64-1, 2^32 regions in 12 KB) are refused with a message, never an abort"
