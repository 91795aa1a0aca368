// What file system a partition holds, from its first bytes: the ext2/3/4 superblock read
// field by field (what imgstream itself decides on: may it patch this file system), and
// the magic numbers of the others, so that a refusal can say what was found. Untrusted
// bytes: fuzz/fs_probe_fuzz.cc.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>

#include "base/limits.h"

namespace imgstream::disk {

// Enough of a partition's head for every magic probed (btrfs's lies at 64 KiB + 64).
inline constexpr uint64_t kFsProbeBytes = limits::kFsProbeBytes;

enum class FsKind { Unknown, Ext2, Ext3, Ext4, Xfs, Btrfs, Vfat, Swap, Luks, Lvm, Iso9660,
                    Squashfs, F2fs, Ntfs };
const char* fs_kind_name(FsKind k);
inline bool is_ext(FsKind k) { return k == FsKind::Ext2 || k == FsKind::Ext3 || k == FsKind::Ext4; }

// The ext superblock fields imgstream reads itself (the rest is libext2fs's business).
struct ExtSuper {
  uint32_t log_block_size = 0;  // block = 1024 << this (at most 16: 64 MiB)
  uint64_t blocks = 0;
  uint64_t free_blocks = 0;
  uint32_t inodes = 0;
  uint32_t free_inodes = 0;
  uint16_t state = 0;           // bit 0 cleanly unmounted, bit 1 errors found
  uint32_t feature_compat = 0;
  uint32_t feature_incompat = 0;
  uint32_t feature_ro_compat = 0;
  std::array<uint8_t, 16> uuid{};
  std::string label;            // s_volume_name, up to its first NUL
  std::string last_mounted;     // s_last_mounted, up to its first NUL

  uint64_t block_bytes() const { return uint64_t(1024) << log_block_size; }
  bool has_journal() const { return feature_compat & 0x4; }
  bool needs_recovery() const { return feature_incompat & 0x4; }   // journal to replay
  bool is_journal_device() const { return feature_incompat & 0x8; }
  bool has_mmp() const { return feature_incompat & 0x100; }        // multi-mount protection
  bool clean() const { return (state & 1) != 0; }
  bool has_errors() const { return (state & 2) != 0; }
  // The UUID as fstab and blkid write it: 8-4-4-4-12 lower-case hex.
  std::string uuid_text() const;
};

struct FsInfo {
  FsKind kind = FsKind::Unknown;
  ExtSuper ext;  // when is_ext(kind)
};

FsInfo probe_fs(std::span<const std::byte> head);

}  // namespace imgstream::disk
