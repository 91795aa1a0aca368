#include "pack/pack_reader.h"

#include <zstd.h>

#include <algorithm>
#include <cstring>

#include "base/check.h"
#include "base/log.h"
#include "base/stop.h"

namespace imgstream::pack {

namespace {

// "https://host:8080" of "https://host:8080/dir/x.pack".
std::string url_origin(const std::string& url) {
  const size_t authority = url.find("//") + 2;
  const size_t slash = url.find('/', authority);
  return slash == std::string::npos ? url : url.substr(0, slash);
}

// The directory of a path or URL, with its trailing slash ("" for a bare file name).
std::string directory_of(const std::string& where) {
  const size_t slash = where.rfind('/');
  // "http://host" has slashes only in its scheme: its directory is the root.
  if (blob::is_http_url(where) && (slash == std::string::npos || slash < where.find("//") + 2))
    return where + "/";
  return slash == std::string::npos ? std::string() : where.substr(0, slash + 1);
}

}  // namespace

Result<std::string> resolve_base_hint(const std::string& where, const std::string& hint) {
  if (hint.empty()) return Error::invalid("the pack names no location for its base");
  const std::string scheme = blob::url_scheme(hint);
  if (!blob::is_http_url(where)) {
    if (hint.front() == '/' || !scheme.empty()) return hint;
    return directory_of(where) + hint;
  }
  if (blob::is_http_url(hint)) {
    if (url_origin(hint) != url_origin(where))
      return Error::invalid("its base hint " + hint +
                            " is on another server than the pack: "
                            "not followed");
    return hint;
  }
  if (!scheme.empty())
    return Error::invalid("its base hint " + hint + " has the unsupported scheme '" + scheme + "'");
  if (hint.front() == '/') {
    const std::string name = hint.substr(hint.rfind('/') + 1);
    if (name.empty() || name == "." || name == "..")
      return Error::invalid("its base hint " + hint + " names no file");
    return directory_of(where) + name;
  }
  return directory_of(where) + hint;
}

Result<std::unique_ptr<Pack>> Pack::open(Env& env, const std::string& where,
                                         const PackOpenOptions& o) {
  Chain chain;
  return open_at(env, where, o, chain, nullptr);
}

Result<std::unique_ptr<Pack>> Pack::open_at(Env& env, const std::string& where,
                                            const PackOpenOptions& o, Chain& chain,
                                            const Pack* child) {
  std::unique_ptr<Pack> p(new Pack());
  p->blob_ = TRY(blob::open_blob(env, where, o.blob));
  // While this pack opens, nobody else ends its waits on a stop request (a pack that is
  // open is its owner's to interrupt). Destroyed before `p`.
  StopCallback on_stop([b = p->blob_.get()] { b->interrupt(); });
  TRY(p->read_header(where));
  TRY(p->join_chain(chain, child));
  // The bases first: every header of the chain is checked before any index is decoded,
  // and each base's index is let go before the next one up is decoded.
  if (p->header_.has_base()) TRY(p->load_base(env, o, chain));
  if (stop_requested()) return Error{EINTR, where + ": interrupted"};
  const std::string cache = child ? std::string() : o.index_cache;
  const std::vector<std::byte> stored = TRY_CTX(p->fetch_index(env, cache), where);
  p->index_ = TRY_CTX(decode_index(p->header_, stored), where);
  TRY(p->map_chunks());
  if (child) p->index_.release();  // the chain above needs only by_hash_
  if (!cache.empty() && !p->index_from_cache_) p->keep_index(env, o, stored);
  return p;
}

Result<void> Pack::read_header(const std::string& where) {
  if (blob_->size() < kPackHeaderBytes)
    return Error::invalid(where + ": not a pack (" + std::to_string(blob_->size()) + " bytes)");
  std::vector<std::byte> head(kPackHeaderBytes);
  TRY_CTX(blob_->read(0, head), where);
  header_ = TRY_CTX(decode_header(head), where);
  TRY_CTX(check_header_fits(header_, blob_->size()), where);
  return ok();
}

// Checks this pack's place in the chain being opened before anything more is read. (Only
// a base can fail: the caller names it.)
Result<void> Pack::join_chain(Chain& chain, const Pack* child) const {
  const PackHeader& h = header_;
  if (child) {
    if (h.identity != child->header_.base_identity)
      return Error::invalid("not its base (identity " + to_hex(h.identity, 8) + ", expected " +
                            to_hex(child->header_.base_identity, 8) + ")");
    if (h.chunk_size != child->header_.chunk_size)
      return Error::invalid("another chunk size than the pack it is the base of");
  }
  // A pack seen before (same image, same index) means the chain goes round in a loop.
  const std::pair<Digest, Digest> me{h.identity, h.index_hash};
  if (std::find(chain.seen.begin(), chain.seen.end(), me) != chain.seen.end())
    return Error::invalid("the base chain loops (this pack, identity " + to_hex(h.identity, 8) +
                          ", is in it already)");
  if (chain.seen.size() > kChainDepthMax)
    return Error::invalid("base chain longer than " + std::to_string(kChainDepthMax));
  chain.chunks += h.chunk_count();
  if (chain.chunks > kChainChunksMax)
    return Error::invalid("the base chain has more than " + std::to_string(kChainChunksMax) +
                          " chunks in all");
  chain.seen.push_back(me);
  return ok();
}

Result<void> Pack::load_base(Env& env, const PackOpenOptions& o, Chain& chain) {
  const bool first_base = chain.seen.size() == 1;
  const std::string where = !o.base.empty() && first_base
                                ? o.base
                                : TRY_CTX(resolve_base_hint(uri(), header_.base_hint), uri());
  PackOpenOptions bo = o;
  bo.base.clear();  // the override names the first base only
  auto base = open_at(env, where, bo, chain, this);
  // "a.pack: its base pack b.pack: its base pack c.pack: what went wrong"
  if (!base)
    return std::move(base).error().context((first_base ? uri() + ": " : "") + "its base pack " +
                                           where);
  base_ = std::move(*base);
  by_hash_ = std::move(base_->by_hash_);  // the chain's chunks; ours join in map_chunks()
  base_->by_hash_.clear();
  return ok();
}

// Checks that the chain holds every chunk this pack takes from it, then maps this pack's
// own stored chunks by hash (the chain's copies stay where a hash is in both).
Result<void> Pack::map_chunks() {
  const uint64_t n = index_.size();
  if (header_.has_base())
    for (uint64_t c = 0; c < n; ++c) {
      const IndexEntry e = index_[c];
      if (e.kind == ChunkKind::Base && !by_hash_.contains(e.hash))
        return Error::invalid(uri() + ": chunk " + to_hex(e.hash, 8) + " is in none of its bases");
    }
  for (uint64_t c = 0; c < n; ++c) {
    const IndexEntry e = index_[c];
    if (e.stored())
      by_hash_.try_emplace(e.hash, Location{this, e.offset, e.length, e.kind, e.hash});
  }
  return ok();
}

// The cache file is the header's 4096 bytes followed by the index; it is trusted only as
// far as its header's index hash equals the pack's (decode_index checks the bytes).
Result<std::vector<std::byte>> Pack::fetch_index(Env& env, const std::string& cache) {
  std::vector<std::byte> index(header_.index_length);
  if (!cache.empty()) {
    if (auto f = blob::open_input(env, cache, blob::InputKind::RegularFile)) {
      std::vector<std::byte> head(kPackHeaderBytes);
      auto size = (*f)->size();
      auto h = size && *size == kPackHeaderBytes + index.size() &&
                       read_exact_at(**f, 0, head)
                   ? decode_header(head)
                   : Result<PackHeader>(Error::invalid("no cache"));
      if (h && h->index_hash == header_.index_hash && h->identity == header_.identity &&
          read_exact_at(**f, kPackHeaderBytes, index)) {
        index_from_cache_ = true;
        return index;
      }
    }
  }
  TRY(blob_->read(header_.index_offset, index));
  return index;
}

// Best effort: a store that cannot keep the index fetches it again next time.
void Pack::keep_index(Env& env, const PackOpenOptions& o, std::span<const std::byte> stored) const {
  auto r = [&]() -> Result<void> {
    if (o.index_cache_mkdir) TRY(make_dirs(env, parent_dir(o.index_cache)));
    const std::string tmp = o.index_cache + ".tmp";
    auto f = TRY(env.open(tmp, OpenMode::CreateOrOpen));
    TRY(f->truncate(0));
    TRY(write_all_at(*f, 0, encode_header(header_)));
    TRY(write_all_at(*f, kPackHeaderBytes, stored));
    TRY(f->sync());
    return env.rename(tmp, o.index_cache);
  }();
  if (!r)
    LOG_WARN("could not keep the index of {} in {}: {}", uri(), o.index_cache, r.error().message);
}

void Pack::interrupt() const {
  for (const Pack* p = this; p; p = p->base_.get()) p->blob_->interrupt();
}

Pack::Location Pack::locate(uint64_t chunk) const {
  IMG_CHECK(chunk < index_.size());
  const IndexEntry e = index_[chunk];
  if (e.kind == ChunkKind::Zero) return Location{};
  if (e.stored()) return Location{this, e.offset, e.length, e.kind, e.hash};
  auto it = by_hash_.find(e.hash);
  IMG_CHECK(it != by_hash_.end());  // checked when the base was loaded
  return it->second;
}

bool Pack::has_chunk(const Digest& hash) const { return by_hash_.contains(hash); }

Result<void> Pack::decode(const Location& loc, std::span<const std::byte> stored,
                          std::span<std::byte> out) {
  IMG_CHECK(stored.size() == loc.length);
  if (loc.kind == ChunkKind::Raw) {
    if (stored.size() != out.size()) return Error::io("raw chunk of the wrong size");
    std::memcpy(out.data(), stored.data(), out.size());
  } else {
    const size_t n = ZSTD_decompress(out.data(), out.size(), stored.data(), stored.size());
    if (ZSTD_isError(n)) return Error::io(std::string("zstd: ") + ZSTD_getErrorName(n));
    if (n != out.size()) return Error::io("chunk decompressed to the wrong size");
  }
  if (sha256(out) != loc.hash) return Error::io("hash mismatch");
  return ok();
}

// One chunk alone, read once more when it fails its check.
Result<void> Pack::read_one(uint64_t chunk, const Location& loc, std::span<std::byte> out) const {
  std::vector<std::byte> stored(loc.length);
  Result<void> r = ok();
  for (int attempt = 0; attempt < 2; ++attempt) {
    TRY(loc.pack->blob_->read(loc.offset, stored));
    r = decode(loc, stored, out);
    if (r) return ok();
    LOG_WARN("{}: chunk {} (bytes {}+{}): {}{}", loc.pack->uri(), chunk, loc.offset, loc.length,
             r.error().message, attempt == 0 ? "; reading it again" : "");
  }
  Error e{EIO, loc.pack->uri() + ": chunk " + std::to_string(chunk) + " at byte " +
                   std::to_string(loc.offset) + " is corrupt (" + r.error().message + ")"};
  LOG_ERROR("{}; it is not used", e.message);
  return e;
}

Result<void> Pack::read_chunks(uint64_t first, uint64_t count, std::span<std::byte> out) const {
  IMG_CHECK(first + count <= index_.size());
  const uint64_t cs = header_.chunk_size;
  uint64_t i = first;
  while (i < first + count) {
    const Location loc = locate(i);
    auto dst = [&](uint64_t c) {
      return out.subspan((c - first) * cs, header_.chunk_bytes(c));
    };
    if (loc.kind == ChunkKind::Zero) {
      auto d = dst(i);
      std::memset(d.data(), 0, d.size());
      ++i;
      continue;
    }
    // A run of chunks stored one after another in the same file: one request.
    std::vector<Location> run{loc};
    uint64_t bytes = loc.length;
    while (i + run.size() < first + count) {
      const Location next = locate(i + run.size());
      if (next.pack != loc.pack || next.offset != run.back().offset + run.back().length ||
          bytes + next.length > kCoalesceBytesMax)
        break;
      run.push_back(next);
      bytes += next.length;
    }
    std::vector<std::byte> stored(bytes);
    TRY(loc.pack->blob_->read(loc.offset, stored));
    uint64_t at = 0;
    for (size_t k = 0; k < run.size(); ++k) {
      const uint64_t c = i + k;
      auto piece = std::span<const std::byte>(stored).subspan(at, run[k].length);
      if (!decode(run[k], piece, dst(c))) TRY(read_one(c, run[k], dst(c)));
      at += run[k].length;
    }
    i += run.size();
  }
  return ok();
}

Result<void> Pack::read(uint64_t offset, std::span<std::byte> buf) const {
  IMG_CHECK(!buf.empty() && offset <= header_.image_size &&
            buf.size() <= header_.image_size - offset);
  const uint64_t cs = header_.chunk_size, end = offset + buf.size();
  const uint64_t first = offset / cs, last = (end - 1) / cs;
  if (offset % cs == 0 && (end % cs == 0 || end == header_.image_size))
    return read_chunks(first, last - first + 1, buf);  // whole chunks: straight into buf
  std::vector<std::byte> tmp((last - first + 1) * cs);
  TRY(read_chunks(first, last - first + 1, tmp));
  std::memcpy(buf.data(), tmp.data() + (offset - first * cs), buf.size());
  return ok();
}

void Pack::block_status(uint64_t offset, uint64_t length, std::vector<Extent>& out) const {
  const uint64_t cs = header_.chunk_size, end = std::min(offset + length, header_.image_size);
  for (uint64_t pos = offset; pos < end;) {
    const bool zero = index_[pos / cs].kind == ChunkKind::Zero;
    uint64_t next = std::min(end, (pos / cs + 1) * cs);
    while (next < end && (index_[next / cs].kind == ChunkKind::Zero) == zero)
      next = std::min(end, next + cs);
    out.push_back(Extent{next - pos, zero ? kStateHole | kStateZero : 0u});
    pos = next;
  }
}

Result<std::vector<uint64_t>> Pack::verify(
    const std::function<void(uint64_t, uint64_t)>& progress) const {
  std::vector<uint64_t> bad;
  std::vector<std::byte> out(header_.chunk_size), stored;
  const uint64_t n = index_.size();
  for (uint64_t i = 0; i < n; ++i) {
    if (stop_requested()) return Error{EINTR, "interrupted"};  // SIGINT (base/stop.h)
    const IndexEntry e = index_[i];
    if (e.stored()) {
      stored.resize(e.length);
      TRY(blob_->read(e.offset, stored));
      const Location loc{this, e.offset, e.length, e.kind, e.hash};
      if (!decode(loc, stored, std::span(out).first(header_.chunk_bytes(i)))) bad.push_back(i);
    }
    if (progress) progress(i + 1, n);
  }
  return bad;
}

}  // namespace imgstream::pack
