#include "disk/partition_table.h"

#include <algorithm>
#include <cstring>

#include "base/codec.h"

namespace imgstream::disk {

namespace {

constexpr size_t kMbrEntriesAt = 446;
constexpr size_t kMbrEntryBytes = 16;
constexpr uint8_t kGptProtective = 0xEE;
constexpr uint32_t kGptEntryBytesMin = 128;
constexpr uint32_t kGptEntryBytesMax = 4096;

// The GPT behind a protective MBR: header at LBA 1, entries where it says (only those
// within `head` are read).
void read_gpt(ByteReader& r, PartitionTable& t) {
  if (r.string_at(kSectorBytes, 8) != "EFI PART") return;
  const uint64_t entries_lba = r.u64_at(kSectorBytes + 72);
  const uint32_t count = r.u32_at(kSectorBytes + 80);
  const uint32_t entry_bytes = r.u32_at(kSectorBytes + 84);
  if (entry_bytes < kGptEntryBytesMin || entry_bytes > kGptEntryBytesMax || entries_lba == 0 ||
      entries_lba > r.size() / kSectorBytes)
    return;
  t.kind = TableKind::Gpt;
  const uint64_t base = entries_lba * kSectorBytes;
  for (uint32_t i = 0; i < count; ++i) {
    const uint64_t at = base + uint64_t(i) * entry_bytes;
    auto type = r.bytes_at(at, kGptEntryBytesMin);
    if (type.empty()) break;  // past the head
    if (std::all_of(type.begin(), type.begin() + 16, [](std::byte b) { return b == std::byte{0}; }))
      continue;  // unused slot
    Partition p;
    p.number = i + 1;
    p.gpt = true;
    p.first_lba = r.u64_at(at + 32);
    const uint64_t last = r.u64_at(at + 40);
    p.sectors = last >= p.first_lba ? last - p.first_lba + 1 : 0;
    t.partitions.push_back(p);
  }
}

}  // namespace

PartitionTable read_partition_table(std::span<const std::byte> head) {
  PartitionTable t;
  ByteReader r(head);
  if (r.u8_at(510) != 0x55 || r.u8_at(511) != 0xAA) return t;
  t.kind = TableKind::Mbr;
  for (unsigned i = 0; i < 4; ++i) {
    const size_t e = kMbrEntriesAt + kMbrEntryBytes * i;
    const uint8_t type = r.u8_at(e + 4);
    if (type == 0) continue;
    if (type == kGptProtective) {  // the GPT says where the partitions are
      read_gpt(r, t);
      return t;
    }
    Partition p;
    p.number = i + 1;
    p.mbr_type = type;
    p.first_lba = r.u32_at(e + 8);
    p.sectors = r.u32_at(e + 12);
    t.partitions.push_back(p);
  }
  return t;
}

std::vector<Partition> usable_partitions(const PartitionTable& t, uint64_t image_size) {
  std::vector<Partition> out;
  const uint64_t image_sectors = image_size / kSectorBytes;
  for (const Partition& p : t.partitions) {
    if (p.is_extended() || p.first_lba == 0 || p.sectors == 0) continue;
    if (p.first_lba >= image_sectors || p.sectors > image_sectors - p.first_lba) continue;
    out.push_back(p);
  }
  return out;
}

}  // namespace imgstream::disk
