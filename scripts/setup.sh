#!/usr/bin/env bash
# Installs everything imgstream needs to build, test and benchmark on Debian 12, from
# Debian's own packages: the toolchain and libraries, the real peers the tests run
# against (qemu, nbdkit, libnbd tools, fio, nginx), and what the bootable test disks are
# made of (syslinux, extlinux, a kernel, busybox; debootstrap for the Debian one). Safe to
# run again; does nothing when everything is there already.
set -euo pipefail

packages=(
  # build
  build-essential cmake ninja-build pkg-config git ccache
  clang libclang-rt-14-dev
  libfmt-dev libcli11-dev nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev
  libnbd-dev libcurl4-openssl-dev libzstd-dev libssl-dev libext2fs-dev liburing-dev
  # peers and tools the tests and benchmarks use
  qemu-utils qemu-system-x86 nbdkit libnbd-bin nbdfuse fio nginx-light casync fuse3 zstd
  python3 jq e2fsprogs util-linux procps psmisc iproute2
  # the bootable test disk
  syslinux-common extlinux linux-image-amd64 busybox-static fdisk cpio kmod xz-utils
  # the Debian test disk (tests/fixtures/make-distro-disk.sh: debootstrap from the mirror)
  debootstrap debian-archive-keyring mount passwd
  # lint (scripts/check-format.sh, scripts/tidy.sh)
  clang-format clang-tidy
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
