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
//   missing        | claim, fetch, copy    | claim, fetch + merge   | claim, write, mark present
//   claimed        | copy once landed *    | wait, then retry       | wait, then retry
//
// * A read is answered from the fetched buffer as soon as it lands (its own fetch, or a
//   one-piece fetch of another request); the store write follows on the StoreWriter's
//   thread, and the region is marked present (its claim released) only after it. A
//   claim whose fetch failed, or that is a write's, is waited for and looked at again.
//
// Memory (issue 12). Every fetch is cut into pieces of at most kFetchBytesMax, one
// source request and one buffer each, and takes each piece's bytes from the device's
// FetchBudget (kFetchBudgetBytes) before the buffer exists, giving them back when it is
// freed: whatever clients ask (a 4 GiB NBD_CMD_CACHE, 16 threads of 32 MiB reads), the
// device never holds more than the budget in fetch buffers. Demand fetches (reads,
// partial-write merges) may use all of it; background ones (hydration, prefetch, CACHE)
// never take the last kFetchDemandReserveBytes and yield to any demand fetch that waits
// (fetch_budget.h has the table). Background fetches take their bytes *before* they claim
// regions, so that they never hold a claim while they wait; demand fetches claim first
// (so that one request does the work) and then wait only on fetches in flight.
//
// NBD_CMD_CACHE is advisory, and the client is answered at once: the range goes into a
// bounded queue (kCacheRangesMax; a CACHE that finds it full is dropped) that one thread
// of the device works through, a piece at a time within the budget, at most
// kCacheWindowsInFlightMax pieces at once (one while a demand read waits on the source).
// Waiting on a server pool thread instead would let a few large CACHEs occupy the whole
// pool for as long as the source takes, and starve every client's reads.
//
// Thread safety: all BlockDevice methods may be called concurrently (NBD server threads,
// the hydrator, the commit timer).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "base/limits.h"
#include "device/block_device.h"
#include "source/source.h"
#include "store/local_store.h"
#include "stream/fetch_budget.h"
#include "stream/store_writer.h"

namespace imgstream::stream {

// The meta context that tells which regions are local: flag 1 = present.
inline constexpr const char* kPresentContext = "imgstream:present";
inline constexpr uint32_t kStatePresent = 1;
// One piece of a fetch: one source request, one buffer. Small enough that the budget
// holds several (a 32 MiB client read becomes 4 pieces in flight at once, not 1 request
// of 32 MiB; a CACHE and the hydrator share what demand leaves), large enough that a
// request's fixed cost stays small: it equals the hydrator's default batch (--batch 8M),
// so hydration sends the requests it always sent. Measured against the 32 MiB of before
// with bench/stream.sh rows 1, 2 and 4 (demand and hydration): no change beyond the
// run-to-run noise.
inline constexpr uint64_t kFetchBytesMax = limits::kFetchBytesMax;
// Bytes a device holds in fetch buffers at once, demand and background together.
inline constexpr uint64_t kFetchBudgetBytes = limits::kFetchBudgetBytes;
// Background fetches never take these: a demand piece always finds room beside them.
inline constexpr uint64_t kFetchDemandReserveBytes = limits::kFetchDemandReserveBytes;
static_assert(kFetchDemandReserveBytes >= kFetchBytesMax,
              "a demand piece must fit beside all background fetches");
static_assert(kFetchBudgetBytes >= kFetchDemandReserveBytes + kFetchBytesMax,
              "background fetches must have room for at least one piece");
// NBD_CMD_CACHE ranges waiting for the device's cache thread; one more is dropped.
inline constexpr size_t kCacheRangesMax = limits::kCacheRangesMax;
// Pieces (windows of at most kFetchBytesMax) the cache thread has in flight at most.
inline constexpr unsigned kCacheWindowsInFlightMax = limits::kCacheWindowsInFlightMax;
// A sequential reader is read ahead by this much: the regions after the one it enters are
// fetched while it reads, at background priority and only when the budget has room at
// once (never waiting). bench/stream.sh row 1 (64 KiB reads at QD 1, 1 MiB regions, 2 ms
// per source read) is bound by one source round trip per region without it.
inline constexpr uint64_t kReadaheadBytes = limits::kReadaheadBytes;
static_assert(kReadaheadBytes <= kFetchBytesMax, "a read-ahead is one piece at most");
// Sequential streams followed at once (a few readers at different places).
inline constexpr size_t kReadStreamsMax = limits::kReadStreamsMax;

// The bounds above, as a device uses them (tests make them small).
struct FetchLimits {
  uint64_t piece_bytes = kFetchBytesMax;
  uint64_t budget_bytes = kFetchBudgetBytes;
  uint64_t demand_reserve_bytes = kFetchDemandReserveBytes;
  uint64_t readahead_bytes = kReadaheadBytes;  // 0: no read-ahead
};

class StreamingDevice final : public BlockDevice {
 public:
  // `source` may be null when the store is complete (detached: local disk alone).
  // `track_prefetch`: keep the set of prefetched regions not yet read, for the prefetch
  // precision in status (one bit per region, in memory).
  StreamingDevice(store::LocalStore& store, source::Source* source, bool track_prefetch = false,
                  FetchLimits limits = {});
  // Drops the CACHE ranges not yet started and waits for the fetches in flight.
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

  // For the hydrator: fetches the missing, unclaimed regions of [first, first + count) in
  // windows of one piece: takes a window's bytes from the budget (waiting for them, at
  // background priority), claims the window's regions, starts their fetch, and goes on
  // to the next window. Calls done once with the result when all have landed. Returns the
  // number of regions claimed (0: nothing to do, done is not called). `kind` is
  // Background or Prefetch (a boot profile's regions). May wait; never on a claim.
  uint64_t fetch_background(uint64_t first, uint64_t count, store::FetchKind kind,
                            std::function<void(Result<void>)> done);
  // For the hydrator: marks missing, unclaimed regions of a source hole present without a
  // fetch (their local data is made zero). Returns the regions marked.
  Result<uint64_t> fill_hole(uint64_t first, uint64_t count);

  // Lets go of the source (after hydration completed). Reads of missing regions then fail.
  void detach_source();
  // Demand requests waiting on the source right now (the hydrator yields to them).
  uint64_t demand_waiting() const;
  const FetchBudget& budget() const { return budget_; }

 private:
  struct Claim;
  using ClaimPtr = std::shared_ptr<Claim>;

  // Consecutive regions claimed together; one claim, one source request.
  struct Run {
    uint64_t first = 0, count = 0;
    ClaimPtr claim;
  };
  // Consecutive regions present, or held by one claim of another request.
  struct Span {
    uint64_t first = 0, count = 0;
    ClaimPtr claim;  // null for present regions
  };
  struct ClaimSet {
    std::vector<Run> mine;       // claimed now by this request, in order
    std::vector<Span> others;    // held by other requests' claims, in order
    std::vector<Span> present;   // present already, in order
  };

  // Claims the missing, unclaimed regions of [first, last] in runs of at most one piece
  // (limits_.piece_bytes; one region when a region is larger). Never waits.
  ClaimSet claim(uint64_t first, uint64_t last);
  // Drops the claim of a run; waiters wake and look again (a failed run stays missing).
  void release(const Run& run, const Result<void>& r);
  void release_all(const std::vector<Run>& runs, const Result<void>& r);
  static void wait_for(const std::vector<Span>& others);
  // Claims every missing region of [first, last] for a writer: when another request holds
  // a claim there, lets go of its own, waits and tries again, so that no request ever
  // holds a claim while it waits for another (no deadlock).
  Result<std::vector<Run>> claim_exclusive(uint64_t first, uint64_t last);

  struct RunFetch;
  struct Piece;
  // Where a demand read wants a run's bytes: each piece's part of [offset, offset +
  // buf.size()) is copied into buf as the piece lands (on the source's thread), and
  // served is called once every piece started has landed, before the store writes.
  struct ReadTarget {
    uint64_t offset = 0;
    std::span<std::byte> buf;
    std::function<void(Result<void>)> served;
  };
  // Fetches a claimed run from the source into the data file in pieces, marks it present,
  // releases the claim and then calls done (last: the device may be gone after it). Each
  // piece's bytes come from `prepaid` while it holds enough, else from the budget at
  // demand priority (the run's claim is held: someone may wait on it). Returns once every
  // piece is started; may wait for budget, only on fetches in flight.
  // A piece lands: its bytes go to the target (if any) and to the store writer.
  void fetch_run(const Run& run, store::FetchKind kind, FetchBudget::Grant& prepaid,
                 std::function<void(Result<void>)> done, const ReadTarget* target = nullptr);
  void start_piece(source::Source& src, const std::shared_ptr<RunFetch>& f, uint64_t offset,
                   FetchBudget::Grant grant);
  // Counts a landed piece (its bytes copied to the target, published, queued for the
  // store); the run's last one calls the target's served.
  // Static: it runs after the store write was queued, when the device may be gone.
  static void piece_landed(const std::shared_ptr<RunFetch>& f, const Result<void>& r);
  void piece_done(const std::shared_ptr<RunFetch>& f, Result<void> r);
  // fetch_background's work, for the hydrator and the cache thread alike.
  uint64_t fetch_windows(uint64_t first, uint64_t count, store::FetchKind kind,
                         std::function<void(Result<void>)> done);
  void cache_loop();
  // Serves a read of which region `from` (and maybe more) was missing: claims what is
  // missing, copies the fetched bytes straight into buf, reads present regions from the
  // store meanwhile, and takes regions other requests fetch from their landed buffer (or
  // the store, once written). Presence is looked at once, by the claim.
  Result<void> read_cold(uint64_t offset, std::span<std::byte> buf, uint64_t from, int round);
  // Follows sequential readers and fetches the regions ahead of them (kReadaheadBytes).
  void read_ahead(uint64_t offset, uint64_t length);
  // Counts a read of [first, last] in the store's statistics: local or waited, and the
  // prefetched regions it reads for the first time.
  void count_read(uint64_t first, uint64_t last, bool waited, uint64_t wait_ns);
  bool all_present(uint64_t first, uint64_t last) const;

  // Fetches region `region` from the source a piece at a time, lays `data` (at image
  // offset `offset`, within the region; empty: `length` zeros) over it and writes the
  // whole region locally.
  Result<void> write_region_merged(uint64_t region, uint64_t offset, uint64_t length,
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
  const FetchLimits limits_;
  FetchBudget budget_;

  mutable std::mutex mu_;
  std::unordered_map<uint64_t, ClaimPtr> claims_;  // region -> the claim on it
  std::condition_variable claims_empty_cv_;        // claims_ became empty (under mu_)
  source::Source* source_;                         // null once detached
  uint64_t demand_waiting_ = 0;
  // Prefetched regions not yet read (bit per region), null when not tracked.
  std::unique_ptr<std::atomic<uint64_t>[]> prefetched_;

  // NBD_CMD_CACHE: regions [next, end) still to fetch, worked through by cacher_ (made
  // by the first CACHE that needs it). Lock order: cache_mu_ before mu_.
  struct CacheRange {
    uint64_t next = 0, end = 0;
  };
  std::mutex cache_mu_;
  std::condition_variable cache_cv_;
  std::deque<CacheRange> cache_ranges_;  // at most kCacheRangesMax
  unsigned cache_in_flight_ = 0;         // windows started by cacher_, not landed
  bool cache_stopping_ = false;
  std::thread cacher_;

  // End offsets of the last reads of up to kReadStreamsMax sequential readers.
  // kNoStream in a slot: no stream there (set by the constructor), so that a first read,
  // even at offset 0, is not sequential yet.
  static constexpr uint64_t kNoStream = UINT64_MAX;
  std::atomic<uint64_t> streams_[kReadStreamsMax];
  std::atomic<uint64_t> stream_next_{0};

  // Last: destroyed (its thread joined) first, before anything its jobs touch.
  StoreWriter writer_;
};

}  // namespace imgstream::stream
