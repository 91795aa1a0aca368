// Pack: an open pack (docs/pack-format.md) and its base chain, read through a BlobReader
// (a local file or an HTTP URL). Opening reads and checks the header and the index once;
// every chunk read later is checked against its hash before anyone sees it: a chunk that
// fails is read once more and then reported, never returned.
//
// Thread safety: a Pack is immutable once open; every const method may be called from
// many threads at once (reads go out in parallel).
#pragma once

#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/env.h"
#include "blob/blob.h"
#include "device/block_device.h"
#include "pack/pack_format.h"

namespace imgstream::pack {

struct PackOpenOptions {
  blob::BlobOptions blob;
  // The base pack's location, instead of the hint recorded in the pack (relative hints
  // are taken relative to the pack's own directory or URL).
  std::string base;
  // A file that keeps the pack's header and index (a store keeps one): used instead of
  // fetching the index when its index hash matches the pack's header, written when not.
  std::string index_cache;
};

// Reads at most this much in one blob request when coalescing adjacent chunks.
inline constexpr uint64_t kCoalesceBytesMax = 64u << 20;

class Pack {
 public:
  static Result<std::unique_ptr<Pack>> open(Env& env, const std::string& where,
                                            const PackOpenOptions& o = {});

  const PackHeader& header() const { return header_; }
  const std::vector<IndexEntry>& index() const { return index_; }
  const std::string& uri() const { return blob_->uri(); }
  const Pack* base() const { return base_.get(); }
  blob::BlobReader& blob() const { return *blob_; }
  uint64_t file_size() const { return blob_->size(); }

  // Where a chunk's bytes are stored: in this pack or in one of its chain.
  struct Location {
    const Pack* pack = nullptr;  // null for a Zero chunk
    uint64_t offset = 0;
    uint32_t length = 0;
    ChunkKind kind = ChunkKind::Zero;  // Zero, Zstd or Raw: never Base
    Digest hash{};
  };
  Location locate(uint64_t chunk) const;
  // Whether the chain holds a chunk with this hash (stored, not zero).
  bool has_chunk(const Digest& hash) const;

  // Reads chunks [first, first + count) into out (their image bytes, in order),
  // coalescing chunks stored next to each other into one request.
  Result<void> read_chunks(uint64_t first, uint64_t count, std::span<std::byte> out) const;
  // Reads image bytes [offset, offset + buf.size()) (any alignment).
  Result<void> read(uint64_t offset, std::span<std::byte> buf) const;
  // base:allocation extents for [offset, offset + length): Zero chunks are holes.
  void block_status(uint64_t offset, uint64_t length, std::vector<Extent>& out) const;

  // Checks every chunk stored in this pack file (not the base's) against its hash.
  // Returns the chunks that failed; `progress(done, total)` is called as it goes, in
  // chunks. A stop request (base/stop.h) ends it between chunks: EINTR "interrupted".
  Result<std::vector<uint64_t>> verify(const std::function<void(uint64_t, uint64_t)>& progress) const;

  // Decodes stored bytes into out (a chunk's image bytes) and checks the hash.
  static Result<void> decode(const Location& loc, std::span<const std::byte> stored,
                             std::span<std::byte> out);

 private:
  Pack() = default;
  static Result<std::unique_ptr<Pack>> open_at(Env& env, const std::string& where,
                                               const PackOpenOptions& o, size_t depth);
  Result<void> load_base(Env& env, const PackOpenOptions& o, size_t depth);
  Result<std::vector<std::byte>> fetch_index(Env& env, const std::string& cache);
  // Whether the index came from the cache file rather than the pack.
  bool index_from_cache_ = false;

 public:
  bool index_from_cache() const { return index_from_cache_; }

 private:
  Result<void> read_one(uint64_t chunk, const Location& loc, std::span<std::byte> out) const;

  std::unique_ptr<blob::BlobReader> blob_;
  PackHeader header_;
  std::vector<IndexEntry> index_;
  std::unique_ptr<Pack> base_;
  // Every chunk stored in this pack or its chain, by hash (the chain's first copy).
  std::unordered_map<Digest, Location, DigestHash> by_hash_;
};

// The directory part of a path or URL, for resolving a relative base hint.
std::string resolve_relative(const std::string& where, const std::string& hint);

}  // namespace imgstream::pack
