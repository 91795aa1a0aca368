#include "pack/seed.h"

#include <atomic>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "base/log.h"
#include "base/thread_pool.h"
#include "blob/blob.h"

namespace imgstream::pack {

namespace {

}  // namespace

Result<SeedReport> seed_store(Env& env, const Pack& pack, store::LocalStore& store,
                              const std::string& seed) {
  const PackHeader& h = pack.header();
  SeedReport rep;
  if (store.region_size() != h.chunk_size) {
    LOG_WARN("seed {} not used: the store's regions are not the pack's chunks", seed);
    return rep;
  }
  // A store directory: its data file, where its regions are present.
  std::string path = seed;
  std::unique_ptr<store::StoreStatus> st;
  if (auto s = store::LocalStore::read_status(env, seed)) {
    st = std::make_unique<store::StoreStatus>(std::move(*s));
    path = st->header.device_path.empty() ? seed + "/data" : st->header.device_path;
  }
  // A FIFO or a character device named as a seed would block or feed anything: refused.
  std::shared_ptr<File> file =
      TRY_CTX(blob::open_input(env, path, blob::InputKind::RegularOrBlockDevice), "seed " + seed);
  const uint64_t size = TRY_CTX(file->size(), "seed " + seed);
  const uint64_t cs = h.chunk_size, n = size / cs;  // whole chunks only
  auto usable = [&](uint64_t c) {
    if (!st) return true;
    if (st->header.region_size != cs) return false;  // keep it simple: like for like
    return c < st->header.regions() && (st->slot.bitmap[c / 8] >> (c % 8)) & 1;
  };

  // Which hashes does the pack need (and where)?
  std::unordered_map<Digest, std::vector<uint64_t>, DigestHash> wanted;
  for (uint64_t c = 0; c < h.chunk_count(); ++c) {
    const IndexEntry& e = pack.index()[c];
    if (e.kind != ChunkKind::Zero && !store.present(c)) wanted[e.hash].push_back(c);
  }
  // Hash the seed on all cores; copy what matches.
  std::mutex mu;
  Result<void> failed = ok();
  // A chunk the seed has twice is copied once.
  std::unique_ptr<std::atomic<bool>[]> taken(new std::atomic<bool>[h.chunk_count()]());
  {
    ThreadPool pool(std::max(1u, std::thread::hardware_concurrency()));
    constexpr uint64_t kBatch = 64;
    for (uint64_t first = 0; first < n; first += kBatch) {
      pool.post([&, first] {
        std::vector<std::byte> buf(cs);
        for (uint64_t c = first; c < std::min(n, first + kBatch); ++c) {
          if (!usable(c)) continue;
          Result<void> r = read_exact_at(*file, c * cs, buf);
          if (r) {
            auto it = wanted.find(sha256(buf));
            if (it != wanted.end())
              for (uint64_t dst : it->second) {
                if (dst * cs + buf.size() > h.image_size) continue;  // a short last chunk differs
                if (taken[dst].exchange(true)) continue;
                r = write_all_at(store.data(), dst * cs, buf);
                if (!r) break;
                store.mark_present(dst, 1);  // after its data, as always
                std::lock_guard lock(mu);
                ++rep.chunks;
                rep.bytes += cs;
              }
          }
          std::lock_guard lock(mu);
          rep.seed_bytes_hashed += cs;
          if (!r && failed) failed = std::move(r);
        }
      });
    }
  }
  TRY_CTX(failed, "seed " + seed);
  return rep;
}

}  // namespace imgstream::pack
