#include "pack/pack_tools.h"

#include <algorithm>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_set>

#include "base/stop.h"
#include "base/thread_pool.h"

namespace imgstream::pack {

std::vector<std::string> chain_files(const Pack& p) {
  std::vector<std::string> files;
  for (const Pack* b = &p; b; b = b->base()) files.push_back(b->uri());
  return files;
}

Result<void> check_unpack_output(const Pack& p, const UnpackOptions& o) {
  return check_output(o.output, chain_files(p), kRawImageOutput, o.overwrite);
}

namespace {

Error interrupted() {
  return Error{EINTR, "interrupted"};
}

// Reads chunks [first, first + count) and writes those that are not zero (holes stay).
Result<void> unpack_batch(const Pack& p, File& out, uint64_t first, uint64_t count) {
  const PackHeader& h = p.header();
  const uint64_t off = first * h.chunk_size;
  const uint64_t bytes = std::min<uint64_t>(count * h.chunk_size, h.image_size - off);
  std::vector<std::byte> buf(bytes);
  if (stop_requested()) return interrupted();
  TRY(p.read_chunks(first, count, buf));
  for (uint64_t c = first; c < first + count; ++c) {
    if (p.index()[c].kind == ChunkKind::Zero) continue;
    const uint64_t at = (c - first) * h.chunk_size;
    TRY(write_all_at(out, off + at, std::span<const std::byte>(buf).subspan(at, h.chunk_bytes(c))));
  }
  return ok();
}

// Every batch of the image on a pool, a bounded number in flight; the first failure
// stops the posting of more (and is what is returned).
Result<void> unpack_chunks(const Pack& p, File& out, const UnpackOptions& o) {
  const PackHeader& h = p.header();
  const unsigned threads =
      o.threads ? o.threads : std::max(2u, std::thread::hardware_concurrency());
  std::mutex mu;
  std::condition_variable cv;
  Result<void> failed = ok();
  uint64_t done = 0;
  size_t in_flight = 0;
  {
    ThreadPool pool(threads);
    const uint64_t n = h.chunk_count();
    for (uint64_t first = 0; first < n; first += kUnpackBatchChunks) {
      {
        std::unique_lock lock(mu);  // bounded memory: a few batches per thread at most
        cv.wait(lock, [&] { return in_flight < kUnpackBatchesPerThread * threads; });
        if (failed && stop_requested()) failed = interrupted();
        if (!failed) break;
        ++in_flight;
      }
      pool.post([&, first] {
        const uint64_t count = std::min(kUnpackBatchChunks, n - first);
        Result<void> r = unpack_batch(p, out, first, count);
        std::lock_guard lock(mu);
        if (!r && failed) failed = std::move(r);
        done += std::min<uint64_t>(count * h.chunk_size, h.image_size - first * h.chunk_size);
        --in_flight;
        if (o.progress) o.progress(done, h.image_size);
        cv.notify_all();
      });
    }
  }  // the pool joins here
  if (failed && stop_requested()) failed = interrupted();
  return failed;
}

}  // namespace

Result<uint64_t> unpack(Env& env, const Pack& p, const UnpackOptions& o) {
  const uint64_t image_size = p.header().image_size;
  const std::string tmp = o.output + ".tmp";
  TempFile tmp_file(tmp);  // removed on every failure and on a forced exit
  std::unique_ptr<File> out = TRY_CTX(env.open(tmp, OpenMode::CreateOrOpen), tmp);
  TRY_CTX(out->truncate(0), tmp);
  TRY_CTX(out->truncate(image_size), tmp);
  TRY(unpack_chunks(p, *out, o));
  TRY_CTX(out->sync(), tmp);
  out.reset();
  TRY_CTX(env.rename(tmp, o.output), o.output);
  tmp_file.keep();
  return image_size;
}

nlohmann::json PackDiff::to_json() const {
  return nlohmann::json{
      {"distinct_chunks", distinct_chunks}, {"shared_chunks", shared_chunks},
      {"new_chunks", new_chunks},           {"new_bytes_stored", new_bytes_stored},
      {"new_bytes_image", new_bytes_image}, {"same_image", same_image}};
}

PackDiff diff_packs(const Pack& old_pack, const Pack& new_pack) {
  PackDiff d;
  std::unordered_set<Digest, DigestHash> seen;
  for (uint64_t i = 0; i < new_pack.index().size(); ++i) {
    const Pack::Location loc = new_pack.locate(i);
    if (loc.kind == ChunkKind::Zero || !seen.insert(loc.hash).second) continue;
    ++d.distinct_chunks;
    if (old_pack.has_chunk(loc.hash)) {
      ++d.shared_chunks;
    } else {
      ++d.new_chunks;
      d.new_bytes_stored += loc.length;
      d.new_bytes_image += new_pack.header().chunk_bytes(i);
    }
  }
  d.same_image = old_pack.header().identity == new_pack.header().identity;
  return d;
}

}  // namespace imgstream::pack
