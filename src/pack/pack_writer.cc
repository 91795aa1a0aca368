#include "pack/pack_writer.h"

#include <zstd.h>

#include <algorithm>
#include <bit>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "base/check.h"
#include "base/log.h"
#include "base/output_check.h"
#include "base/stop.h"
#include "base/thread_pool.h"
#include "pack/pack_reader.h"

namespace imgstream::pack {

namespace {

bool all_zero(std::span<const std::byte> b) {
  size_t i = 0;
  for (; i + 8 <= b.size(); i += 8) {
    uint64_t v;
    std::memcpy(&v, b.data() + i, 8);
    if (v) return false;
  }
  for (; i < b.size(); ++i)
    if (b[i] != std::byte{0}) return false;
  return true;
}

// One chunk in flight: what a worker made of it.
struct Work {
  uint64_t chunk = 0;
  bool done = false;
  Result<void> result = ok();
  IndexEntry entry;              // kind Zero, Base, Zstd or Raw (offset not yet known)
  std::vector<std::byte> bytes;  // the stored bytes for Zstd / Raw
};

// The physical order: boot chunks in the order first needed, then the rest by address.
std::vector<uint64_t> physical_order(const PackHeader& h,
                                     const std::vector<std::pair<uint64_t, uint64_t>>& boot,
                                     uint64_t& boot_positions) {
  const uint64_t n = h.chunk_count();
  std::vector<bool> taken(n);
  std::vector<uint64_t> order;
  order.reserve(n);
  for (auto [off, len] : boot) {
    if (len == 0 || off >= h.image_size) continue;
    const uint64_t end = std::min(off + len, h.image_size);
    for (uint64_t c = off / h.chunk_size; c * h.chunk_size < end; ++c)
      if (!taken[c]) {
        taken[c] = true;
        order.push_back(c);
      }
  }
  boot_positions = order.size();
  for (uint64_t c = 0; c < n; ++c)
    if (!taken[c]) order.push_back(c);
  return order;
}

// Reads, hashes and compresses one chunk (on a pool thread).
void make_chunk(File& image, const PackHeader& h, int level, const Pack* base, Work& w) {
  if (stop_requested()) {  // the chunks still queued go at once
    w.result = Error{EINTR, "interrupted"};
    return;
  }
  std::vector<std::byte> raw(h.chunk_bytes(w.chunk));
  w.result = read_exact_at(image, w.chunk * h.chunk_size, raw);
  if (!w.result) return;
  if (all_zero(raw)) {
    w.entry.kind = ChunkKind::Zero;
    return;
  }
  w.entry.hash = sha256(raw);
  if (base && base->has_chunk(w.entry.hash)) {
    w.entry.kind = ChunkKind::Base;
    return;
  }
  thread_local std::unique_ptr<ZSTD_CCtx, decltype(&ZSTD_freeCCtx)> cctx(ZSTD_createCCtx(),
                                                                          &ZSTD_freeCCtx);
  w.bytes.resize(ZSTD_compressBound(raw.size()));
  const size_t n = ZSTD_compressCCtx(cctx.get(), w.bytes.data(), w.bytes.size(), raw.data(),
                                     raw.size(), level);
  if (!ZSTD_isError(n) && n < raw.size()) {
    w.bytes.resize(n);
    w.entry.kind = ChunkKind::Zstd;
  } else {
    w.bytes = std::move(raw);  // incompressible: stored as is
    w.entry.kind = ChunkKind::Raw;
  }
  w.entry.length = static_cast<uint32_t>(w.bytes.size());
}

// The output is checked before any work (issue 12: `pack -o DIR` compressed everything
// and only then failed at the rename): not a directory, in a writable directory, and not
// the image, the base or a pack of the base's chain (the caller decides whether an
// existing file of another kind may be replaced: check_output, cli/pack_cmd.cc).
Result<void> check_pack_output(Env& env, const PackWriteOptions& o, const Pack* base) {
  if (&env != Env::posix()) return ok();  // the checks are about the real file system
  std::vector<std::string> inputs{o.image};
  for (const Pack* b = base; b; b = b->base()) inputs.push_back(b->uri());
  return check_output(o.output, inputs, kPackOutput, Overwrite::Force);
}

// The header of the pack of `image`: its geometry, checked.
Result<PackHeader> plan_header(File& image, const PackWriteOptions& o) {
  PackHeader h;
  h.image_size = TRY_CTX(image.size(), o.image);
  h.chunk_size = o.chunk_size;
  h.level = static_cast<uint32_t>(o.level);
  if (h.image_size == 0) return Error::invalid(o.image + ": the image is empty");
  if (h.chunk_size < kChunkBytesMin || h.chunk_size > kChunkBytesMax ||
      !std::has_single_bit(h.chunk_size))
    return Error::invalid("chunk size must be a power of two from 4K to 16M");
  if (h.chunk_count() > kChunksMax) return Error::invalid(o.image + ": too many chunks");
  return h;
}

// The base pack, when there is one: named in the header, and the output checked against
// its chain.
Result<std::unique_ptr<Pack>> open_base(Env& env, const PackWriteOptions& o, PackHeader& h) {
  if (o.base.empty()) return std::unique_ptr<Pack>();
  auto base = TRY(Pack::open(env, o.base));
  if (base->header().chunk_size != h.chunk_size)
    return Error::invalid("the base pack " + o.base + " has chunks of " +
                          std::to_string(base->header().chunk_size) +
                          " bytes; write this one with the same --chunk-size");
  if (o.base.size() > kBaseHintBytesMax) return Error::invalid("base name too long");
  h.flags |= kFlagHasBase;
  h.base_identity = base->header().identity;
  h.base_hint = o.base;
  TRY(check_pack_output(env, o, base.get()));
  return base;
}

// The writing thread's side: chunks come in the physical order and are stored (or
// named: zero, in the base, a duplicate) at the cursor.
struct PackSink {
  File& out;
  const std::string& tmp;
  PackHeader& h;
  uint64_t boot_positions = 0;
  std::vector<IndexEntry> index = std::vector<IndexEntry>(h.chunk_count());
  std::unordered_map<Digest, IndexEntry, DigestHash> written;
  uint64_t cursor = kPackHeaderBytes, done_bytes = 0;
  PackWriteReport rep;

  // Takes the chunk at physical position k.
  Result<void> take(size_t k, const Work& w) {
    IndexEntry e = w.entry;
    if (e.kind == ChunkKind::Zero) {
      ++rep.zero_chunks;
    } else if (e.kind == ChunkKind::Base) {
      ++rep.base_chunks;
    } else if (auto it = written.find(e.hash); it != written.end()) {
      e = it->second;
      ++rep.duplicate_chunks;
    } else {
      TRY_CTX(write_all_at(out, cursor, w.bytes), tmp);
      e.offset = cursor;
      cursor += e.length;
      written.emplace(e.hash, e);
      ++rep.stored_chunks;
      rep.raw_chunks += e.kind == ChunkKind::Raw;
      rep.stored_bytes += e.length;
      if (k < boot_positions) ++h.boot_chunks;
    }
    index[w.chunk] = e;
    if (k + 1 == boot_positions) h.boot_end = cursor;
    done_bytes += h.chunk_bytes(w.chunk);
    return ok();
  }
};

// Makes the chunks of `order` on a pool, a ring of `window` in flight (position k lives
// in slot k % window), and hands them to the sink in order.
Result<void> write_chunks(File& image, const PackWriteOptions& o, const Pack* base,
                          const std::vector<uint64_t>& order, unsigned threads, size_t window,
                          PackSink& sink) {
  std::vector<Work> slots(std::min(window, order.size()));
  std::mutex mu;
  std::condition_variable cv;
  ThreadPool pool(threads);  // declared after `slots`: joins before they go
  auto post = [&](size_t k) {
    Work& w = slots[k % slots.size()];
    w = Work{};
    w.chunk = order[k];
    pool.post([&, k] {
      Work& ww = slots[k % slots.size()];
      make_chunk(image, sink.h, o.level, base, ww);
      std::lock_guard lock(mu);
      ww.done = true;
      cv.notify_all();
    });
  };
  for (size_t k = 0; k < slots.size(); ++k) post(k);
  for (size_t k = 0; k < order.size(); ++k) {
    Work& w = slots[k % slots.size()];
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return w.done; });
    }
    if (w.result && stop_requested()) w.result = Error{EINTR, "interrupted"};
    TRY(std::move(w.result));  // the pool finishes the chunks in flight before `slots` go
    TRY(sink.take(k, w));
    if (o.progress) o.progress(sink.done_bytes, sink.h.image_size);
    if (k + slots.size() < order.size()) post(k + slots.size());
  }
  return ok();
}

// The index and the header after the chunks; OUTPUT.tmp made durable and renamed.
Result<void> finish_pack(Env& env, const PackWriteOptions& o, std::unique_ptr<File> out,
                         const std::string& tmp, PackSink& sink) {
  PackHeader& h = sink.h;
  if (sink.boot_positions == 0) h.boot_end = kPackHeaderBytes;
  h.index_offset = sink.cursor;
  const std::vector<std::byte> idx = encode_index(sink.index);
  h.index_length = idx.size();
  h.index_hash = sha256(idx);
  h.identity = identity_of(h.image_size, h.chunk_size, sink.index);
  TRY_CTX(write_all_at(*out, h.index_offset, idx), tmp);
  TRY_CTX(write_all_at(*out, 0, encode_header(h)), tmp);
  TRY_CTX(out->sync(), tmp);
  out.reset();
  if (stop_requested()) return Error{EINTR, "interrupted"};
  TRY_CTX(env.rename(tmp, o.output), o.output);
  return env.sync_dir(parent_dir(o.output));
}

}  // namespace

Result<PackWriteReport> write_pack(Env& env, const PackWriteOptions& o) {
  TRY(check_pack_output(env, o, nullptr));
  std::shared_ptr<File> image = TRY_CTX(env.open(o.image, OpenMode::ReadOnly), o.image);
  PackHeader h = TRY(plan_header(*image, o));
  std::unique_ptr<Pack> base = TRY(open_base(env, o, h));

  const std::string tmp = o.output + ".tmp";
  // Removed on every failure, and by a second stop signal's forced exit.
  TempFile tmp_file(tmp);
  auto out = TRY_CTX(env.open(tmp, OpenMode::CreateOrOpen), tmp);
  TRY_CTX(out->truncate(0), tmp);

  PackSink sink{*out, tmp, h};
  const std::vector<uint64_t> order = physical_order(h, o.boot_ranges, sink.boot_positions);
  const unsigned threads = o.threads ? o.threads : std::max(1u, std::thread::hardware_concurrency());
  const size_t window = size_t(threads) * kChunksInFlightPerThread;
  sink.rep.chunks = order.size();
  TRY(write_chunks(*image, o, base.get(), order, threads, window, sink));
  TRY(finish_pack(env, o, std::move(out), tmp, sink));
  tmp_file.keep();
  sink.rep.header = h;
  sink.rep.file_bytes = h.index_offset + h.index_length;
  return sink.rep;
}

}  // namespace imgstream::pack
