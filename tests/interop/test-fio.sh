#!/usr/bin/env bash
# fio's nbd engine against imgstream serve: random writes verified with
# crc32c (written, then read back and checked), at iodepth 1 and 32, with
# 4 KiB and 1 MiB blocks, plus mixed random read/write. No verify errors.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
test_init 180
need fio

fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"

img="$T/disk.img"
truncate -s 256M "$img"
start_server "$img"

# Each job works on its own region (offset/size) so that verification of
# one job is not disturbed by another; stonewall runs them one at a time.
cat >"$T/jobs.fio" <<JOBS
[global]
ioengine=nbd
uri=$SERVER_URI
verify_fatal=1
verify_state_save=0
exitall_on_error=1
group_reporting=0

[randwrite-4k-qd1]
stonewall
rw=randwrite
bs=4k
iodepth=1
offset=0
size=4m
verify=crc32c
do_verify=1

[randwrite-4k-qd32]
stonewall
rw=randwrite
bs=4k
iodepth=32
offset=8m
size=24m
verify=crc32c
do_verify=1

[randwrite-1m-qd32]
stonewall
rw=randwrite
bs=1m
iodepth=32
offset=32m
size=96m
verify=crc32c
do_verify=1

[randwrite-1m-qd1-fsync]
stonewall
rw=randwrite
bs=1m
iodepth=1
offset=128m
size=16m
fsync=4
verify=crc32c
do_verify=1

[write-unaligned-bs-verify]
stonewall
rw=randwrite
bsrange=512-64k
bs_unaligned=1
iodepth=16
offset=144m
size=16m
verify=crc32c
do_verify=1

[randrw-4k-qd32]
stonewall
rw=randrw
rwmixread=50
bs=4k
iodepth=32
offset=160m
size=32m
time_based=1
runtime=3

[randrw-1m-qd8]
stonewall
rw=randrw
rwmixread=70
bs=1m
iodepth=8
offset=192m
size=64m
time_based=1
runtime=3

[randread-4k-qd32-whole]
stonewall
rw=randread
bs=4k
iodepth=32
time_based=1
runtime=2
JOBS

rc=0
(cd "$T" && fio --output-format=normal jobs.fio) >"$T/fio.log" 2>&1 || rc=$?
if [[ $rc -ne 0 ]] || grep -Eq 'verify: bad|bad magic|crc32c: verify failed|err= *[1-9]' "$T/fio.log"; then
    grep -E 'verify|err=|error|fio:' "$T/fio.log" | head -n 30 >&2 || true
    tail -n 20 "$T/fio.log" >&2
    fail "fio exited $rc or reported errors"
fi
for job in randwrite-4k-qd1 randwrite-4k-qd32 randwrite-1m-qd32 randwrite-1m-qd1-fsync \
    write-unaligned-bs-verify randrw-4k-qd32 randrw-1m-qd8 randread-4k-qd32-whole; do
    grep -q "^$job: (groupid=[0-9]*, jobs=1): err= 0" "$T/fio.log" ||
        fail "fio job $job did not report err= 0"
done
awk '/^[a-z0-9-]+: \(groupid/ { job = $1 } /^  (read|write): IOPS=/ { print "  " job, $1, $2, $3 }' "$T/fio.log" >&2
stop_server_ok "$SERVER_PID"
pass "fio nbd engine: verified random writes (4k/1m, qd 1/32, unaligned), mixed randrw"
