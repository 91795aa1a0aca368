#include "pack/pack_format.h"

#include <zstd.h>

#include <bit>
#include <cstring>
#include <memory>

#include "base/check.h"
#include "base/crc32c.h"
#include "base/endian.h"
#include "base/stop.h"

namespace imgstream::pack {

namespace {

constexpr char kMagic[8] = {'I', 'M', 'G', 'P', 'A', 'C', 'K', '1'};
constexpr size_t kCrcAt = kPackHeaderBytes - 4;
constexpr char kIdentityTag[] = "imgstream pack identity v1";  // hashed with its NUL
// The index is mostly SHA-256 hashes, which no level compresses; the rest (zero entries,
// growing offsets) any level does. A fast one keeps packing a large image's index cheap.
constexpr int kIndexLevel = 3;

std::span<const std::byte> bytes_of(const Digest& d) { return std::span(d); }

}  // namespace

const char* kind_name(ChunkKind k) {
  switch (k) {
    case ChunkKind::Zero: return "zero";
    case ChunkKind::Zstd: return "zstd";
    case ChunkKind::Raw: return "raw";
    case ChunkKind::Base: return "base";
  }
  return "?";
}

uint32_t PackHeader::chunk_bytes(uint64_t i) const {
  IMG_CHECK(i < chunk_count());
  const uint64_t start = i * chunk_size;
  return static_cast<uint32_t>(std::min<uint64_t>(chunk_size, image_size - start));
}

std::vector<std::byte> encode_header(const PackHeader& h) {
  IMG_CHECK(h.base_hint.size() <= kBaseHintBytesMax);
  std::vector<std::byte> b(kPackHeaderBytes);
  std::byte* p = b.data();
  std::memcpy(p, kMagic, 8);
  le::put32(p + 8, kPackVersion);
  le::put32(p + 12, h.flags);
  le::put64(p + 16, h.image_size);
  le::put32(p + 24, h.chunk_size);
  le::put32(p + 28, h.level);
  le::put64(p + 32, h.chunk_count());
  le::put64(p + 40, h.index_offset);
  le::put64(p + 48, h.index_length);
  le::put64(p + 56, h.boot_begin);
  le::put64(p + 64, h.boot_end);
  le::put64(p + 72, h.boot_chunks);
  std::memcpy(p + 80, h.identity.data(), 32);
  std::memcpy(p + 112, h.index_hash.data(), 32);
  std::memcpy(p + 144, h.base_identity.data(), 32);
  le::put16(p + 176, static_cast<uint16_t>(h.base_hint.size()));
  std::memcpy(p + 178, h.base_hint.data(), h.base_hint.size());
  le::put32(p + kCrcAt, crc32c(std::span(b).first(kCrcAt)));
  return b;
}

Result<PackHeader> decode_header(std::span<const std::byte> b) {
  if (b.size() < kPackHeaderBytes) return Error::invalid("pack header is truncated");
  const std::byte* p = b.data();
  if (std::memcmp(p, kMagic, 8) != 0) return Error::invalid("not a pack (bad magic)");
  if (le::get32(p + kCrcAt) != crc32c(b.first(kCrcAt)))
    return Error::invalid("pack header checksum mismatch");
  if (le::get32(p + 8) != kPackVersion)
    return Error::invalid("pack format version " + std::to_string(le::get32(p + 8)) +
                          " is not supported (this imgstream reads version " +
                          std::to_string(kPackVersion) + ")");
  PackHeader h;
  h.flags = le::get32(p + 12);
  h.image_size = le::get64(p + 16);
  h.chunk_size = le::get32(p + 24);
  h.level = le::get32(p + 28);
  h.index_offset = le::get64(p + 40);
  h.index_length = le::get64(p + 48);
  h.boot_begin = le::get64(p + 56);
  h.boot_end = le::get64(p + 64);
  h.boot_chunks = le::get64(p + 72);
  std::memcpy(h.identity.data(), p + 80, 32);
  std::memcpy(h.index_hash.data(), p + 112, 32);
  std::memcpy(h.base_identity.data(), p + 144, 32);
  const size_t hint = le::get16(p + 176);
  if (h.flags & ~kFlagHasBase) return Error::invalid("pack header has unknown flags");
  if (h.chunk_size < kChunkBytesMin || h.chunk_size > kChunkBytesMax ||
      !std::has_single_bit(h.chunk_size))
    return Error::invalid("pack chunk size " + std::to_string(h.chunk_size) +
                          " is not a power of two from 4 KiB to 16 MiB");
  if (h.image_size == 0) return Error::invalid("pack image size is zero");
  if (h.image_size > kChunksMax * h.chunk_size) return Error::invalid("pack image is too large");
  if (le::get64(p + 32) != h.chunk_count())
    return Error::invalid("pack header geometry is inconsistent");
  if (h.index_length == 0 || h.index_length > ZSTD_compressBound(h.index_raw_bytes()))
    return Error::invalid("pack index length " + std::to_string(h.index_length) +
                          " is out of bounds");
  if (h.index_raw_bytes() / kZstdExpansionMax > h.index_length)
    return Error::invalid("pack index of " + std::to_string(h.index_length) +
                          " bytes cannot hold the " + std::to_string(h.chunk_count()) +
                          " entries it claims");
  if (h.index_offset < kPackHeaderBytes) return Error::invalid("pack index offset is inside the header");
  if (h.boot_begin != kPackHeaderBytes || h.boot_end < h.boot_begin ||
      h.boot_end > h.index_offset || h.boot_chunks > h.chunk_count())
    return Error::invalid("pack boot range is out of bounds");
  if (hint > kBaseHintBytesMax) return Error::invalid("pack base hint is too long");
  if (!h.has_base() && (hint != 0 || !is_zero(h.base_identity)))
    return Error::invalid("pack names a base without the base flag");
  h.base_hint.assign(reinterpret_cast<const char*>(p + 178), hint);
  return h;
}

Result<void> check_header_fits(const PackHeader& h, uint64_t file_size) {
  if (h.index_offset > file_size || h.index_length > file_size - h.index_offset)
    return Error::invalid("pack is truncated: its index ends at " +
                          std::to_string(h.index_offset + h.index_length) + ", the file has " +
                          std::to_string(file_size) + " bytes");
  return ok();
}

std::vector<std::byte> encode_index(const std::vector<IndexEntry>& entries) {
  std::vector<std::byte> b(entries.size() * kIndexEntryBytes);
  for (size_t i = 0; i < entries.size(); ++i) {
    const IndexEntry& e = entries[i];
    std::byte* p = b.data() + i * kIndexEntryBytes;
    std::memcpy(p, e.hash.data(), 32);
    le::put64(p + 32, e.offset);
    le::put32(p + 40, e.length);
    p[44] = std::byte(static_cast<uint8_t>(e.kind));
  }
  std::vector<std::byte> z(ZSTD_compressBound(b.size()));
  const size_t n = ZSTD_compress(z.data(), z.size(), b.data(), b.size(), kIndexLevel);
  IMG_CHECK(!ZSTD_isError(n));  // cannot fail with a buffer of compressBound bytes
  z.resize(n);
  return z;
}

IndexEntry ChunkIndex::operator[](uint64_t i) const {
  IMG_CHECK(i < slots_.size());
  const uint32_t s = slots_[i];
  return s == 0 ? IndexEntry{} : entries_[s - 1];
}

void ChunkIndex::release() {
  slots_ = {};
  entries_ = {};
}

void ChunkIndex::push(const IndexEntry& e) {
  if (e.kind == ChunkKind::Zero) return slots_.push_back(0);
  if (!entries_.empty()) {
    const IndexEntry& last = entries_.back();
    if (last.kind == e.kind && last.offset == e.offset && last.length == e.length &&
        last.hash == e.hash)
      return slots_.push_back(static_cast<uint32_t>(entries_.size()));
  }
  entries_.push_back(e);
  slots_.push_back(static_cast<uint32_t>(entries_.size()));
}

namespace {

// The identity's hash up to the chunks' hashes.
void identity_start(Sha256& s, uint64_t image_size, uint32_t chunk_size) {
  s.update(std::as_bytes(std::span(kIdentityTag, sizeof kIdentityTag)));
  std::byte sizes[12];
  le::put64(sizes, image_size);
  le::put32(sizes + 8, chunk_size);
  s.update(sizes);
}

// Entry i of the index from its 48 bytes, checked against the header. `boot` counts the
// stored chunks in the boot range.
Result<IndexEntry> decode_entry(const PackHeader& h, uint64_t i, const std::byte* p,
                                uint64_t& boot) {
  IndexEntry e;
  std::memcpy(e.hash.data(), p, 32);
  e.offset = le::get64(p + 32);
  e.length = le::get32(p + 40);
  const uint8_t kind = std::to_integer<uint8_t>(p[44]);
  if (kind > static_cast<uint8_t>(ChunkKind::Base) || p[45] != std::byte{0} ||
      p[46] != std::byte{0} || p[47] != std::byte{0})
    return Error::invalid("pack index entry " + std::to_string(i) + " is malformed");
  e.kind = static_cast<ChunkKind>(kind);
  const uint32_t bytes = h.chunk_bytes(i);
  const auto bad = [&](const char* why) {
    return Error::invalid("pack index entry " + std::to_string(i) + ": " + why);
  };
  switch (e.kind) {
    case ChunkKind::Zero:
      if (e.offset || e.length || !is_zero(e.hash)) return bad("a zero chunk with data");
      break;
    case ChunkKind::Base:
      if (!h.has_base()) return bad("refers to a base, but the pack has none");
      if (e.offset || e.length) return bad("a base chunk with a location");
      break;
    case ChunkKind::Raw:
    case ChunkKind::Zstd:
      if (e.offset < kPackHeaderBytes || e.length == 0 || e.offset > h.index_offset ||
          e.length > h.index_offset - e.offset)
        return bad("stored bytes out of bounds");
      if (e.kind == ChunkKind::Raw && e.length != bytes)
        return bad("raw chunk of the wrong length");
      if (e.kind == ChunkKind::Zstd && e.length > ZSTD_compressBound(bytes))
        return bad("compressed chunk longer than zstd's bound");
      if (e.offset >= h.boot_begin && e.offset < h.boot_end) {
        if (e.length > h.boot_end - e.offset) return bad("straddles the end of the boot range");
        ++boot;
      }
      break;
  }
  return e;
}

struct DCtxDeleter {
  void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};

}  // namespace

Result<ChunkIndex> decode_index(const PackHeader& h, std::span<const std::byte> stored) {
  const uint64_t n = h.chunk_count();
  if (stored.size() != h.index_length) return Error::invalid("pack index has the wrong size");
  if (sha256(stored) != h.index_hash) return Error::invalid("pack index does not match its hash");
  // One frame, nothing after it, and exactly one entry per chunk inside.
  if (ZSTD_findFrameCompressedSize(stored.data(), stored.size()) != stored.size())
    return Error::invalid("pack index is not one zstd frame");
  // The frame must declare its size (ours do) before anything is allocated for it.
  if (ZSTD_getFrameContentSize(stored.data(), stored.size()) != h.index_raw_bytes())
    return Error::invalid("pack index does not hold one entry per chunk");
  std::unique_ptr<ZSTD_DCtx, DCtxDeleter> d(ZSTD_createDCtx());
  if (!d || ZSTD_isError(ZSTD_DCtx_setParameter(d.get(), ZSTD_d_windowLogMax, kIndexWindowLogMax)))
    return Error{ENOMEM, "pack index: no zstd decoder"};
  ChunkIndex index;
  index.slots_.reserve(n);  // 4 bytes a chunk: bounded by decode_header's checks
  Sha256 identity;
  identity_start(identity, h.image_size, h.chunk_size);
  std::vector<std::byte> out(kIndexDecodeEntries * kIndexEntryBytes);
  ZSTD_inBuffer in{stored.data(), stored.size(), 0};
  size_t have = 0;  // bytes of a partial entry at the start of `out`
  uint64_t boot = 0;
  for (bool done = false; !done;) {
    if (stop_requested()) return Error{EINTR, "pack index: interrupted"};
    ZSTD_outBuffer ob{out.data(), out.size(), have};
    const size_t r = ZSTD_decompressStream(d.get(), &ob, &in);
    if (ZSTD_isError(r))
      return Error::invalid(std::string("pack index does not decompress to one entry per "
                                        "chunk: ") +
                            ZSTD_getErrorName(r));
    done = r == 0;
    if (!done && in.pos == in.size && ob.pos < ob.size)
      return Error::invalid("pack index does not decompress to one entry per chunk (truncated)");
    const size_t whole = ob.pos / kIndexEntryBytes * kIndexEntryBytes;
    for (size_t at = 0; at < whole; at += kIndexEntryBytes) {
      const uint64_t i = index.size();
      if (i == n) return Error::invalid("pack index holds more entries than chunks");
      const IndexEntry e = TRY(decode_entry(h, i, out.data() + at, boot));
      identity.update(std::span(e.hash));
      index.push(e);
    }
    have = ob.pos - whole;
    std::memmove(out.data(), out.data() + whole, have);
  }
  if (index.size() != n || have != 0)
    return Error::invalid("pack index does not decompress to one entry per chunk");
  // Identical chunks are stored once and may be counted more than once here.
  if (boot < h.boot_chunks) return Error::invalid("pack boot range holds fewer chunks than it says");
  if (identity.finish() != h.identity)
    return Error::invalid("pack index does not add up to the pack's identity");
  return index;
}

Digest identity_of(uint64_t image_size, uint32_t chunk_size,
                   const std::vector<IndexEntry>& entries) {
  Sha256 s;
  identity_start(s, image_size, chunk_size);
  for (const IndexEntry& e : entries) s.update(bytes_of(e.hash));
  return s.finish();
}

}  // namespace imgstream::pack
