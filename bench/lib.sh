#!/usr/bin/env bash
# lib.sh - helpers for the benchmark scripts in bench/.
#
# Source it: source "$(dirname "$0")/lib.sh". Provides
#   bench_init              temp dir $BENCH_TMP, cleanup trap (stops every
#                           process started with bench_spawn, by PID)
#   bench_spawn LOG CMD...  start CMD in the background; sets SPAWN_PID
#   bench_stop PID          SIGTERM, wait up to 10 s, then SIGKILL
#   wait_unix_socket SOCK PID   wait until an NBD server answers on SOCK
#   fio_json_summary FILE   print "read_iops read_bw write_iops write_bw"
#                           (bw in bytes/s) from fio --output-format=json
#                           output, ignoring any non-JSON lines around it
#   median N...             the median of numbers (mean of the middle two)
#   machine_info            markdown lines describing the machine and tools

BENCH_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_TMP=""
_BENCH_PIDS=()

bench_init() {
    BENCH_TMP="$(mktemp -d "${TMPDIR:-/tmp}/imgstream-bench.XXXXXX")"
    trap _bench_cleanup EXIT
    trap 'exit 143' TERM
    trap 'exit 130' INT
}

_bench_cleanup() {
    local rc=$? i
    set +e
    for ((i = ${#_BENCH_PIDS[@]} - 1; i >= 0; i--)); do
        bench_stop "${_BENCH_PIDS[i]}"
    done
    [[ -n $BENCH_TMP ]] && rm -rf "$BENCH_TMP"
    exit "$rc"
}

bench_spawn() {
    local log="$1"
    shift
    "$@" >"$log" 2>&1 &
    SPAWN_PID=$!
    _BENCH_PIDS+=("$SPAWN_PID")
}

bench_stop() {
    local pid="$1" i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

wait_unix_socket() {
    local sock="$1" pid="$2" i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        if [[ -S $sock ]] && nbdinfo --can connect "nbd+unix:///?socket=$sock" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

fio_json_summary() {
    python3 - "$1" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines(keepends=True)
# fio may print warnings before (and after) the JSON object.
first = next((i for i, l in enumerate(lines) if l.startswith("{")), None)
if first is None:
    sys.exit("no JSON object in fio output")
obj, _ = json.JSONDecoder().raw_decode("".join(lines[first:]))
r = {"read_iops": 0.0, "read_bw": 0.0, "write_iops": 0.0, "write_bw": 0.0}
for job in obj["jobs"]:
    if job.get("error"):
        sys.exit(f"fio job {job.get('jobname')} error {job['error']}")
    for d in ("read", "write"):
        r[f"{d}_iops"] += job[d]["iops"]
        r[f"{d}_bw"] += job[d]["bw_bytes"]
print(r["read_iops"], r["read_bw"], r["write_iops"], r["write_bw"])
PY
}

# record SERVER ROW VALUE / result SERVER ROW: collect one measurement; the median of a
# cell's measurements, or "-" when it has none.
# bench_boot_disk DEST: tests/fixtures' bootable busybox disk, built once into
# IMGSTREAM_CACHE (default .cache) and copied to DEST; sets BOOT_DISK_MD5. The caller's
# die() reports a failure.
bench_boot_disk() {
    local cache="${IMGSTREAM_CACHE:-$BENCH_REPO_ROOT/.cache}"
    mkdir -p "$cache"
    "$BENCH_REPO_ROOT/tests/fixtures/make-boot-disk.sh" "$cache/boot-disk.img" >"$BENCH_TMP/make.log" 2>&1 ||
        die "could not build the bootable disk: $(tail -n 5 "$BENCH_TMP/make.log")"
    cp "$cache/boot-disk.img" "$1"
    BOOT_DISK_MD5="$(cat "$cache/boot-disk.img.md5")"
}

record() { echo "$3" >>"$BENCH_TMP/result-$1-$2"; }
result() {
    local f="$BENCH_TMP/result-$1-$2"
    if [[ -s $f ]]; then
        # shellcheck disable=SC2046
        median $(cat "$f")
    else
        echo "-"
    fi
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) exit 1
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

machine_info() {
    local cpu kernel
    cpu="$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1)"
    [[ -n $cpu ]] || cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
    kernel="$(uname -sr)"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) CPUs ($cpu), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM, $kernel"
    echo "- tools: $(fio --version 2>/dev/null), $(nbdkit --version 2>/dev/null | head -n 1), $(qemu-nbd --version 2>/dev/null | head -n 1)"
    echo "- imgstream: $(git -C "$BENCH_REPO_ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
}
