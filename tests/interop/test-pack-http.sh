#!/usr/bin/env bash
# Packs over HTTP (issue 5): nginx on loopback serves a directory of packs and
# `imgstream stream http://127.0.0.1:PORT/NAME.pack` streams from it.
#   1. The bootable test disk boots under qemu (TCG) through the stream (the
#      guest checks the md5 of its data files); after hydration (detached)
#      the store's copy equals the disk.
#   2. nginx with `max_ranges 0` answers every range request with 200 and the
#      whole body: the stream still makes an identical copy.
#   3. Connections cut mid-body: nginx slowed by `limit_rate` is killed (-9)
#      while hydration runs and restarted a second later on the same port: the
#      stream retries and reaches detached with an identical copy.
#   4. A corrupt chunk served over HTTP is never stored or served: the read
#      fails, the region stays missing, status says corrupt.
#   5. A delta pack chain: v2.pack (--base disk.pack, a relative hint, so it
#      resolves next to v2.pack on the server) streams to v2; a stream seeded
#      with the v1 store fetches only the new chunks (`pack diff`), and
#      nginx's access log shows no other chunk data sent.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/stream.sh"
source "$(dirname "$0")/../lib/nginx.sh"
test_init 900
need nginx qemu-system-x86_64 qemu-img qemu-io nbdinfo jq python3

MiB=$((1024 * 1024))
NGINX="$(command -v nginx)"

# ---------------------------------------------------------------- nginx
# nginx_conf NAME ROOT PORT [DIRECTIVES]: $T/nginx-NAME/nginx.conf (tests/lib/nginx.sh),
# its error log shown when the test fails.
nginx_conf() {
    nginx_write_conf "$T/nginx-$1" "$2" "$3" "${4:-}"
    _SERVER_LOGS+=("$T/nginx-$1/error.log")
}

# nginx_start NAME: start (or restart) nginx NAME and wait until it answers;
# sets NGINX_PID.
nginx_start() {
    local d="$T/nginx-$1" port i
    port="$(sed -n 's/^ *listen 127.0.0.1:\([0-9]*\);/\1/p' "$d/nginx.conf")"
    "$NGINX" -c "$d/nginx.conf" -p "$d" >>"$d/stderr.log" 2>&1 &
    NGINX_PID=$!
    register_pid "$NGINX_PID"
    for ((i = 0; i < 100; i++)); do
        _alive "$NGINX_PID" || fail "nginx $1 exited at start: $(tail -n 5 "$d/stderr.log" "$d/error.log")"
        curl -s -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null && return 0
        sleep 0.1
    done
    fail "nginx $1 did not answer on port $port within 10 s"
}

# body_bytes NAME URI: the body bytes nginx NAME sent for URI so far.
body_bytes() {
    awk -v u="$2" '$2 == u { s += $4 } END { print s + 0 }' "$T/nginx-$1/access.log"
}

# pack_field PACK FIELD: one field of `imgstream info --json`.
pack_field() { "$IMGSTREAM" info --json "$1" | jq -r --arg f "$2" '.[$f]'; }

# ---------------------------------------------------------------- the disk and its pack
cache="${IMGSTREAM_CACHE:-$REPO_ROOT/.cache}"
mkdir -p "$cache"
"$REPO_ROOT/tests/fixtures/make-boot-disk.sh" "$cache/boot-disk.img" >"$T/make.log" 2>&1 ||
    { tail -20 "$T/make.log" >&2; fail "could not build the bootable test disk"; }
md5="$(cat "$cache/boot-disk.img.md5")"
# A private copy: the cache may be rebuilt under us.
disk="$T/disk.img"
cp "$cache/boot-disk.img" "$disk"
www="$T/www"
mkdir -p "$www"
expect_ok "pack the boot disk" "$IMGSTREAM" pack "$disk" -o "$www/disk.pack" -q
index_off="$(python3 -c 'import struct,sys; print(struct.unpack_from("<Q", open(sys.argv[1],"rb").read(64), 40)[0])' "$www/disk.pack")"

port="$(nginx_free_port)"
nginx_conf plain "$www" "$port"
nginx_start plain
url="http://127.0.0.1:$port"

# ---------------------------------------------------------------- 1. boot through the stream
store="$T/s-boot"
# Background hydration paused during the boot: every read the guest makes of
# a missing chunk goes to nginx on demand. Resumed afterwards.
start_streamer "$url/disk.pack" "$store" --paused
out="$(BOOT_EXPECT_MD5="$md5" "$REPO_ROOT/tests/lib/boot.sh" "$STREAMER_URI" 300)" ||
    fail "the guest did not boot through stream $url/disk.pack: $out"
grep -q "IMGSTREAM-BOOT-OK $md5" <<<"$out" || fail "marker missing booting through HTTP: $out"
secs="$(sed -n 's/^elapsed_seconds=//p' <<<"$out")"
demand="$(st "$store" bytes_fetched_demand)"
((demand > 0)) || fail "the boot fetched nothing on demand: the test tests nothing"
expect_eq "$(st "$store" bytes_fetched_background)" 0 "bytes hydrated in the background while paused"
requests="$(grep -c ' /disk.pack 206 ' "$T/nginx-plain/access.log" || true)"
((requests > 0)) || fail "nginx logged no 206 (partial content) answer for disk.pack"
expect_ok "ctl resume" "$IMGSTREAM" ctl "$store" resume
wait_state "$store" detached 300
stop_server_ok "$STREAMER_PID"
expect_ok "the store's copy equals the disk" qemu-img compare -q -f raw "$store/data" -F raw "$disk"
pass "booted through stream $url/disk.pack in ${secs}s ($((demand / MiB)) MiB on demand in $requests range requests); hydrated copy identical"

# ---------------------------------------------------------------- 2. a server that ignores ranges
port2="$(nginx_free_port)"
nginx_conf noranges "$www" "$port2" "max_ranges 0;"
nginx_start noranges
rc=0
"$IMGSTREAM" stream "http://127.0.0.1:$port2/disk.pack" --store "$T/s-noranges" --run \
    "qemu-img compare -q -f raw $(printf %q "$disk") -F raw \"\$uri\"" >"$T/noranges.out" 2>"$T/noranges.err" || rc=$?
((rc == 0)) || { tail -n 20 "$T/noranges.err" >&2; fail "qemu-img compare through a stream from nginx max_ranges 0: exit $rc"; }
ok200="$(grep -c ' /disk.pack 200 ' "$T/nginx-noranges/access.log" || true)"
partial="$(grep -c ' /disk.pack 206 ' "$T/nginx-noranges/access.log" || true)"
((ok200 > 0 && partial == 0)) || fail "nginx max_ranges 0 answered $ok200 x 200 and $partial x 206: not what the test needs"
pass "nginx answering 200 (whole body) to $ok200 range requests: the stream's copy is identical"

# ---------------------------------------------------------------- 3. nginx killed mid-body
# Each connection limited so that hydration takes about 20 s (4 in flight).
port3="$(nginx_free_port)"
rate=$(($(pack_field "$www/disk.pack" file_size) / 80))
((rate >= 65536)) || rate=65536
nginx_conf slow "$www" "$port3" "limit_rate $rate;"
nginx_start slow
slow_pid=$NGINX_PID
store="$T/s-cut"
start_streamer "http://127.0.0.1:$port3/disk.pack" "$store"
cut_pid=$STREAMER_PID
wait_field_ge "$store" bytes_fetched_background $(($(stat -c %s "$disk") / 16)) 60
before="$(status_json "$store")"
kill -KILL "$slow_pid"
{ wait "$slow_pid"; } 2>/dev/null || true
expect_eq "$(jq -r .state <<<"$before")" streaming "state when nginx was killed"
present="$(jq -r .regions_present <<<"$before")"
total="$(jq -r .regions_total <<<"$before")"
((present < total / 2)) || fail "hydration was too far ($present of $total regions) when nginx was killed"
lines_before="$(wc -l <"$T/nginx-slow/access.log")"
sleep 1
nginx_start slow
wait_state "$store" detached 300
lines_after="$(wc -l <"$T/nginx-slow/access.log")"
((lines_after > lines_before)) || fail "no request reached the restarted nginx"
expect_eq "$(st "$store" error)" "" "status error after the recovery"
stop_server_ok "$cut_pid"
expect_ok "the copy after the cut equals the disk" qemu-img compare -q -f raw "$store/data" -F raw "$disk"
pass "nginx (limit_rate $rate) killed -9 at $present of $total chunks and restarted: the stream retried, detached, identical copy"

# ---------------------------------------------------------------- 4. a corrupt chunk over HTTP
# The first zstd chunk after the first few (tests/interop/pack_index.py lists the index).
read -r bad_chunk bad_off bad_len < <(python3 "$(dirname "$0")/pack_index.py" "$www/disk.pack" |
    awk '$2 == 1 && $1 > 4 { print $1, $3, $4; exit }')
[[ -n $bad_chunk ]] || fail "no zstd chunk found in disk.pack"
cp "$www/disk.pack" "$www/bad.pack"
python3 - "$www/bad.pack" $((bad_off + bad_len / 2)) <<'PY'
import sys
p, at = sys.argv[1], int(sys.argv[2])
with open(p, "r+b") as f:
    f.seek(at); c = f.read(1); f.seek(at); f.write(bytes([c[0] ^ 0x20]))
PY
chunk_size="$(pack_field "$www/disk.pack" chunk_size)"
bad_at=$((bad_chunk * chunk_size))
start_streamer "$url/bad.pack" "$T/s-bad" --no-background
expect_fail "reading the corrupt chunk through the stream fails" \
    qemu-io -r -f raw "$STREAMER_URI" -c "read $bad_at 4096"
expect_ok "the chunk before it reads fine" qemu-io -r -f raw "$STREAMER_URI" -c "read $((bad_at - chunk_size)) 4096"
present="$(nbdinfo --map=imgstream:present "$STREAMER_URI" | awk -v a="$bad_at" '$1 <= a && a < $1 + $2 {print $3}')"
expect_eq "$present" "0" "the corrupt chunk's region is not present in the store"
grep -q "corrupt" "$STREAMER_ERR" || fail "the streamer did not report the corrupt chunk: $(tail -3 "$STREAMER_ERR")"
fetched_bad="$(grep -c " /bad.pack 206 [0-9]* \"bytes=$bad_off-" "$T/nginx-plain/access.log" || true)"
((fetched_bad >= 1)) || fail "nginx's log shows no request for the corrupt chunk at $bad_off"
stop_server "$STREAMER_PID"
start_streamer "$url/bad.pack" "$T/s-bad2"
wait_state "$T/s-bad2" error 120
err="$(st "$T/s-bad2" error)"
grep -q "corrupt" <<<"$err" || fail "status error does not say corrupt: $err"
stop_server "$STREAMER_PID"
pass "a corrupt chunk over HTTP (chunk $bad_chunk, fetched $fetched_bad times) is never stored or served; status: $err"

# ---------------------------------------------------------------- 5. a delta chain over HTTP
cp "$disk" "$T/v2.img"
head -c $((3 * MiB)) /dev/urandom | dd of="$T/v2.img" bs=1M seek=20 conv=notrunc status=none
# From inside the served directory, so that the base hint is the relative name "disk.pack".
(cd "$www" && "$IMGSTREAM" pack "$T/v2.img" -o v2.pack --base disk.pack -q) >"$T/pack-v2.log" 2>&1 ||
    { cat "$T/pack-v2.log" >&2; fail "pack v2 --base disk.pack failed"; }
diff_json="$("$IMGSTREAM" pack diff --json "$www/disk.pack" "$www/v2.pack")"
new_chunks="$(jq .new_chunks <<<"$diff_json")"
new_stored="$(jq .new_bytes_stored <<<"$diff_json")"
new_image="$(jq .new_bytes_image <<<"$diff_json")"
expect_eq "$new_chunks" "$((3 * MiB / chunk_size))" "chunks new in v2 (3 MiB changed)"

mark="$(wc -l <"$T/nginx-plain/access.log")"
start_streamer "$url/v2.pack" "$T/s-v2"
wait_state "$T/s-v2" detached 300
expect_ok "the chain over HTTP streams to v2" qemu-img compare -q -f raw "$T/v2.img" -F raw "$STREAMER_URI"
stop_server_ok "$STREAMER_PID"
tail -n +"$((mark + 1))" "$T/nginx-plain/access.log" | grep -q ' /disk.pack 206 ' ||
    fail "the stream of v2.pack fetched nothing from its base disk.pack over HTTP"
pass "delta pack v2.pack (base hint 'disk.pack', $new_chunks new chunks) streams over HTTP to v2"

# The seeded stream: its requests alone in the access log.
log="$T/nginx-plain/access.log"
mark="$(wc -l <"$log")"
start_streamer "$url/v2.pack" "$T/s-seed" --seed "$T/s-boot"
wait_state "$T/s-seed" detached 300
expect_ok "a seeded stream is v2" qemu-img compare -q -f raw "$T/v2.img" -F raw "$STREAMER_URI"
stop_server_ok "$STREAMER_PID"
fetched=$(( $(st "$T/s-seed" bytes_fetched_demand) + $(st "$T/s-seed" bytes_fetched_background) + $(st "$T/s-seed" bytes_prefetched) ))
expect_eq "$fetched" "$new_image" "bytes fetched by a stream seeded with v1 = the new chunks' bytes (pack diff new_bytes_image)"
tail -n +"$((mark + 1))" "$log" >"$T/seed-requests.log"
# Chunk data sent = body bytes of the requests whose range starts inside the
# data area [4096, index offset) of its pack.
v2_index_off="$(python3 -c 'import struct,sys; print(struct.unpack_from("<Q", open(sys.argv[1],"rb").read(64), 40)[0])' "$www/v2.pack")"
data_sent() { # URI INDEX_OFFSET
    awk -v u="$1" -v io="$2" '$2 == u { r = $5; gsub(/"|bytes=/, "", r); split(r, a, "-");
        if (r != "" && a[1] + 0 >= 4096 && a[1] + 0 < io) s += $4 } END { print s + 0 }' "$T/seed-requests.log"
}
v2_data="$(data_sent /v2.pack "$v2_index_off")"
v1_data="$(data_sent /disk.pack "$index_off")"
v2_all="$(awk '$2 == "/v2.pack" { s += $4 } END { print s + 0 }' "$T/seed-requests.log")"
v2_meta=$((4096 + $(pack_field "$www/v2.pack" file_size) - v2_index_off))
expect_eq "$v2_data" "$new_stored" "chunk bytes nginx sent from v2.pack to the seeded stream (pack diff new_bytes_stored)"
expect_eq "$v1_data" "0" "chunk bytes nginx sent from disk.pack to the seeded stream"
((v2_all <= v2_data + v2_meta + 4096)) ||
    fail "nginx sent $v2_all bytes of v2.pack: more than its chunks ($v2_data) and its header + index ($v2_meta)"
pass "seeded stream over HTTP: fetched $fetched image bytes = pack diff; nginx sent $v2_all bytes of v2.pack ($v2_data of chunks = new_bytes_stored, the rest header + index) and no chunk of disk.pack"
