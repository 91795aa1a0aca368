// The partition table of a disk image: the MBR, and behind a protective MBR the GPT
// (UEFI 2.10, 5.3). Read from the image's first bytes only, so that callers decide how
// much to read (the store fingerprint reads 64 KiB; patch reads 1 MiB, where any GPT's
// entry array lies). Untrusted bytes: anything malformed yields fewer entries, never a
// read out of bounds (fuzz/partition_fuzz.cc).
//
// Not read: MBR logical partitions (the EBR chain of an extended partition lies anywhere
// on the disk); an extended partition is listed as what it is (type 0x05/0x0F/0x85).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace imgstream::disk {

inline constexpr uint64_t kSectorBytes = 512;

enum class TableKind { None, Mbr, Gpt };

struct Partition {
  unsigned number = 0;      // 1-based, as Linux names them (sda1: the first table slot)
  bool gpt = false;         // a GPT entry (else an MBR slot)
  uint8_t mbr_type = 0;     // MBR type byte (0 for GPT entries)
  uint64_t first_lba = 0;   // as the table says: may be 0 or past the end of the image
  uint64_t sectors = 0;     // as the table says (GPT: last - first + 1; 0 when last < first)
  uint64_t start() const { return first_lba * kSectorBytes; }
  uint64_t bytes() const { return sectors * kSectorBytes; }
  bool is_extended() const { return mbr_type == 0x05 || mbr_type == 0x0F || mbr_type == 0x85; }
};

struct PartitionTable {
  TableKind kind = TableKind::None;
  std::vector<Partition> partitions;  // used slots only, in table order
};

// The table in `head`, the image's first bytes. GPT entries past the end of `head` are
// not read (so `head` bounds their number). Behind a hybrid MBR (a protective entry
// beside others) the MBR entries before the protective one come first, then the GPT's.
PartitionTable read_partition_table(std::span<const std::byte> head);

// The partitions that lie wholly inside an image of `image_size` bytes and are not empty
// or extended: where file systems can be.
std::vector<Partition> usable_partitions(const PartitionTable& t, uint64_t image_size);

}  // namespace imgstream::disk
