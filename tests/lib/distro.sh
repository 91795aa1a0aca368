#!/usr/bin/env bash
# distro.sh - the cached Debian 12 test disk (tests/fixtures/make-distro-disk.sh)
# for tests and benchmarks.
#
# Usage (library):
#   source tests/lib/distro.sh
#   disk=$(distro_disk) || fail "..."    # path of the cached image; builds it
#                                        # (minutes) when absent or stale
#   md5=$(cat "$disk.md5")               # what its marker must carry
#   distro_boot DRIVE_SPEC TIMEOUT       # tests/lib/boot.sh with the distro's
#                                        # marker, guest writes allowed, 1 GiB
# Usage (script):
#   tests/lib/distro.sh path             # prints the path, building if needed
#
# The image lives in $DISTRO_CACHE (default ${IMGSTREAM_CACHE:-/var/cache/imgstream-test}),
# shared by every checkout and worktree on the machine, as
# distro-<first 16 hex digits of the sha256 of make-distro-disk.sh>.img with
# .md5 (the marker's md5) and .key beside it; the downloaded .debs are kept in
# debs/ there. A change of the script makes a new name, so an old image is
# never used by a new script (and old ones can simply be deleted). The build
# is atomic and serialised with flock (see the script), so tests running at
# the same time build it once. Its log goes to $DISTRO_BUILD_LOG (default:
# the image path + .log).
#
# Never boot the cached image itself writable: give the guest a qcow2 overlay
# (distro_overlay) or a copy.

_distro_repo_root() { (cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd); }

# distro_disk_path: the image's name in the cache (whether built or not).
distro_disk_path() {
    local root cache key
    root=$(_distro_repo_root)
    cache=${DISTRO_CACHE:-${IMGSTREAM_CACHE:-/var/cache/imgstream-test}}
    key=$(sha256sum <"$root/tests/fixtures/make-distro-disk.sh" | cut -c1-16)
    printf '%s/distro-%s.img' "$cache" "$key"
}

# distro_disk: print the path of the built image; build it first if needed.
# Prints how long a build took on stderr.
distro_disk() {
    local root path start log
    root=$(_distro_repo_root)
    path=$(distro_disk_path)
    if [[ ! -s $path || ! -s $path.md5 || ! -s $path.key ]]; then
        mkdir -p "$(dirname "$path")" || return 1
        log=${DISTRO_BUILD_LOG:-$path.log}
        start=$SECONDS
        echo "distro.sh: building $path (debootstrap: minutes; log $log)" >&2
        if ! "$root/tests/fixtures/make-distro-disk.sh" "$path" >"$log" 2>&1; then
            tail -n 30 "$log" >&2
            echo "distro.sh: building the Debian test disk failed (log $log)" >&2
            return 1
        fi
        echo "distro.sh: built in $((SECONDS - start)) s" >&2
    fi
    printf '%s\n' "$path"
}

# distro_overlay IMAGE OVERLAY: a qcow2 overlay on IMAGE (read-only backing),
# so a guest may write without touching the cache.
distro_overlay() {
    qemu-img create -q -f qcow2 -F raw -b "$1" "$2"
}

# distro_boot DRIVE_SPEC TIMEOUT: boot.sh with the distro's marker; writes
# allowed (BOOT_READONLY=0) and 1 GiB of memory unless the caller set them.
distro_boot() {
    BOOT_MARKER=IMGSTREAM-DISTRO BOOT_READONLY=${BOOT_READONLY:-0} BOOT_MEM=${BOOT_MEM:-1024} \
        "$(_distro_repo_root)/tests/lib/boot.sh" "$@"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -uo pipefail
    [[ ${1:-} == path && $# -eq 1 ]] || { echo "usage: distro.sh path" >&2; exit 2; }
    distro_disk
fi
