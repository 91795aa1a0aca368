// Pack: an open pack (docs/pack-format.md) and its base chain, read through a BlobReader
// (a local file or an HTTP URL). Opening reads and checks the header and the index once;
// every chunk read later is checked against its hash before anyone sees it: a chunk that
// fails is read once more and then reported, never returned.
//
// A pack is untrusted input, and so is its base chain. Opening walks the chain's headers
// first (each base must have the identity its child names, the chunk size, and not be in
// the chain already: a loop), adds up their chunk counts against kChainChunksMax, and
// only then decodes the indexes, from the last base up, one at a time: a base keeps only
// the map of its chunks by hash, not its index. A pack from a server finds its base on
// the same server only, never on the local file system; a local input is opened only
// when it is a regular file (blob::open_input).
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
#include "base/limits.h"
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
  // Make index_cache's directory when it is missing (a new store's), once the pack has
  // opened whole: a pack that fails to open leaves nothing behind.
  bool index_cache_mkdir = false;
};

// Reads at most this much in one blob request when coalescing adjacent chunks.
inline constexpr uint64_t kCoalesceBytesMax = limits::kCoalesceBytesMax;

class Pack {
 public:
  static Result<std::unique_ptr<Pack>> open(Env& env, const std::string& where,
                                            const PackOpenOptions& o = {});

  const PackHeader& header() const { return header_; }
  // The pack's index. A base's (base()->index()) is empty: it was let go once its chunks
  // were mapped for the chain above it.
  const ChunkIndex& index() const { return index_; }
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

  // The process is stopping: reads of this pack and its chain in flight fail within a
  // second, later ones at once, with EINTR (blob::BlobReader::interrupt). Irrevocable.
  void interrupt() const;

  // Checks every chunk stored in this pack file (not the base's) against its hash.
  // Returns the chunks that failed; `progress(done, total)` is called as it goes, in
  // chunks. A stop request (base/stop.h) ends it between chunks: EINTR "interrupted".
  Result<std::vector<uint64_t>> verify(const std::function<void(uint64_t, uint64_t)>& progress) const;

  // Decodes stored bytes into out (a chunk's image bytes) and checks the hash.
  static Result<void> decode(const Location& loc, std::span<const std::byte> stored,
                             std::span<std::byte> out);

 private:
  Pack() = default;
  // What opening a chain has seen so far: each pack's (identity, index hash), from the
  // pack asked for down, and their chunk counts added up.
  struct Chain {
    std::vector<std::pair<Digest, Digest>> seen;
    uint64_t chunks = 0;
  };
  // `child`: the pack whose base this is (null for the pack asked for).
  static Result<std::unique_ptr<Pack>> open_at(Env& env, const std::string& where,
                                               const PackOpenOptions& o, Chain& chain,
                                               const Pack* child);
  Result<void> read_header(const std::string& where);
  Result<void> join_chain(Chain& chain, const Pack* child) const;
  Result<void> load_base(Env& env, const PackOpenOptions& o, Chain& chain);
  Result<void> map_chunks();
  Result<std::vector<std::byte>> fetch_index(Env& env, const std::string& cache);
  void keep_index(Env& env, const PackOpenOptions& o, std::span<const std::byte> stored) const;
  // Whether the index came from the cache file rather than the pack.
  bool index_from_cache_ = false;

 public:
  bool index_from_cache() const { return index_from_cache_; }

 private:
  Result<void> read_one(uint64_t chunk, const Location& loc, std::span<std::byte> out) const;

  std::unique_ptr<blob::BlobReader> blob_;
  PackHeader header_;
  ChunkIndex index_;
  std::unique_ptr<Pack> base_;
  // Every chunk stored in this pack or its chain, by hash (the chain's first copy).
  std::unordered_map<Digest, Location, DigestHash> by_hash_;
};

// Where the base of the pack at `where` is, from its hint:
//   - a local pack: the hint as written (a path or a URL); a relative path is taken
//     relative to the pack's directory;
//   - a pack from a server: on the same server only. A relative hint is taken relative
//     to the pack's URL; an absolute path (the writer's local directory, which means
//     nothing on the server) by its file name beside the pack; a URL of another server
//     or scheme is refused. Never a local path: a hostile server must not make the client
//     open its files.
Result<std::string> resolve_base_hint(const std::string& where, const std::string& hint);

}  // namespace imgstream::pack
