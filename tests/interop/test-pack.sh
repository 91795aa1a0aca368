#!/usr/bin/env bash
# Packs (docs/pack-format.md) with local files: raw -> pack -> unpack equals
# the raw image (qemu-img compare) for the bootable test disk, a random image
# and a sparse one; `serve NAME.pack` reads back the same (and shows zero
# chunks as holes); `stream NAME.pack` hydrates to an identical copy.
# Damage: a flipped byte in a chunk, in the index and in the header: `verify`
# names what is bad; a stream refuses to store the bad chunk (the read fails,
# the region stays missing, the store reports the error) and never serves it,
# while the other chunks stream fine. Versions: a delta pack (--base) holds
# only the changed chunks, `pack diff` counts them, its chain unpacks and
# streams right, and `stream --seed OLD` fetches only what `pack diff` said.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/stream.sh"
test_init 600
need qemu-img qemu-io nbdinfo jq python3

MiB=$((1024 * 1024))

roundtrip() { # NAME IMAGE [PACK-ARGS...]
    local name="$1" img="$2"
    shift 2
    expect_ok "pack $name" "$IMGSTREAM" pack "$img" -o "$T/$name.pack" -q "$@"
    expect_ok "verify $name" "$IMGSTREAM" verify -q "$T/$name.pack"
    expect_ok "unpack $name" "$IMGSTREAM" unpack -q "$T/$name.pack" -o "$T/$name.out"
    expect_ok "unpack of $name equals the image" qemu-img compare -q -f raw "$img" -F raw "$T/$name.out"
    pass "$name: pack -> unpack is the same image ($(stat -c %s "$T/$name.pack") bytes packed of $(stat -c %s "$img"))"
}

# ---------------------------------------------------------------- 1. round trips
cache="${IMGSTREAM_CACHE:-$REPO_ROOT/.cache}"
mkdir -p "$cache"
"$REPO_ROOT/tests/fixtures/make-boot-disk.sh" "$cache/boot-disk.img" >"$T/make.log" 2>&1 ||
    { tail -20 "$T/make.log" >&2; fail "could not build the bootable test disk"; }
cp "$cache/boot-disk.img" "$T/boot.img"
roundtrip boot "$T/boot.img"
head -c $((40 * MiB + 12345)) /dev/urandom >"$T/random.img"
roundtrip random "$T/random.img" --chunk-size 64K
make_holey_image "$T/sparse.img" 64
roundtrip sparse "$T/sparse.img" --chunk-size 1M --level 9
zero_chunks="$("$IMGSTREAM" info --json "$T/sparse.pack" | jq .chunks_zero)"
((zero_chunks > 0)) || fail "the sparse image packed without zero chunks"

# ---------------------------------------------------------------- 2. serve and stream a pack
start_server "$T/boot.pack"
expect_ok "serve boot.pack reads back the image" qemu-img compare -q -f raw "$T/boot.img" -F raw "$SERVER_URI"
writable="$(nbdinfo --json "$SERVER_URI" | jq -r '.exports[0]."is_read_only"')"
expect_eq "$writable" "true" "a served pack is read-only"
stop_server_ok "$SERVER_PID"
start_server "$T/sparse.pack"
holes="$(nbdinfo --map "$SERVER_URI" | grep -c 'hole,zero' || true)"
((holes > 0)) || fail "serve of a pack shows no holes for its zero chunks"
stop_server_ok "$SERVER_PID"
pass "serve NAME.pack: the same bytes, read-only, zero chunks as holes"

start_streamer "$T/boot.pack" "$T/s-boot"
wait_state "$T/s-boot" detached 120
expect_ok "stream of boot.pack equals the image" qemu-img compare -q -f raw "$T/boot.img" -F raw "$STREAMER_URI"
cs="$("$IMGSTREAM" info --json "$T/boot.pack" | jq .chunk_size)"
expect_eq "$(st "$T/s-boot" region_size)" "$cs" "a pack store's regions are its chunks"
[[ -s $T/s-boot/pack.index ]] || fail "the store did not keep the pack's index"
stop_server_ok "$STREAMER_PID"
pass "stream NAME.pack hydrates an identical copy and keeps the index"

# ---------------------------------------------------------------- 3. damage
# The first stored zstd chunk of random.pack's neighbour: use boot.pack (compressible).
# The first zstd chunk after the first few (tests/interop/pack_index.py lists the index).
read -r bad_chunk bad_off bad_len < <(python3 "$(dirname "$0")/pack_index.py" "$T/boot.pack" |
    awk '$2 == 1 && $1 > 4 { print $1, $3, $4; exit }')
[[ -n $bad_chunk ]] || fail "no zstd chunk found in boot.pack"
flip() { # SRC DST OFFSET
    cp "$1" "$2"
    python3 - "$2" "$3" <<'PY'
import sys
p, at = sys.argv[1], int(sys.argv[2])
with open(p, "r+b") as f:
    f.seek(at); c = f.read(1); f.seek(at); f.write(bytes([c[0] ^ 0x20]))
PY
}
flip "$T/boot.pack" "$T/bad-chunk.pack" $((bad_off + bad_len / 2))
out="$("$IMGSTREAM" verify "$T/bad-chunk.pack" 2>&1)" && fail "verify passed a pack with a corrupt chunk"
grep -q "chunk $bad_chunk " <<<"$out" || fail "verify did not name chunk $bad_chunk: $out"
pass "verify names the corrupt chunk $bad_chunk"

index_off="$(python3 -c 'import struct,sys; print(struct.unpack_from("<Q", open(sys.argv[1],"rb").read(), 40)[0])' "$T/boot.pack")"
flip "$T/boot.pack" "$T/bad-index.pack" $((index_off + 20))
out="$("$IMGSTREAM" verify "$T/bad-index.pack" 2>&1)" && fail "verify passed a pack with a damaged index"
grep -q "index" <<<"$out" || fail "verify did not blame the index: $out"
flip "$T/boot.pack" "$T/bad-header.pack" 20
out="$("$IMGSTREAM" verify "$T/bad-header.pack" 2>&1)" && fail "verify passed a pack with a damaged header"
grep -q "header" <<<"$out" || fail "verify did not blame the header: $out"
rc=0
"$IMGSTREAM" stream "$T/bad-index.pack" --store "$T/s-bad-index" --listen "unix:$T/x.sock" \
    >/dev/null 2>"$T/bad-index.err" || rc=$?
expect_eq "$rc" "1" "stream of a pack with a damaged index exits 1"
grep -q "index" "$T/bad-index.err" || fail "stream did not say the index is bad: $(cat "$T/bad-index.err")"
pass "a damaged index or header: verify says which, stream refuses to start"

# A stream of the pack with the corrupt chunk: on demand only, so we see each read.
start_streamer "$T/bad-chunk.pack" "$T/s-bad" --no-background
bad_at=$((bad_chunk * cs))
expect_fail "reading the corrupt chunk through the stream fails" \
    qemu-io -r -f raw "$STREAMER_URI" -c "read $bad_at 4096"
expect_ok "the chunk before it reads fine" qemu-io -r -f raw "$STREAMER_URI" -c "read -P 0 0 0" -c "read $((bad_at - cs)) 4096"
present="$(nbdinfo --map=imgstream:present "$STREAMER_URI" | awk -v a="$bad_at" '$1 <= a && a < $1 + $2 {print $3}')"
expect_eq "$present" "0" "the corrupt chunk's region is not present in the store"
grep -q "corrupt" "$STREAMER_ERR" || fail "the streamer did not report the corrupt chunk: $(tail -3 "$STREAMER_ERR")"
stop_server "$STREAMER_PID"
# With background hydration the failure puts the store in the error state.
start_streamer "$T/bad-chunk.pack" "$T/s-bad2"
wait_state "$T/s-bad2" error 60
err="$(st "$T/s-bad2" error)"
grep -q "corrupt" <<<"$err" || fail "status error does not say corrupt: $err"
stop_server "$STREAMER_PID"
pass "a corrupt chunk is never stored or served; the stream reports it (status: $err)"

# ---------------------------------------------------------------- 4. versions
cp "$T/boot.img" "$T/v2.img"
# Change 3 MiB in the middle of the image (as an updated file would).
head -c $((3 * MiB)) /dev/urandom | dd of="$T/v2.img" bs=1M seek=20 conv=notrunc status=none
expect_ok "pack v2 on top of boot.pack" "$IMGSTREAM" pack "$T/v2.img" -o "$T/v2.pack" --base "$T/boot.pack" -q
diff_json="$("$IMGSTREAM" pack diff --json "$T/boot.pack" "$T/v2.pack")"
new_chunks="$(jq .new_chunks <<<"$diff_json")"
new_bytes="$(jq .new_bytes_stored <<<"$diff_json")"
expect_eq "$new_chunks" "$((3 * MiB / cs))" "chunks new in v2 (3 MiB, chunk-aligned)"
v2_size="$(stat -c %s "$T/v2.pack")"
((v2_size < 4 * MiB + 65536)) || fail "the delta pack is $v2_size bytes: it holds more than the changed chunks"
expect_ok "unpack of the chain" "$IMGSTREAM" unpack -q "$T/v2.pack" -o "$T/v2.out"
expect_ok "the chain unpacks to v2" qemu-img compare -q -f raw "$T/v2.img" -F raw "$T/v2.out"
start_streamer "$T/v2.pack" "$T/s-v2"
wait_state "$T/s-v2" detached 120
expect_ok "the chain streams to v2" qemu-img compare -q -f raw "$T/v2.img" -F raw "$STREAMER_URI"
stop_server_ok "$STREAMER_PID"
start_streamer "$T/v2.pack" "$T/s-seed" --seed "$T/s-boot"
wait_state "$T/s-seed" detached 120
expect_ok "a seeded stream is v2" qemu-img compare -q -f raw "$T/v2.img" -F raw "$STREAMER_URI"
fetched=$(( $(st "$T/s-seed" bytes_fetched_demand) + $(st "$T/s-seed" bytes_fetched_background) + $(st "$T/s-seed" bytes_prefetched) ))
stored=$(( $(jq .new_bytes_image <<<"$diff_json") ))
expect_eq "$fetched" "$stored" "bytes fetched by a stream seeded with v1 = the new chunks' bytes"
stop_server_ok "$STREAMER_PID"
pass "delta pack: $new_chunks new chunks ($new_bytes bytes stored), chain unpacks and streams; seeded stream fetched $fetched bytes"
