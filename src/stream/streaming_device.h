// StreamingDevice: the heart of imgstream (DESIGN.md). A BlockDevice over a LocalStore
// (the local copy) and a Source (the remote image): a read of present regions is served
// locally; a read of missing regions fetches them from the source, keeps them in the
// store and returns them. Writes go to the store, fetching first only what a partial
// write to a missing region must merge with.
//
// Region claims. A region being fetched, or being written whole while missing, is
// *claimed*: exactly one request does the work and every other request that needs the
// region waits on the claim. So there is one fetch per region, and a fetch can never land
// on top of a client's newer write (a write waits for a fetch in flight; a fetch is never
// started for a region someone writes whole).
//
//   region state   | read                  | partial write          | whole write / trim / zero
//   ---------------+-----------------------+------------------------+---------------------------
//   present        | local read            | local write            | local write / punch
//   missing        | claim, fetch, read    | claim, fetch + merge   | claim, write, mark present
//   claimed        | wait, then retry      | wait, then retry       | wait, then retry
//
// Thread safety: all BlockDevice methods may be called concurrently (NBD server threads,
// the hydrator, the commit timer).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "device/block_device.h"
#include "source/source.h"
#include "store/local_store.h"

namespace imgstream::stream {

// The meta context that tells which regions are local: flag 1 = present.
inline constexpr const char* kPresentContext = "imgstream:present";
inline constexpr uint32_t kStatePresent = 1;
// A demand fetch never asks the source for more than this in one request.
inline constexpr uint64_t kFetchBytesMax = 32u << 20;

class StreamingDevice final : public BlockDevice {
 public:
  // `source` may be null when the store is complete (detached: local disk alone).
  // `track_prefetch`: keep the set of prefetched regions not yet read, for the prefetch
  // precision in status (one bit per region, in memory).
  StreamingDevice(store::LocalStore& store, source::Source* source, bool track_prefetch = false);
  ~StreamingDevice() override;

  uint64_t size() const override { return store_.header().image_size; }
  DeviceCaps caps() const override;
  Result<void> read(uint64_t offset, std::span<std::byte> buf) override;
  Result<void> read_nowait(uint64_t offset, std::span<std::byte> buf) override;
  Result<void> write(uint64_t offset, std::span<const std::byte> data, Durability d) override;
  Result<void> write_nowait(uint64_t offset, std::span<const std::byte> data,
                            Durability d) override;
  Result<void> flush() override;
  // Every region of the range present in the store (a read would not wait on the source).
  bool is_local(uint64_t offset, uint64_t length) const override;
  Result<void> trim(uint64_t offset, uint64_t length, Durability d) override;
  Result<void> write_zeroes(uint64_t offset, uint64_t length, ZeroFlags z,
                            Durability d) override;
  Result<void> cache(uint64_t offset, uint64_t length) override;
  std::vector<std::string> meta_contexts() const override;
  Result<void> block_status(size_t context, uint64_t offset, uint64_t length,
                            std::vector<Extent>& out) override;

  // For the hydrator: claims the missing, unclaimed regions of [first, first + count) and
  // fetches them in runs (one source request per run), calling done once with the
  // result when all have landed. Returns the number of regions claimed (0: nothing to do,
  // done is not called). `kind` is Background or Prefetch (a boot profile's regions).
  uint64_t fetch_background(uint64_t first, uint64_t count, store::FetchKind kind,
                            std::function<void(Result<void>)> done);
  // For the hydrator: marks missing, unclaimed regions of a source hole present without a
  // fetch (their local data is made zero). Returns the regions marked.
  Result<uint64_t> fill_hole(uint64_t first, uint64_t count);

  // Lets go of the source (after hydration completed). Reads of missing regions then fail.
  void detach_source();
  // Demand requests waiting on the source right now (the hydrator yields to them).
  uint64_t demand_waiting() const;

 private:
  struct Claim;
  using ClaimPtr = std::shared_ptr<Claim>;

  // Consecutive regions claimed together; one claim, one source request.
  struct Run {
    uint64_t first = 0, count = 0;
    ClaimPtr claim;
  };
  struct ClaimSet {
    std::vector<Run> mine;         // claimed now by this request, in order
    std::vector<ClaimPtr> others;  // claims held by other requests
  };

  // Claims the missing, unclaimed regions of [first, last] in runs of at most
  // kFetchBytesMax. Never waits.
  ClaimSet claim(uint64_t first, uint64_t last);
  // Drops the claim of a run; waiters wake and look again (a failed run stays missing).
  void release(const Run& run, const Result<void>& r);
  void release_all(const std::vector<Run>& runs, const Result<void>& r);
  static void wait_for(const std::vector<ClaimPtr>& others);
  // Claims every missing region of [first, last] for a writer: when another request holds
  // a claim there, lets go of its own, waits and tries again, so that no request ever
  // holds a claim while it waits for another (no deadlock).
  Result<std::vector<Run>> claim_exclusive(uint64_t first, uint64_t last);

  // Fetches a claimed run from the source into the data file, marks it present, releases
  // the claim and then calls done.
  void fetch_run_async(const Run& run, store::FetchKind kind,
                       std::function<void(Result<void>)> done);
  // Makes every region of [first, last] present, fetching the missing ones.
  // Returns whether it had to wait on the source (anything was missing or claimed).
  Result<bool> ensure_present(uint64_t first, uint64_t last);
  // Counts a read of [first, last] in the store's statistics: local or waited, and the
  // prefetched regions it reads for the first time.
  void count_read(uint64_t first, uint64_t last, bool waited, uint64_t wait_ns);
  bool all_present(uint64_t first, uint64_t last) const;

  // Fetches region `region` from the source, lays `data` (at image offset `offset`, within
  // the region) over it and writes the whole region locally.
  Result<void> write_region_merged(uint64_t region, uint64_t offset,
                                   std::span<const std::byte> data);
  source::Source* current_source() const;
  // Whether the first or last region of [offset, offset + length) is claimed in `mine`
  // and covered only in part.
  bool needs_merge(const std::vector<Run>& mine, uint64_t offset, uint64_t length) const;
  // Fetches and merges those edge regions; `data` empty means zeros.
  Result<void> merge_partial_edges(const std::vector<Run>& mine, uint64_t offset,
                                   uint64_t length, std::span<const std::byte> data);
  // The shape of every write: claims [first, last] exclusively, runs `work`, marks the
  // claimed runs present when it succeeded, releases them, and commits for FUA.
  Result<void> with_claims(uint64_t first, uint64_t last, Durability d,
                           const std::function<Result<void>(const std::vector<Run>&)>& work);
  Result<void> status_allocation(uint64_t offset, uint64_t length, std::vector<Extent>& out);

  store::LocalStore& store_;
  const uint64_t region_size_;

  mutable std::mutex mu_;
  std::unordered_map<uint64_t, ClaimPtr> claims_;  // region -> the claim on it
  source::Source* source_;                         // null once detached
  uint64_t demand_waiting_ = 0;
  // Prefetched regions not yet read (bit per region), null when not tracked.
  std::unique_ptr<std::atomic<uint64_t>[]> prefetched_;
};

}  // namespace imgstream::stream
