#include "disk/fs_probe.h"

#include <cstdio>

#include "base/codec.h"

namespace imgstream::disk {

namespace {

constexpr size_t kExtSuperAt = 1024;
constexpr uint16_t kExtMagic = 0xEF53;
constexpr uint32_t kExtLogBlockMax = 6;  // 64 KiB blocks, the largest ext4 knows
constexpr uint32_t kIncompat64bit = 0x80;
constexpr uint32_t kIncompatExtents = 0x40;
constexpr uint32_t kIncompatFlexBg = 0x200;

std::string c_string(std::string_view s) { return std::string(s.substr(0, s.find('\0'))); }

bool has_at(ByteReader& r, size_t at, std::string_view magic) { return r.string_at(at, magic.size()) == magic; }

FsKind probe_ext(ByteReader& r, ExtSuper& s) {
  const size_t b = kExtSuperAt;
  if (r.u16_at(b + 56) != kExtMagic) return FsKind::Unknown;
  s.inodes = r.u32_at(b + 0);
  s.log_block_size = r.u32_at(b + 24);
  s.free_inodes = r.u32_at(b + 16);
  s.state = r.u16_at(b + 58);
  s.feature_compat = r.u32_at(b + 92);
  s.feature_incompat = r.u32_at(b + 96);
  s.feature_ro_compat = r.u32_at(b + 100);
  s.blocks = r.u32_at(b + 4);
  s.free_blocks = r.u32_at(b + 12);
  if (s.feature_incompat & kIncompat64bit) {
    s.blocks |= uint64_t(r.u32_at(b + 0x150)) << 32;
    s.free_blocks |= uint64_t(r.u32_at(b + 0x158)) << 32;
  }
  r.copy_at(b + 104, std::as_writable_bytes(std::span(s.uuid)));
  s.label = c_string(r.string_at(b + 120, 16));
  s.last_mounted = c_string(r.string_at(b + 136, 64));
  if (!r.ok() || s.log_block_size > kExtLogBlockMax) return FsKind::Unknown;
  if (s.feature_incompat & (kIncompatExtents | kIncompat64bit | kIncompatFlexBg)) return FsKind::Ext4;
  return s.has_journal() ? FsKind::Ext3 : FsKind::Ext2;
}

}  // namespace

const char* fs_kind_name(FsKind k) {
  switch (k) {
    case FsKind::Unknown: return "no file system imgstream recognises";
    case FsKind::Ext2: return "ext2";
    case FsKind::Ext3: return "ext3";
    case FsKind::Ext4: return "ext4";
    case FsKind::Xfs: return "XFS";
    case FsKind::Btrfs: return "btrfs";
    case FsKind::Vfat: return "FAT";
    case FsKind::Swap: return "Linux swap";
    case FsKind::Luks: return "LUKS (encrypted)";
    case FsKind::Lvm: return "LVM2 physical volume";
    case FsKind::Iso9660: return "ISO 9660";
    case FsKind::Squashfs: return "squashfs";
    case FsKind::F2fs: return "F2FS";
    case FsKind::Ntfs: return "NTFS";
  }
  return "?";
}

std::string ExtSuper::uuid_text() const {
  char out[37];
  const auto& u = uuid;
  std::snprintf(out, sizeof out,
                "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
                u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
                u[15]);
  return out;
}

FsInfo probe_fs(std::span<const std::byte> head) {
  FsInfo info;
  ByteReader r(head);
  info.kind = probe_ext(r, info.ext);
  if (info.kind != FsKind::Unknown) return info;
  info.ext = ExtSuper{};
  struct Magic {
    size_t at;
    std::string_view bytes;
    FsKind kind;
  };
  static constexpr Magic kMagics[] = {
      {0, "XFSB", FsKind::Xfs},
      {65536 + 64, "_BHRfS_M", FsKind::Btrfs},
      {0, "LUKS\xba\xbe", FsKind::Luks},
      {512, "LABELONE", FsKind::Lvm},
      {4096 - 10, "SWAPSPACE2", FsKind::Swap},
      {4096 - 10, "SWAP-SPACE", FsKind::Swap},
      {32769, "CD001", FsKind::Iso9660},
      {0, "hsqs", FsKind::Squashfs},
      {1024, "\x10\x20\xf5\xf2", FsKind::F2fs},
      {3, "NTFS    ", FsKind::Ntfs},
      {0x52, "FAT32   ", FsKind::Vfat},
      {0x36, "FAT12   ", FsKind::Vfat},
      {0x36, "FAT16   ", FsKind::Vfat},
  };
  for (const Magic& m : kMagics)
    if (has_at(r, m.at, m.bytes)) {
      info.kind = m.kind;
      break;
    }
  return info;
}

}  // namespace imgstream::disk
