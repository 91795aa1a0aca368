#!/usr/bin/env bash
# imgstream patch / ls / cat on disk images made here with sfdisk and mke2fs -d, judged
# by e2fsprogs (e2fsck -fn, debugfs):
#   (a) GPT: /boot (ext2) on p1 named by UUID in the root's fstab, swap on p2, the root
#       (ext4) on p3; every action; ls and cat read it back;
#   (b) MBR, /boot named by LABEL=; a file-system image with no partition table;
#   (c) -o OUT.img leaves the input as it was;
#   (d) first-boot: the systemd unit and its wants link when the image has systemd;
#       installing again adds the next script and changes nothing else;
#   (e) every refusal names the input, exits non-zero and leaves the image and its
#       directory as they were: a dirty journal, a loop mount, a running serve, XFS,
#       no root, a full file system, paths escaping by .. or an absolute symlink, a
#       missing host file, output over input, bad syntax, somebody's file where the
#       journal goes; a pending journal makes serve refuse the image;
#   (f) kill -9 of a patch in place at 20 moments: after --recover the image is
#       either as it was or fully patched, and e2fsck -fn passes;
#   (h, after g) Ctrl-C mid-way: patch stops within a second, the image unchanged, nothing
#       left beside it or beside -o's output;
#   (g) a pack: patched into a delta pack on it whose new chunks are those the patch
#       changed; `stream NEW.pack --seed OLD.img` fetches exactly their bytes and holds
#       the patched image; -o OUT.img from a pack; a pack is never patched in place.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/stream.sh"
test_init 600
need sfdisk mke2fs e2fsck debugfs e2image md5sum nbdinfo

IMG=$IMGSTREAM
mib=$((1 << 20))
tree_root() {  # DIR: a small root file system tree
    mkdir -p "$1/etc" "$1/usr/bin" "$1/var/log" "$1/boot"
    echo "old-host" >"$1/etc/hostname"
    echo "payload" >"$1/usr/bin/tool"
    ln -s /etc "$1/abs-link"
}

# make_gpt OUT: p1 /boot ext2 16 MiB, p2 swap 8 MiB, p3 root ext4 40 MiB.
make_gpt() {
    local out=$1 w=$T/w-gpt
    rm -rf "$w"; mkdir -p "$w/boot"
    tree_root "$w/root"
    echo "kernel" >"$w/boot/vmlinuz"
    echo "UUID=0c0ffee0-1111-2222-3333-444444444444 /boot ext2 defaults 0 2" >"$w/root/etc/fstab"
    truncate -s 66M "$out"
    printf 'label: gpt\nsize=16M\nsize=8M, type=swap\nsize=40M\n' | sfdisk -q "$out"
    mke2fs -q -F -t ext2 -U 0c0ffee0-1111-2222-3333-444444444444 -d "$w/boot" "$w/b.img" 16M
    truncate -s 8M "$w/s.img"; mkswap "$w/s.img" >/dev/null 2>&1
    mke2fs -q -F -t ext4 -d "$w/root" "$w/r.img" 40M
    dd if="$w/b.img" of="$out" bs=1M seek=1 conv=notrunc status=none
    dd if="$w/s.img" of="$out" bs=1M seek=17 conv=notrunc status=none
    dd if="$w/r.img" of="$out" bs=1M seek=25 conv=notrunc status=none
}
gpt_boot=$((1 * mib)); gpt_root=$((25 * mib))
fsck_at() { e2fsck -fn "$1?offset=$2" >"$T/fsck.log" 2>&1 || { cat "$T/fsck.log" >&2; fail "e2fsck -fn of $1 at $2"; }; }
dcat() { debugfs -R "cat $3" "$1?offset=$2" 2>/dev/null; }

# ---- (a) GPT, every action ----
make_gpt "$T/gpt.img"
mkdir -p "$T/host/tree/sub"
echo "one" >"$T/host/tree/a.conf"; echo "two" >"$T/host/tree/sub/b.conf"; ln -s a.conf "$T/host/tree/link"
head -c 300000 /dev/urandom >"$T/host/blob"
expect_ok "patch (a)" "$IMG" patch "$T/gpt.img" \
    --add "$T/host/tree:/opt/tree" --add "$T/host/blob:/usr/share/blob:0600:1000:1000" \
    --mkdir /srv/a/b --write /etc/hostname:new-host --symlink ../etc/hostname:/usr/hn \
    --delete /usr/bin/tool --add "$T/host/tree/a.conf:/boot/extra.conf"
grep -q "partition 3 (ext4) and .*partition 1 (ext2)" "$T/last.log" || fail "patch did not say what it patched: $(cat "$T/last.log")"
fsck_at "$T/gpt.img" $gpt_root; fsck_at "$T/gpt.img" $gpt_boot
expect_eq "$(dcat "$T/gpt.img" $gpt_root /etc/hostname)" "new-host" "/etc/hostname"
expect_eq "$(dcat "$T/gpt.img" $gpt_root /opt/tree/sub/b.conf)" "two" "a file of the tree added"
expect_eq "$(dcat "$T/gpt.img" $gpt_boot /extra.conf)" "one" "a file added under /boot goes to the /boot partition"
cmp <(dcat "$T/gpt.img" $gpt_root /usr/share/blob) "$T/host/blob" || fail "blob differs"
debugfs -R "stat /usr/share/blob" "$T/gpt.img?offset=$gpt_root" 2>/dev/null | grep -q "User:  1000" || fail "blob's owner"
expect_eq "$("$IMG" cat "$T/gpt.img" /usr/hn)" "new-host" "cat through the new symlink"
expect_eq "$("$IMG" cat "$T/gpt.img" /boot/vmlinuz)" "kernel" "cat of /boot/vmlinuz"
"$IMG" ls "$T/gpt.img" /opt/tree >"$T/ls.out"
grep -q "^l0777 .* link -> a.conf$" "$T/ls.out" || fail "ls shows the symlink: $(cat "$T/ls.out")"
"$IMG" ls "$T/gpt.img" /srv/a | grep -q " b$" || fail "--mkdir /srv/a/b"
expect_fail "the deleted file is gone" "$IMG" cat "$T/gpt.img" /usr/bin/tool
[[ ! -e $T/gpt.img.imgstream-journal ]] || fail "the journal was left behind"
pass "GPT with /boot by UUID, swap between, root on partition 3: every action, e2fsck clean, read back by debugfs and imgstream ls/cat"

# ---- (b) MBR with LABEL=; a bare file system ----
w=$T/w-mbr; mkdir -p "$w/boot"; tree_root "$w/root"
echo "LABEL=bootfs /boot ext2 defaults 0 2" >"$w/root/etc/fstab"
truncate -s 60M "$T/mbr.img"
printf 'label: dos\nstart=2048, size=16M, type=83\nsize=40M, type=83\n' | sfdisk -q "$T/mbr.img"
mke2fs -q -F -t ext2 -L bootfs -d "$w/boot" "$w/b.img" 16M
mke2fs -q -F -t ext4 -d "$w/root" "$w/r.img" 40M
dd if="$w/b.img" of="$T/mbr.img" bs=1M seek=1 conv=notrunc status=none
dd if="$w/r.img" of="$T/mbr.img" bs=1M seek=17 conv=notrunc status=none
expect_ok "patch (b) MBR" "$IMG" patch "$T/mbr.img" --write /boot/grub.cfg:menu --write /etc/motd:hi
expect_eq "$(dcat "$T/mbr.img" $mib /grub.cfg)" "menu" "/boot by LABEL"
fsck_at "$T/mbr.img" $((17 * mib))
mke2fs -q -F -t ext3 -d "$w/root" "$T/bare.img" 20M
expect_ok "patch a bare file system" "$IMG" patch "$T/bare.img" --write /etc/motd:bare
expect_eq "$(dcat "$T/bare.img" 0 /etc/motd)" "bare" "bare ext3"
expect_ok "patch --partition 1" "$IMG" patch "$T/mbr.img" --partition 1 --write /p1:yes
expect_eq "$(dcat "$T/mbr.img" $mib /p1)" "yes" "--partition 1"
pass "MBR with /boot by LABEL, a bare ext3 image, --partition"

# ---- (c) -o ----
before=$(md5sum <"$T/mbr.img")
expect_ok "patch -o" "$IMG" patch "$T/mbr.img" -o "$T/out.img" --write /etc/motd:copy
expect_eq "$(md5sum <"$T/mbr.img")" "$before" "the input of -o"
expect_eq "$(dcat "$T/out.img" $((17 * mib)) /etc/motd)" "copy" "the output of -o"
expect_eq "$(stat -c %s "$T/out.img")" "$(stat -c %s "$T/mbr.img")" "size of the output"
pass "-o OUT.img: a patched copy, the input unchanged"

# ---- (d) first boot ----
w=$T/w-sd; tree_root "$w"; mkdir -p "$w/usr/lib/systemd"; printf '\177ELF' >"$w/usr/lib/systemd/systemd"
mke2fs -q -F -t ext4 -d "$w" "$T/sd.img" 20M
printf '#!/bin/sh\necho one\n' >"$T/one.sh"; printf '#!/bin/sh\necho two\n' >"$T/two.sh"
expect_ok "firstboot" "$IMG" patch "$T/sd.img" --firstboot "$T/one.sh" --firstboot "$T/two.sh"
grep -q "systemd unit" "$T/last.log" || fail "firstboot did not use systemd: $(cat "$T/last.log")"
"$IMG" ls "$T/sd.img" /var/lib/imgstream/firstboot/scripts >"$T/fb.ls"
grep -q " 0001-one.sh$" "$T/fb.ls" && grep -q " 0002-two.sh$" "$T/fb.ls" || fail "scripts: $(cat "$T/fb.ls")"
"$IMG" ls "$T/sd.img" /etc/systemd/system/multi-user.target.wants | grep -q "imgstream-firstboot.service -> /etc/systemd/system/imgstream-firstboot.service" || fail "wants link"
unit1=$("$IMG" cat "$T/sd.img" /etc/systemd/system/imgstream-firstboot.service)
grep -q "^Before=getty.target" <<<"$unit1" && grep -q "^After=local-fs.target" <<<"$unit1" || fail "unit ordering: $unit1"
expect_ok "firstboot again" "$IMG" patch "$T/sd.img" --firstboot "$T/one.sh"
"$IMG" ls "$T/sd.img" /var/lib/imgstream/firstboot/scripts | grep -q " 0003-one.sh$" || fail "the third script"
expect_eq "$("$IMG" cat "$T/sd.img" /etc/systemd/system/imgstream-firstboot.service)" "$unit1" "the unit after a second install"
mke2fs -q -F -t ext4 -d "$T/w-mbr/root" "$T/rc.img" 20M
expect_ok "firstboot without systemd" "$IMG" patch "$T/rc.img" --firstboot "$T/one.sh"
"$IMG" cat "$T/rc.img" /etc/rc.local | grep -q "^/usr/lib/imgstream/firstboot-runner$" || fail "rc.local hook"
fsck_at "$T/sd.img" 0
pass "first boot: systemd unit + wants link, scripts in order, idempotent; rc.local without systemd"

# ---- (e) refusals ----
# refuse WHAT EXPECTED_TEXT IMAGE ARGS...: fails, says EXPECTED_TEXT, and the image and
# its directory are unchanged.
refuse() {
    local what=$1 text=$2 image=$3; shift 3
    local sum before_ls rc=0
    sum=$(md5sum <"$image"); before_ls=$(ls -a "$(dirname "$image")")
    "$IMG" patch "$image" "$@" >"$T/refuse.out" 2>&1 || rc=$?
    ((rc != 0)) || fail "$what: patch succeeded"
    grep -qi -- "$text" "$T/refuse.out" || fail "$what: expected '$text' in: $(cat "$T/refuse.out")"
    [[ $(wc -l <"$T/refuse.out") -le 2 ]] || fail "$what: more than a line or two: $(cat "$T/refuse.out")"
    expect_eq "$(md5sum <"$image")" "$sum" "$what: image checksum"
    expect_eq "$(ls -a "$(dirname "$image")")" "$before_ls" "$what: the directory"
    note "refused $what: $(head -n1 "$T/refuse.out")"
}
mkdir -p "$T/r"; make_gpt "$T/r/d.img"
cp "$T/r/d.img" "$T/r/clean.img"
debugfs -w -R "feature needs_recovery" "$T/r/d.img?offset=$gpt_root" >/dev/null 2>&1
refuse "dirty journal" "needs recovery" "$T/r/d.img" --write /x:y
cp "$T/r/clean.img" "$T/r/d.img"
start_server "$T/r/d.img"
refuse "running serve" "in use" "$T/r/d.img" --write /x:y
stop_server_ok "$SERVER_PID"
if losetup -f >/dev/null 2>&1 && mkdir -p "$T/mnt" && mount -o loop,offset=$gpt_root "$T/r/d.img" "$T/mnt" 2>/dev/null; then
    register_mount "$T/mnt"
    refuse "loop-mounted" "losetup" "$T/r/d.img" --write /x:y
    umount "$T/mnt"; cp "$T/r/clean.img" "$T/r/d.img"
else
    note "no loop mount here: the mounted case is not tested"
fi
truncate -s 20M "$T/r/xfs.img"; printf 'label: dos\nsize=10M, type=83\n' | sfdisk -q "$T/r/xfs.img"
printf 'XFSB' | dd of="$T/r/xfs.img" bs=1 seek=$mib conv=notrunc status=none
refuse "XFS" "XFS" "$T/r/xfs.img" --write /x:y
truncate -s 8M "$T/r/zeros.img"
refuse "no root" "no root file system" "$T/r/zeros.img" --write /x:y
head -c 30000000 /dev/urandom >"$T/big"
mke2fs -q -F -t ext4 -d "$T/w-mbr/root" "$T/r/small.img" 8M
refuse "full file system" "full" "$T/r/small.img" --add "$T/big:/big"
refuse "escape by .." "climbs above the root" "$T/r/d.img" --write /etc/../../x:y
refuse "absolute symlink" "absolute path /etc" "$T/r/d.img" --write /abs-link/x:y
refuse "missing host file" "does not exist" "$T/r/d.img" --add "$T/nope:/x"
refuse "output over input" "same file\|is one of\|input" "$T/r/d.img" -o "$T/r/d.img" --write /x:y
refuse "bad syntax" "GUEST_PATH" "$T/r/d.img" --add "nocolon"
refuse "relative guest path" "absolute" "$T/r/d.img" --mkdir etc/x
echo "my notes" >"$T/r/d.img.imgstream-journal"
refuse "somebody's file at the journal path" "not an imgstream patch journal" "$T/r/d.img" --write /x:y
expect_eq "$(cat "$T/r/d.img.imgstream-journal")" "my notes" "somebody's file"
printf 'IMGPJRN1' >"$T/r/d.img.imgstream-journal"
expect_fail "serve of an image with a pending journal" "$IMG" serve "$T/r/d.img" --listen "unix:$T/r.sock"
grep -q "unfinished patch" "$T/last.log" || fail "serve's refusal: $(cat "$T/last.log")"
expect_ok "--recover" "$IMG" patch "$T/r/d.img" --recover
grep -q "discarded" "$T/last.log" || fail "recover said: $(cat "$T/last.log")"
[[ ! -e $T/r/d.img.imgstream-journal ]] || fail "--recover left the journal"
expect_eq "$(md5sum <"$T/r/d.img")" "$(md5sum <"$T/r/clean.img")" "the image after discarding a cut journal"
pass "every refusal: one line naming the input, image and directory unchanged"

# ---- (f) kill -9 ----
make_gpt "$T/k.img"; cp "$T/k.img" "$T/k0.img"
head -c 20000000 /dev/urandom >"$T/kbig"
old=$(md5sum <"$T/k0.img")
n_old=0 n_new=0
for i in $(seq 1 20); do
    cp "$T/k0.img" "$T/k.img"
    "$IMG" patch "$T/k.img" --add "$T/kbig:/big" --write /etc/hostname:killed >/dev/null 2>&1 &
    pid=$!; register_pid $pid
    sleep "0.$(printf '%03d' $((RANDOM % 400)))"
    kill -9 $pid 2>/dev/null || true; wait $pid 2>/dev/null || true
    "$IMG" patch "$T/k.img" --recover >/dev/null || fail "--recover after kill $i"
    ls "$T" | grep -q "imgstream-check\|imgstream-journal" && fail "kill $i left a temporary or journal after --recover: $(ls "$T")"
    if [[ $(md5sum <"$T/k.img") == "$old" ]]; then n_old=$((n_old + 1)); continue; fi
    # Not as it was: then wholly patched (the inodes' times differ from run to run, so
    # the check is by content), and clean.
    fsck_at "$T/k.img" $gpt_root
    [[ $(dcat "$T/k.img" $gpt_root /etc/hostname) == killed ]] || fail "kill $i: changed but /etc/hostname is not patched"
    cmp -s <(dcat "$T/k.img" $gpt_root /big) "$T/kbig" || fail "kill $i: changed but /big is not whole"
    n_new=$((n_new + 1))
done
# A killed patch's check copy (in /dev/shm) is removed by the next check of the image.
"$IMG" patch "$T/k.img" --write /etc/motd:after >/dev/null || fail "a patch after the kills"
ls -A /dev/shm | grep -q "^\.k\.img\.imgstream-check" && fail "check copies of killed patches are still in /dev/shm: $(ls -A /dev/shm)"
pass "kill -9 at 20 moments: $n_old left the image as it was, $n_new fully patched (e2fsck clean, every byte there), none mixed"

# ---- (g) packs ----
make_gpt "$T/p.img"
head -c 3000000 /dev/urandom >"$T/pfile"
expect_ok "pack" "$IMG" pack "$T/p.img" -o "$T/p.pack"
expect_ok "patch a pack into a delta pack" "$IMG" patch "$T/p.pack" -o "$T/p2.pack" \
    --add "$T/pfile:/usr/share/pfile" --write /etc/hostname:from-pack
grep -q "delta pack" "$T/last.log" || fail "no delta pack report: $(cat "$T/last.log")"
expect_ok "unpack the delta" "$IMG" unpack "$T/p2.pack" -o "$T/p2.img"
fsck_at "$T/p2.img" $gpt_root
expect_eq "$(dcat "$T/p2.img" $gpt_root /etc/hostname)" "from-pack" "the delta pack's image"
cmp -s <(dcat "$T/p2.img" $gpt_root /usr/share/pfile) "$T/pfile" || fail "the added file in the delta pack"
# The chunks that differ between the two images are what the delta stores.
changed=$(python3 - "$T/p.img" "$T/p2.img" <<'PY'
import sys
a, b = open(sys.argv[1], "rb"), open(sys.argv[2], "rb")
n = 0
while True:
    x, y = a.read(131072), b.read(131072)
    if not x and not y: break
    if x != y: n += 1
print(n)
PY
)
diff_json=$("$IMG" pack diff "$T/p.pack" "$T/p2.pack" --json)
expect_eq "$(jq .new_chunks <<<"$diff_json")" "$changed" "new chunks of the delta = chunks the patch changed"
stored=$(stat -c %s "$T/p2.pack")
note "delta pack: $changed changed chunks of 128 KiB, file $stored bytes; pack diff: $diff_json"
start_streamer "$T/p2.pack" "$T/s-seed" --seed "$T/p.img"
wait_state "$T/s-seed" detached 120
fetched=$(( $(st "$T/s-seed" bytes_fetched_demand) + $(st "$T/s-seed" bytes_fetched_background) + $(st "$T/s-seed" bytes_prefetched) ))
expect_eq "$fetched" "$(jq .new_bytes_image <<<"$diff_json")" "bytes fetched by stream --seed OLD = the changed chunks' bytes"
stop_server_ok "$STREAMER_PID"
cmp -s "$T/s-seed/data" "$T/p2.img" || fail "the seeded store does not hold the patched image"
expect_ok "pack -> raw image" "$IMG" patch "$T/p.pack" -o "$T/p3.img" --write /etc/motd:raw
expect_eq "$(dcat "$T/p3.img" $gpt_root /etc/motd)" "raw" "-o OUT.img from a pack"
refuse "a pack in place" "give -o" "$T/p.pack" --write /x:y
ls "$T" | grep -q "imgstream-scratch" && fail "a scratch image was left: $(ls "$T")"
pass "a pack patched into a delta pack of $changed new chunks ($stored bytes); stream --seed of the old image fetched $fetched bytes, exactly those chunks, and holds the patched image"

# ---- (h) Ctrl-C mid-way ----
mkdir -p "$T/c"
mke2fs -q -F -t ext4 -d "$T/w-mbr/root" "$T/c/big.img" 700M
head -c 400000000 /dev/urandom >"$T/c-host"
sum=$(md5sum <"$T/c/big.img")
for mode in copy inplace; do
    args=(); [[ $mode == copy ]] && args=(-o "$T/c/out.img")
    "$IMG" patch "$T/c/big.img" "${args[@]}" --add "$T/c-host:/big" >"$T/c.out" 2>&1 &
    pid=$!; register_pid $pid
    sleep 0.3
    kill -INT $pid
    t0=$SECONDS; rc=0
    for _ in $(seq 30); do _alive $pid || break; sleep 0.1; done
    _alive $pid && fail "Ctrl-C ($mode): patch still runs after 3 s"
    wait $pid || rc=$?
    ((rc != 0)) || note "Ctrl-C ($mode) came after the patch was done"
    expect_eq "$(md5sum <"$T/c/big.img")" "$sum" "Ctrl-C ($mode): the image"
    expect_eq "$(ls -A "$T/c")" "big.img" "Ctrl-C ($mode): the directory"
    ls -A /dev/shm | grep -q "^\.big\.img\.imgstream-check" && fail "Ctrl-C ($mode) left a check copy in /dev/shm"
    note "Ctrl-C ($mode): exit $rc: $(head -n1 "$T/c.out")"
done
pass "Ctrl-C mid-way: patch stops at once, the image and its directory as they were"
