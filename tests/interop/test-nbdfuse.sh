#!/usr/bin/env bash
# nbdfuse + loop mount: an ext4 image made with known files is served,
# exposed as a file with nbdfuse, loop-mounted read-only, and its files
# read back and checksummed. A second pass mounts it read-write through
# the export, writes a file, unmounts, and checks the image with e2fsck and
# debugfs after the server stopped.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
test_init 120
need nbdfuse fusermount3 mkfs.ext4 e2fsck debugfs losetup mount umount sha256sum
[[ -e /dev/fuse ]] || skip "/dev/fuse missing"
[[ $(id -u) -eq 0 ]] || skip "loop mounts need root"

# Files of known content.
content="$T/content"
mkdir -p "$content/sub/deeper"
make_random_file "$content/random.bin" 3
echo "hello from imgstream" >"$content/hello.txt"
head -c 100000 /dev/urandom >"$content/sub/odd-size.bin"
printf '%s\n' $(seq 1 20000) >"$content/sub/deeper/numbers.txt"
(cd "$content" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$T/sums"

img="$T/fs.img"
mkfs.ext4 -q -F -b 4096 -L imgstream -d "$content" "$img" 32M >"$T/mkfs.log" 2>&1 ||
    fail "mkfs.ext4 -d failed"

fusedir="$T/fuse"
mnt="$T/mnt"
mkdir -p "$fusedir" "$mnt"

# mount_via_nbdfuse URI RO|RW: nbdfuse at $fusedir/nbd, loop mount at $mnt.
mount_via_nbdfuse() {
    local uri="$1" mode="$2" i ro_flag=() mopts=loop
    [[ $mode == RO ]] && ro_flag=(-r) && mopts=loop,ro
    nbdfuse "${ro_flag[@]}" -P "$T/nbdfuse.pid" "$fusedir/nbd" "$uri" >"$T/nbdfuse.log" 2>&1 &
    local fpid=$!
    register_fuse "$fusedir"
    register_pid "$fpid"
    # -P writes the pid file once the mount is ready.
    for ((i = 0; i < 100; i++)); do
        [[ -s $T/nbdfuse.pid ]] && break
        _alive "$fpid" || fail "nbdfuse exited: $(cat "$T/nbdfuse.log")"
        sleep 0.1
    done
    [[ -s $T/nbdfuse.pid ]] || fail "nbdfuse did not become ready in 10 s"
    expect_eq "$(stat -c %s "$fusedir/nbd")" "$(stat -c %s "$img")" "size of $fusedir/nbd"
    mount -o "$mopts" "$fusedir/nbd" "$mnt" || fail "mount -o $mopts $fusedir/nbd failed"
    register_mount "$mnt"
    NBDFUSE_PID="$fpid"
}

unmount_all() {
    umount "$mnt" || fail "umount $mnt failed"
    fusermount3 -u "$fusedir" || fail "fusermount3 -u $fusedir failed"
    local i
    for ((i = 0; i < 100; i++)); do
        _alive "$NBDFUSE_PID" || break
        sleep 0.1
    done
    _alive "$NBDFUSE_PID" && fail "nbdfuse did not exit after fusermount3 -u"
    wait "$NBDFUSE_PID" || fail "nbdfuse exited non-zero: $(cat "$T/nbdfuse.log")"
    rm -f "$T/nbdfuse.pid"
}

# Read-only pass.
start_server "$img" --read-only
mount_via_nbdfuse "$SERVER_URI" RO
(cd "$mnt" && sha256sum --quiet -c "$T/sums") >&2 || fail "checksums of files read through nbdfuse + loop mount differ"
expect_eq "$(cat "$mnt/hello.txt")" "hello from imgstream" "content of hello.txt"
unmount_all
stop_server_ok "$SERVER_PID"
pass "ext4 over nbdfuse + loop mount (read-only): every file's checksum matches"

# Read-write pass: write a file through the export.
start_server "$img"
mount_via_nbdfuse "$SERVER_URI" RW
make_random_file "$T/new.bin" 5
cp "$T/new.bin" "$mnt/new.bin"
rm "$mnt/sub/odd-size.bin"
sync -f "$mnt"
unmount_all
stop_server_ok "$SERVER_PID"
e2fsck -f -n "$img" >"$T/fsck.log" 2>&1 || { cat "$T/fsck.log" >&2; fail "e2fsck found errors after writing through the export"; }
debugfs -R "dump /new.bin $T/new.out" "$img" >/dev/null 2>&1 || fail "debugfs could not dump /new.bin"
expect_same_file "$T/new.out" "$T/new.bin" "file written through nbdfuse + loop mount"
debugfs -R "stat /sub/odd-size.bin" "$img" 2>&1 | grep -q 'not found' || fail "deleted file still in the image"
pass "ext4 over nbdfuse + loop mount (read-write): new file intact, e2fsck clean"
