#!/usr/bin/env bash
# stream.sh - benchmark `imgstream stream` against the peers that can also
# serve a remote NBD image while keeping what was read, side by side in the
# same run:
#
#   imgstream      imgstream stream SRC --store FRESH_DIR (background hydration on)
#   imgstream-nobg the same with --no-background: the demand path alone (not a peer:
#                  shows how much of imgstream's number is the background copy)
#   nbdkit-cow     nbdkit --filter=cow nbd socket=SRC cow-on-read=true
#   nbdkit-cache   nbdkit --filter=cache --filter=readahead nbd socket=SRC cache-on-read=true
#   qemu-nbd-cor   qemu-nbd --image-opts driver=copy-on-read,file.driver=qcow2,... over a
#                  fresh qcow2 overlay whose backing file is the NBD source
#   direct         the source itself (no local copy: the baseline)
#
# The "remote" source: nbdkit file plugin on a SIZE (default 256 MiB) file of
# random data, behind --filter=delay rdelay=RDELAY (default 2 ms), on a unix
# socket. Rows:
#   1. machine-like reader: fio nbd engine, sequential 64 KiB reads, QD 1,
#      FIO_SIZE (half the device, 128 MiB) from a cold start (MB/s; higher is better)
#   2. parallel reader: nbdcopy URI null: of the whole device, cold (seconds;
#      lower is better)
#   3. hot 4 KiB random read, QD 32, once everything is local: imgstream
#      stream after `detached` vs imgstream serve on the same data file (kIOPS)
#   4. background hydration behind nbdkit's rate filter (RATE_MBS MiB/s) while
#      a fio demand reader (random 64 KiB, QD 1) runs: time to `detached` vs
#      the ideal (seconds; see RATE_BURST)
#   5. boot of tests/fixtures' bootable disk under qemu TCG: straight from the
#      source at BOOT_RDELAY (10 ms) per read vs through imgstream stream
#      (fresh store) (seconds)
# Every server starts fresh (cold) for each run and is stopped by PID. Rows 1
# and 2 are the median of REPEAT runs. Ratios: imgstream / best peer (the
# best of nbdkit-cow, nbdkit-cache, qemu-nbd-cor; `direct` is shown as the
# baseline, not a peer).
#
# Usage: bench/stream.sh > result.md
# Environment:
#   SIZE=256M  FIO_SIZE=SIZE/2  RDELAY=2ms  REPEAT=3
#   RATE_MBS=50 (MiB/s; nbdkit's rate filter counts bits: rate=$((RATE_MBS*8))M)
#   RATE_BURST=2.0 (the rate filter's burstiness: its bucket starts full, so the
#   ideal time is (SIZE - RATE_BURST s of data) / rate)
#   HOT_RUNTIME=10 (seconds of fio for row 3)  BOOT_RDELAY=10ms  BOOT_TIMEOUT=300
#   ROWS="1 2 3 4 5"
#   PEERS="imgstream imgstream-nobg nbdkit-cow nbdkit-cache qemu-nbd-cor direct" (rows 1, 2)
#   BENCH_TIMEOUT=3600 (hard bound on the whole run, seconds)
#   IMGSTREAM=build/imgstream
# Needs: fio (nbd engine), nbdkit (file, nbd plugins; delay, cow, cache,
# readahead, rate filters), qemu-img, qemu-nbd, nbdcopy, nbdinfo, jq,
# qemu-system-x86_64 (row 5), python3.
set -euo pipefail

# A hard bound on the whole run: re-run under timeout (it signals the whole
# process group; the EXIT trap stops every server).
if [[ -z ${_IMGSTREAM_BENCH_BOUNDED:-} ]]; then
    export _IMGSTREAM_BENCH_BOUNDED=1
    exec timeout --kill-after=15 "${BENCH_TIMEOUT:-3600}" bash "$0" "$@"
fi

source "$(dirname "$0")/lib.sh"

SIZE="${SIZE:-256M}"
FIO_SIZE="${FIO_SIZE:-}"
RDELAY="${RDELAY:-2ms}"
REPEAT="${REPEAT:-3}"
RATE_MBS="${RATE_MBS:-50}"
RATE_BURST="${RATE_BURST:-2.0}"
HOT_RUNTIME="${HOT_RUNTIME:-10}"
BOOT_RDELAY="${BOOT_RDELAY:-10ms}"
BOOT_TIMEOUT="${BOOT_TIMEOUT:-300}"
ROWS="${ROWS:-1 2 3 4 5}"
PEERS="${PEERS:-imgstream imgstream-nobg nbdkit-cow nbdkit-cache qemu-nbd-cor direct}"
IMGSTREAM="${IMGSTREAM:-$BENCH_REPO_ROOT/build/imgstream}"
[[ $IMGSTREAM == /* ]] || IMGSTREAM="$BENCH_REPO_ROOT/$IMGSTREAM"

die() {
    echo "stream.sh: error: $*" >&2
    exit 1
}
log() { echo "  $*" >&2; }

for tool in fio nbdkit nbdinfo nbdcopy qemu-img qemu-nbd jq python3; do
    command -v "$tool" >/dev/null || die "$tool is not installed"
done
fio --enghelp=nbd >/dev/null 2>&1 || die "fio has no nbd engine"
[[ -x $IMGSTREAM ]] || die "no imgstream binary at $IMGSTREAM"
for p in $PEERS; do
    case $p in imgstream | imgstream-nobg | nbdkit-cow | nbdkit-cache | qemu-nbd-cor | direct) ;;
        *) die "unknown peer '$p' in PEERS" ;;
    esac
done
size_bytes="$(numfmt --from=iec "$SIZE")"
if [[ -z $FIO_SIZE ]]; then
    FIO_SIZE="$(numfmt --to=iec $((size_bytes / 2)))" # 128M for the default 256M
fi
fio_bytes="$(numfmt --from=iec "$FIO_SIZE")"
((fio_bytes <= size_bytes)) || die "FIO_SIZE $FIO_SIZE is larger than SIZE $SIZE"

bench_init
# Private copy of the binary: a rebuild during the run cannot change it.
cp "$IMGSTREAM" "$BENCH_TMP/imgstream"
IMGSTREAM="$BENCH_TMP/imgstream"

now() { printf '%s' "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# ---------------------------------------------------------------- the source
file="$BENCH_TMP/source.img"
log "creating $SIZE of random data ..."
head -c "$size_bytes" /dev/urandom >"$file"
src_sock="$BENCH_TMP/src.sock"

# start_source SOCK NBDKIT-ARGS...: sets SOURCE_PID
start_source() {
    local sock="$1"
    shift
    rm -f "$sock"
    bench_spawn "$BENCH_TMP/source.$(basename "$sock").log" nbdkit -f --unix "$sock" "$@"
    SOURCE_PID="$SPAWN_PID"
    wait_unix_socket "$sock" "$SOURCE_PID" ||
        die "nbdkit source did not start: $(tail -n 5 "$BENCH_TMP/source.$(basename "$sock").log")"
}
start_source "$src_sock" --filter=delay file "$file" rdelay="$RDELAY"
main_source_pid=$SOURCE_PID

# ---------------------------------------------------------------- peers
sock="$BENCH_TMP/peer.sock"
uri="nbd+unix:///?socket=$sock"
SERVER_PID=""

# start_peer PEER [SOURCE_SOCK]: a fresh (cold) server; sets URI_NOW.
start_peer() {
    local peer="$1" ssock="${2:-$src_sock}" suri
    suri="nbd+unix:///?socket=$ssock"
    rm -f "$sock"
    rm -rf "$BENCH_TMP/store" "$BENCH_TMP/overlay.qcow2"
    URI_NOW="$uri"
    SERVER_PID=""
    case $peer in
        imgstream)
            bench_spawn "$BENCH_TMP/peer.log" "$IMGSTREAM" stream "$suri" \
                --store "$BENCH_TMP/store" --listen "unix:$sock" ;;
        imgstream-nobg)
            bench_spawn "$BENCH_TMP/peer.log" "$IMGSTREAM" stream "$suri" \
                --store "$BENCH_TMP/store" --listen "unix:$sock" --no-background ;;
        nbdkit-cow)
            bench_spawn "$BENCH_TMP/peer.log" nbdkit -f --unix "$sock" --filter=cow \
                nbd socket="$ssock" cow-on-read=true ;;
        nbdkit-cache)
            bench_spawn "$BENCH_TMP/peer.log" nbdkit -f --unix "$sock" \
                --filter=cache --filter=readahead nbd socket="$ssock" cache-on-read=true ;;
        qemu-nbd-cor)
            qemu-img create -q -f qcow2 -b "$suri" -F raw "$BENCH_TMP/overlay.qcow2" ||
                die "qemu-img create of the overlay failed"
            bench_spawn "$BENCH_TMP/peer.log" qemu-nbd -t -e 16 -k "$sock" --cache=writeback \
                --aio=threads --image-opts \
                "driver=copy-on-read,file.driver=qcow2,file.file.filename=$BENCH_TMP/overlay.qcow2" ;;
        direct)
            URI_NOW="$suri"
            return 0 ;;
    esac
    SERVER_PID="$SPAWN_PID"
    wait_unix_socket "$sock" "$SERVER_PID" ||
        die "$peer did not start: $(tail -n 5 "$BENCH_TMP/peer.log")"
}

stop_peer() {
    [[ -n $SERVER_PID ]] && bench_stop "$SERVER_PID"
    SERVER_PID=""
    rm -rf "$BENCH_TMP/store" "$BENCH_TMP/overlay.qcow2"
}

# cpu_per_gib PID STORE: the streamer's CPU time so far (user + sys, from /proc) per GiB
# it fetched (bytes_fetched_* in its status), in seconds.
cpu_per_gib() {
    local pid="$1" store="$2" ticks fetched
    ticks="$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null)" || { echo "-"; return; }
    fetched="$("$IMGSTREAM" status "$store" --json 2>/dev/null |
        jq '.bytes_fetched_demand + .bytes_fetched_background + .bytes_prefetched')" || fetched=0
    awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v f="$fetched" \
        'BEGIN { if (f <= 0) print "-"; else printf "%.2f", (t / hz) / (f / 1073741824) }'
}

# run_fio NAME URI ARGS...: prints "read_iops read_bw"
run_fio() {
    local name="$1" u="$2" out="$BENCH_TMP/fio-$1.json"
    shift 2
    if ! timeout 900 fio --name="$name" --ioengine=nbd --uri="$u" --numjobs=1 \
        --output-format=json --output="$out" "$@" >"$BENCH_TMP/fio.err" 2>&1; then
        die "fio $name failed: $(tail -n 5 "$BENCH_TMP/fio.err"; tail -n 5 "$out" 2>/dev/null)"
    fi
    local r_iops r_bw
    read -r r_iops r_bw _ < <(fio_json_summary "$out") || die "cannot parse fio output $out"
    echo "$r_iops $r_bw"
}

# best PEER-RESULTS... HIGHER(1|0): the best number among the non-"-" ones.
best() {
    local higher="$1"
    shift
    printf '%s\n' "$@" | awk -v h="$higher" '$1 != "-" && $1 != "" {
        if (n == 0 || (h == 1 && $1 > b) || (h == 0 && $1 < b)) b = $1; n++ }
        END { if (n) print b; else print "-" }'
}
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'
}

has_row() { [[ " $ROWS " == *" $1 "* ]]; }

# ---------------------------------------------------------------- rows 1, 2
if has_row 1 || has_row 2; then
    for ((rep = 1; rep <= REPEAT; rep++)); do
        for peer in $PEERS; do
            if has_row 1; then
                start_peer "$peer"
                res="$(run_fio "seqread-$peer" "$URI_NOW" --rw=read --bs=64k --iodepth=1 \
                    --size="$fio_bytes")"
                read -r _ bw <<<"$res"
                v="$(awk -v b="$bw" 'BEGIN { printf "%.1f", b / 1e6 }')"
                record "$peer" seq "$v"
                log "rep $rep $peer: sequential 64 KiB QD1 $v MB/s"
                if [[ $peer == imgstream* ]]; then
                    c="$(cpu_per_gib "$SERVER_PID" "$BENCH_TMP/store")"
                    record "$peer" cpu "$c"
                    log "rep $rep $peer: $c CPU s per fetched GiB"
                fi
                stop_peer
            fi
            if has_row 2; then
                start_peer "$peer"
                t0="$(now)"
                timeout 900 nbdcopy "$URI_NOW" null: 2>"$BENCH_TMP/nbdcopy.err" ||
                    die "nbdcopy from $peer failed: $(tail -n 3 "$BENCH_TMP/nbdcopy.err")"
                v="$(elapsed "$t0")"
                record "$peer" copy "$v"
                log "rep $rep $peer: nbdcopy to null: $v s"
                stop_peer
            fi
        done
    done
fi

# ---------------------------------------------------------------- row 3
status_field() { "$IMGSTREAM" status "$1" --json | jq -r ".$2"; }
wait_detached() { # STORE SECS -> seconds waited, or dies
    local t0 deadline
    t0="$(now)"
    deadline=$((SECONDS + $2))
    while [[ $(status_field "$1" state) != detached ]]; do
        ((SECONDS < deadline)) || die "store $1 not detached after $2 s: $("$IMGSTREAM" status "$1" --json)"
        sleep 0.05
    done
    elapsed "$t0"
}
hot_stream="-"
hot_serve="-"
if has_row 3; then
    hs=() hv=()
    for ((rep = 1; rep <= REPEAT; rep++)); do
        start_peer imgstream
        wait_detached "$BENCH_TMP/store" 600 >/dev/null
        res="$(run_fio hot-stream "$URI_NOW" --rw=randread --bs=4k --iodepth=32 \
            --time_based=1 --runtime="$HOT_RUNTIME" --ramp_time=1)"
        read -r iops _ <<<"$res"
        hs+=("$(awk -v v="$iops" 'BEGIN { printf "%.2f", v / 1000 }')")
        bench_stop "$SERVER_PID"
        SERVER_PID=""
        # The same data file, served by imgstream serve.
        rm -f "$sock"
        bench_spawn "$BENCH_TMP/peer.log" "$IMGSTREAM" serve "$BENCH_TMP/store/data" --listen "unix:$sock"
        SERVER_PID="$SPAWN_PID"
        wait_unix_socket "$sock" "$SERVER_PID" || die "imgstream serve did not start"
        res="$(run_fio hot-serve "$uri" --rw=randread --bs=4k --iodepth=32 \
            --time_based=1 --runtime="$HOT_RUNTIME" --ramp_time=1)"
        read -r iops _ <<<"$res"
        hv+=("$(awk -v v="$iops" 'BEGIN { printf "%.2f", v / 1000 }')")
        log "rep $rep hot 4 KiB random read QD32: stream ${hs[-1]} kIOPS, serve ${hv[-1]} kIOPS"
        stop_peer
    done
    hot_stream="$(median "${hs[@]}")"
    hot_serve="$(median "${hv[@]}")"
fi

# ---------------------------------------------------------------- row 4
hyd_time="-"
hyd_ideal="-"
hyd_plain="-"
hyd_demand="-"
if has_row 4; then
    rate_sock="$BENCH_TMP/rate.sock"
    # The rate filter counts bits per second (nbdkit-rate-filter(1)).
    rate_bits="$((RATE_MBS * 8))M"
    start_source "$rate_sock" --filter=rate file "$file" rate="$rate_bits" burstiness="$RATE_BURST"
    rate_source_pid=$SOURCE_PID
    rate_bytes="$(numfmt --from=iec "$rate_bits" | awk '{ printf "%d", $1 / 8 }')"
    hyd_plain="$(awk -v s="$size_bytes" -v r="$rate_bytes" 'BEGIN { printf "%.1f", s / r }')"
    # The filter's bucket starts full: RATE_BURST seconds' worth of data come at once.
    hyd_ideal="$(awk -v s="$size_bytes" -v r="$rate_bytes" -v b="$RATE_BURST" \
        'BEGIN { t = (s - r * b) / r; if (t < 0) t = 0; printf "%.1f", t }')"
    t0="$(now)"
    start_peer imgstream "$rate_sock"
    # A demand reader for about as long as hydration should take.
    fio_runtime="$(awk -v t="$hyd_plain" 'BEGIN { printf "%d", (t < 1 ? 1 : t) }')"
    timeout 900 fio --name=demand --ioengine=nbd --uri="$URI_NOW" --numjobs=1 --rw=randread \
        --bs=64k --iodepth=1 --time_based=1 --runtime="$fio_runtime" --size="$size_bytes" \
        --output-format=json --output="$BENCH_TMP/fio-demand.json" >"$BENCH_TMP/fio-demand.err" 2>&1 &
    fio_pid=$!
    _BENCH_PIDS+=("$fio_pid")
    wait_detached "$BENCH_TMP/store" 1800 >/dev/null
    hyd_time="$(elapsed "$t0")"
    wait "$fio_pid" || die "fio demand reader failed: $(tail -n 5 "$BENCH_TMP/fio-demand.err")"
    res="$(fio_json_summary "$BENCH_TMP/fio-demand.json")" || die "cannot parse the demand reader's fio output"
    read -r _ bw _ <<<"$res"
    hyd_demand="$(awk -v b="$bw" 'BEGIN { printf "%.1f", b / 1e6 }')"
    log "hydration behind ${RATE_MBS} MiB/s: detached after $hyd_time s (size/rate $hyd_plain s, less the burst $hyd_ideal s), demand reader $hyd_demand MB/s"
    stop_peer
    bench_stop "$rate_source_pid"
fi

# ---------------------------------------------------------------- row 5
boot_direct="-"
boot_stream="-"
if has_row 5; then
    command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is not installed (row 5)"
    cache="${IMGSTREAM_CACHE:-$BENCH_REPO_ROOT/.cache}"
    mkdir -p "$cache"
    "$BENCH_REPO_ROOT/tests/fixtures/make-boot-disk.sh" "$cache/boot-disk.img" >"$BENCH_TMP/make.log" 2>&1 ||
        die "could not build the bootable disk: $(tail -n 5 "$BENCH_TMP/make.log")"
    cp "$cache/boot-disk.img" "$BENCH_TMP/boot.img"
    md5="$(cat "$cache/boot-disk.img.md5")"
    boot_sock="$BENCH_TMP/boot.sock"
    start_source "$boot_sock" --filter=delay file "$BENCH_TMP/boot.img" rdelay="$BOOT_RDELAY"
    boot_source_pid=$SOURCE_PID
    boot_once() { # DRIVE -> seconds
        local out
        out="$(BOOT_QUIET=1 BOOT_EXPECT_MD5="$md5" "$BENCH_REPO_ROOT/tests/lib/boot.sh" "$1" "$BOOT_TIMEOUT")" ||
            die "boot from $1 failed: $out"
        sed -n 's/^elapsed_seconds=//p' <<<"$out"
    }
    bd=() bs=()
    for ((rep = 1; rep <= REPEAT; rep++)); do
        bd+=("$(boot_once "nbd+unix:///?socket=$boot_sock")")
        start_peer imgstream "$boot_sock"
        bs+=("$(boot_once "$URI_NOW")")
        stop_peer
        log "rep $rep boot: direct ${bd[-1]} s, through imgstream stream ${bs[-1]} s"
    done
    boot_direct="$(median "${bd[@]}")"
    boot_stream="$(median "${bs[@]}")"
    bench_stop "$boot_source_pid"
fi
bench_stop "$main_source_pid"

# ---------------------------------------------------------------- report
echo "### imgstream stream vs nbdkit cow / cache, qemu-nbd copy-on-read"
echo
machine_info
echo "- source: nbdkit file plugin, $SIZE of random data, --filter=delay rdelay=$RDELAY, unix socket;" \
    "every server fresh (cold) per run; rows 1-3 and 5: median of $REPEAT runs"
echo "- peers: nbdkit-cow = \`nbdkit --filter=cow nbd socket=SRC cow-on-read=true\`;" \
    "nbdkit-cache = \`nbdkit --filter=cache --filter=readahead nbd socket=SRC cache-on-read=true\`;" \
    "qemu-nbd-cor = \`qemu-nbd --image-opts driver=copy-on-read,file.driver=qcow2\` over a qcow2 overlay backed by the NBD source;" \
    "imgstream-nobg = imgstream stream --no-background (demand path only, not a peer);" \
    "direct = the source itself (baseline, not a peer)"
echo
if has_row 1 || has_row 2; then
    header="| row |"
    sep="|---|"
    for p in $PEERS; do
        header+=" $p |"
        sep+="---:|"
    done
    echo "$header best peer | imgstream / best peer |"
    echo "$sep---:|---:|"
    for row in seq copy; do
        case $row in
            seq) has_row 1 || continue
                label="1. fio sequential 64 KiB QD1, $FIO_SIZE, cold (MB/s, higher is better)"
                higher=1 ;;
            copy) has_row 2 || continue
                label="2. nbdcopy $SIZE to null:, cold (s, lower is better)"
                higher=0 ;;
        esac
        line="| $label |"
        peers_vals=()
        for p in $PEERS; do
            v="$(result "$p" "$row")"
            line+=" $v |"
            [[ $p != imgstream* && $p != direct ]] && peers_vals+=("$v")
        done
        b="$(best "$higher" "${peers_vals[@]}")"
        echo "$line $b | $(ratio "$(result imgstream "$row")" "$b") |"
    done
    if has_row 1; then
        line="| 1. streamer CPU (user + sys) per fetched GiB during row 1 (s, lower is better) |"
        for p in $PEERS; do
            if [[ $p == imgstream* ]]; then line+=" $(result "$p" cpu) |"; else line+=" - |"; fi
        done
        echo "$line - | - |"
        # Row 1 without background against its limit: one region per source round trip.
        limit="$(awk -v r=1048576 -v d="$RDELAY" 'BEGIN { sub(/ms$/, "", d); printf "%.1f", r / (d / 1000) / 1e6 }')"
        echo
        echo "Demand path alone (imgstream-nobg, row 1) against one 1 MiB region per source round trip ($limit MB/s): $(ratio "$(result imgstream-nobg seq)" "$limit")"
    fi
    echo
fi
if has_row 3; then
    echo "| 3. hot 4 KiB random read, QD 32, all local | imgstream stream (detached) | imgstream serve (same file) | stream / serve |"
    echo "|---|---:|---:|---:|"
    echo "| kIOPS (higher is better) | $hot_stream | $hot_serve | $(ratio "$hot_stream" "$hot_serve") |"
    echo
fi
if has_row 4; then
    echo "| 4. background hydration behind nbdkit rate=${rate_bits} bits/s (${RATE_MBS} MiB/s, burstiness ${RATE_BURST} s) + fio demand reader | time to detached (s) | $SIZE / rate (s) | ideal: ($SIZE - burst) / rate (s) | ideal / actual | demand reader (MB/s) |"
    echo "|---|---:|---:|---:|---:|---:|"
    echo "| imgstream stream | $hyd_time | $hyd_plain | $hyd_ideal | $(ratio "$hyd_ideal" "$hyd_time") | $hyd_demand |"
    echo
fi
if has_row 5; then
    echo "| 5. boot under qemu TCG, source ${BOOT_RDELAY} per read | direct from the source (s) | through imgstream stream, fresh store (s) | stream / direct |"
    echo "|---|---:|---:|---:|"
    echo "| seconds to the guest's OK marker (lower is better) | $boot_direct | $boot_stream | $(ratio "$boot_stream" "$boot_direct") |"
    echo
fi
echo "Ratios: rows 1-2 imgstream / best peer (row 1 > 1 and row 2 < 1 mean imgstream is better);" \
    "row 3 stream / serve (1 = streaming costs nothing once local); row 4 ideal / actual (1 = hydration at the link's full rate);" \
    "row 5 stream / direct (< 1 = booting through imgstream is faster than from the remote image)."
