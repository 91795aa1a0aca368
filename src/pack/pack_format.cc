#include "pack/pack_format.h"

#include <zstd.h>

#include <bit>
#include <cstring>
#include <memory>

#include "base/check.h"
#include "base/codec.h"
#include "base/stop.h"

namespace imgstream::pack {

namespace {

// docs/pack-format.md; the framing is docs/framing.md's.
static_assert(kPackVersion == 2, "bad_version names the version read");
constexpr Frame kHeaderFrame{
    .magic = kPackMagic,
    .bytes = kPackHeaderBytes,
    .version = kPackVersion,
    .text = {.truncated = "pack header is truncated",
             .bad_magic = "not a pack (bad magic)",
             .bad_crc = "pack header checksum mismatch",
             .bad_version = "pack format version {} is not supported (this imgstream reads "
                            "version 2)"}};
constexpr size_t kBaseHintAt = 178;
static_assert(kBaseHintAt + kBaseHintBytesMax <= kPackHeaderBytes - Frame::kCrcBytes);
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
  std::vector<std::byte> b = new_frame(kHeaderFrame);
  ByteWriter w(b);
  w.u32_at(12, h.flags);
  w.u64_at(16, h.image_size);
  w.u32_at(24, h.chunk_size);
  w.u32_at(28, h.level);
  w.u64_at(32, h.chunk_count());
  w.u64_at(40, h.index_offset);
  w.u64_at(48, h.index_length);
  w.u64_at(56, h.boot_begin);
  w.u64_at(64, h.boot_end);
  w.u64_at(72, h.boot_chunks);
  w.bytes_at(80, h.identity);
  w.bytes_at(112, h.index_hash);
  w.bytes_at(144, h.base_identity);
  w.u16_at(176, static_cast<uint16_t>(h.base_hint.size()));
  w.string_at(kBaseHintAt, h.base_hint);
  seal_frame(b, kHeaderFrame);
  return b;
}

Result<PackHeader> decode_header(std::span<const std::byte> b) {
  ByteReader r = TRY(open_frame(b, kHeaderFrame));
  PackHeader h;
  h.flags = r.u32_at(12);
  h.image_size = r.u64_at(16);
  h.chunk_size = r.u32_at(24);
  h.level = r.u32_at(28);
  h.index_offset = r.u64_at(40);
  h.index_length = r.u64_at(48);
  h.boot_begin = r.u64_at(56);
  h.boot_end = r.u64_at(64);
  h.boot_chunks = r.u64_at(72);
  r.copy_at(80, h.identity);
  r.copy_at(112, h.index_hash);
  r.copy_at(144, h.base_identity);
  const size_t hint = r.u16_at(176);
  if (h.flags & ~kFlagHasBase) return Error::invalid("pack header has unknown flags");
  if (h.chunk_size < kChunkBytesMin || h.chunk_size > kChunkBytesMax ||
      !std::has_single_bit(h.chunk_size))
    return Error::invalid("pack chunk size " + std::to_string(h.chunk_size) +
                          " is not a power of two from 4 KiB to 16 MiB");
  if (h.image_size == 0) return Error::invalid("pack image size is zero");
  if (h.image_size > kChunksMax * h.chunk_size) return Error::invalid("pack image is too large");
  if (r.u64_at(32) != h.chunk_count())
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
  h.base_hint = r.string_at(kBaseHintAt, hint);
  IMG_CHECK(r.ok());  // the longest hint fits the frame (static_assert above)
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
  ByteWriter w(b);
  for (const IndexEntry& e : entries) {
    w.bytes(e.hash);
    w.u64(e.offset);
    w.u32(e.length);
    w.u8(static_cast<uint8_t>(e.kind));
    w.skip(3);  // zeros
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
  ByteWriter w(sizes);
  w.u64(image_size);
  w.u32(chunk_size);
  s.update(sizes);
}

// Entry i of the index from its 48 bytes, checked against the header. `boot` counts the
// stored chunks in the boot range.
Result<IndexEntry> decode_entry(const PackHeader& h, uint64_t i, ByteReader r, uint64_t& boot) {
  IndexEntry e;
  r.copy_at(0, e.hash);
  e.offset = r.u64_at(32);
  e.length = r.u32_at(40);
  const uint8_t kind = r.u8_at(44);
  if (kind > static_cast<uint8_t>(ChunkKind::Base) || r.nonzero_at(45, 3) || !r.ok())
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
      const ByteReader entry{std::span<const std::byte>(out).subspan(at, kIndexEntryBytes)};
      const IndexEntry e = TRY(decode_entry(h, i, entry, boot));
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
