// Encoding and decoding of the pack format (docs/pack-format.md is the byte-by-byte
// description; keep the two in step). A pack is one file: a 4 KiB header, the stored
// chunks, and the index at the end. Decoders take untrusted bytes (a file from the
// network) and never read out of bounds; everything they return has been checked.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/limits.h"
#include "base/result.h"
#include "base/sha256.h"

namespace imgstream::pack {

inline constexpr std::string_view kPackMagic = "IMGPACK1";  // the first 8 bytes of a pack
inline constexpr uint32_t kPackVersion = 2;  // 2: the index is one zstd frame
inline constexpr size_t kPackHeaderBytes = 4096;
inline constexpr size_t kIndexEntryBytes = 48;
inline constexpr uint32_t kChunkBytesMin = limits::kChunkBytesMin;
inline constexpr uint32_t kChunkBytesMax = limits::kChunkBytesMax;
// 128 KiB: measured on the 512 MiB test disk (docs/BENCHMARKS.md, bench/pack.sh), it packs
// within 4% of zstd -3 over the whole image, like 256 KiB, but moving a store to a version
// with one changed file costs 4% less than 256 KiB (and less than casync, which 256 KiB
// did not manage): a changed file drags in less of its unchanged neighbours.
inline constexpr uint32_t kChunkBytesDefault = 128u << 10;
// At most 16 Mi chunks (4 TiB at the default chunk size, 256 TiB at 16 MiB): a reader
// holds the whole index in memory, and a stored index 24 KiB long may claim this many
// (zero entries compress to nothing). A reader keeps 4 bytes per chunk and one entry per
// non-zero entry unlike the one before it (ChunkIndex), so this bounds what a hostile
// pack can make it hold: 64 MiB for zero chunks, 52 bytes a chunk (832 MiB) at the very
// worst, besides the map of the chain's stored chunks by hash (Pack).
inline constexpr uint64_t kChunksMax = limits::kChunksMax;
inline constexpr size_t kBaseHintBytesMax = limits::kBaseHintBytesMax;
inline constexpr size_t kChainDepthMax = limits::kChainDepthMax;
// The chunk counts of every pack of a chain added up (each index is decoded, checked and,
// for a base, let go in turn: this bounds the work of opening a chain, and no chain of
// hostile packs runs a reader through more than four of the largest indexes).
inline constexpr uint64_t kChainChunksMax = limits::kChainChunksMax;
// zstd's largest expansion: a block holds at most 128 KiB and takes at least 4 bytes
// (an RLE block: a 3-byte header and the byte). A stored index shorter than its entries
// divided by this cannot hold them: refused before anything is allocated for it.
inline constexpr uint64_t kZstdExpansionMax = (128 * 1024) / 4;
// The index is decoded as a stream, this many entries at a time, with a window of at
// most 2^kIndexWindowLogMax bytes (the writer's level 3 uses 2 MiB; zstd's levels up to
// 19 at most 8 MiB): the whole decompressed index never needs to be in memory at once.
inline constexpr size_t kIndexDecodeEntries = 4096;
inline constexpr int kIndexWindowLogMax = limits::kIndexWindowLogMax;
static_assert(kChainChunksMax >= kChunksMax);
inline constexpr uint32_t kFlagHasBase = 1;

enum class ChunkKind : uint8_t {
  Zero = 0,  // all zeros: nothing stored
  Zstd = 1,  // one zstd frame in this pack
  Raw = 2,   // stored as is in this pack (did not compress)
  Base = 3,  // in the base chain: found there by its hash
};

struct IndexEntry {
  Digest hash{};        // SHA-256 of the chunk's bytes; zeros for a Zero chunk
  uint64_t offset = 0;  // file offset of the stored bytes (Zstd, Raw), else 0
  uint32_t length = 0;  // stored bytes (Zstd, Raw), else 0
  ChunkKind kind = ChunkKind::Zero;

  bool stored() const { return kind == ChunkKind::Zstd || kind == ChunkKind::Raw; }
};

struct PackHeader {
  uint32_t flags = 0;
  uint64_t image_size = 0;
  uint32_t chunk_size = kChunkBytesDefault;
  uint32_t level = 0;  // the zstd level it was written with (informational)
  uint64_t index_offset = 0;
  uint64_t index_length = 0;  // stored bytes of the index: one zstd frame
  uint64_t boot_begin = kPackHeaderBytes;  // file range of the boot set's chunks
  uint64_t boot_end = kPackHeaderBytes;
  uint64_t boot_chunks = 0;
  Digest identity{};    // the image's identity (identity_of)
  Digest index_hash{};  // SHA-256 of the index's stored (compressed) bytes
  Digest base_identity{};
  std::string base_hint;  // where the base was, as given to `pack --base`

  bool has_base() const { return flags & kFlagHasBase; }
  uint64_t chunk_count() const { return (image_size + chunk_size - 1) / chunk_size; }
  // Bytes of the index once decompressed: one entry per chunk.
  uint64_t index_raw_bytes() const { return chunk_count() * kIndexEntryBytes; }
  // Bytes of chunk i (the last may be short).
  uint32_t chunk_bytes(uint64_t i) const;
};

// A decoded index: entry i describes chunk i. Compact, because a short stored index can
// describe many chunks: 4 bytes per chunk, and one IndexEntry for each non-zero entry
// that differs from the non-zero entry before it (zero chunks, and runs of one repeated
// chunk, cost no entry). Immutable once decoded; operator[] returns a copy.
class ChunkIndex {
 public:
  uint64_t size() const { return slots_.size(); }
  IndexEntry operator[](uint64_t i) const;
  // The IndexEntry values kept (for tests: what the index costs beyond 4 bytes a chunk).
  uint64_t entries_kept() const { return entries_.size(); }
  // Lets go of the memory (a base pack, once the chain above it has what it needs).
  void release();

 private:
  friend Result<ChunkIndex> decode_index(const PackHeader& h, std::span<const std::byte> bytes);
  void push(const IndexEntry& e);
  std::vector<uint32_t> slots_;  // 0: a zero chunk; else 1 + its entry in entries_
  std::vector<IndexEntry> entries_;
};

std::vector<std::byte> encode_header(const PackHeader& h);
// Checks the CRC, the magic, the version and every field's range.
Result<PackHeader> decode_header(std::span<const std::byte> bytes);
// Checks that the header fits a pack file of `file_size` bytes.
Result<void> check_header_fits(const PackHeader& h, uint64_t file_size);

// The index as stored: the entries (48 bytes each) compressed into one zstd frame. Most of
// an entry is predictable (zero chunks are all zeros, offsets grow), so this roughly
// halves what a reader fetches before its first chunk; the hashes stay as they are.
std::vector<std::byte> encode_index(const std::vector<IndexEntry>& entries);
// Decodes and checks the stored index against its header: its hash, that it is exactly one
// zstd frame of the right decompressed size, every entry's kind and range
// (stored bytes between the header and the index), and the identity it adds up to.
// Decodes as a stream (never the whole decompressed index in memory); fails with EINTR
// "interrupted" when the process is asked to stop.
Result<ChunkIndex> decode_index(const PackHeader& h, std::span<const std::byte> bytes);

// The image's identity: SHA-256 over a tag, the image size, the chunk size and every
// chunk's hash in address order (zeros for Zero chunks). It does not depend on the
// layout, the compression or the base: two packs of one image agree.
Digest identity_of(uint64_t image_size, uint32_t chunk_size,
                   const std::vector<IndexEntry>& entries);

const char* kind_name(ChunkKind k);

}  // namespace imgstream::pack
