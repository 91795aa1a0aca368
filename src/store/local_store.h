// LocalStore: the directory that holds a streamed image's local copy (the data file or an
// external device), its region bitmap and counters, with crash-safe commits
// (docs/store-format.md). All file access goes through an Env.
//
// The rule it keeps: a region is marked present (mark_present) only after its data was
// written to data(); commit() makes the data durable before it makes the bitmap durable.
//
// Thread safety: present(), mark_present(), add_fetched() and the accessors may be called
// from any thread at any time; commit() calls are serialised internally.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "base/env.h"
#include "base/result.h"
#include "store/store_format.h"

namespace imgstream::store {

struct StoreOptions {
  std::string dir;
  uint64_t image_size = 0;
  uint32_t region_size = 1u << 20;
  std::string source_uri;
  Fingerprint fingerprint{};
  FingerprintKind fingerprint_kind = FingerprintKind::Sampled;  // how `fingerprint` was taken
  std::string device_path;  // empty: DIR/data
};

// The names a store directory holds besides `meta` while it is being made: a crash
// during creation (before `meta` is renamed into place) leaves only these, so a directory
// holding nothing else is a store being made and may be made into one. Anything else
// means the directory is someone else's (issue 12: `--store dir-with-my-files` adopted the
// directory and overwrote its `data`).
inline constexpr std::string_view kStoreNamesBeingMade[] = {
    "lock", "data", "meta.tmp", "pack.index", "pack.index.tmp", "boot.trace"};
inline constexpr std::string_view kStoreMetaName = "meta";

enum class FetchKind { Demand, Background, Prefetch };

// What `imgstream status` reads, whether or not a streamer runs.
struct StoreStatus {
  StoreHeader header;
  Slot slot;  // the newest valid commit
};

class LocalStore {
 public:
  // Opens the store in o.dir, or makes it (and its missing parents) when the directory
  // holds none. Takes the store's lock. Refuses (EEXIST... with a message naming the
  // difference) a store made for another image: other size, region size or fingerprint;
  // and, before anything is written in it, a directory that check_dir() refuses.
  static Result<std::unique_ptr<LocalStore>> open_or_create(Env& env, const StoreOptions& o);
  // Whether `dir` may hold a store: missing, empty, a store (it has `meta`), or a store
  // being made (kStoreNamesBeingMade only). Otherwise EEXIST, naming a file found there.
  static Result<void> check_dir(Env& env, const std::string& dir);
  // Reads the header and the newest valid slot without taking the lock.
  static Result<StoreStatus> read_status(Env& env, const std::string& dir);

  ~LocalStore();

  const StoreHeader& header() const { return header_; }
  const std::string& dir() const { return dir_; }
  // Whether open_or_create made the store (rather than resuming one).
  bool created() const { return created_; }
  File& data() { return *data_; }
  uint64_t regions() const { return regions_; }
  uint32_t region_size() const { return header_.region_size; }
  // Bytes of region r (the last may be short).
  uint64_t region_bytes(uint64_t r) const;

  bool present(uint64_t region) const {
    return (words_[region / 64].load(std::memory_order_acquire) >> (region % 64)) & 1;
  }
  // The first missing region in [from, regions()), or regions() when none is.
  uint64_t next_missing(uint64_t from) const;
  // Marks [first, first + count) present. The data must already be written to data().
  void mark_present(uint64_t first, uint64_t count);
  uint64_t regions_present() const { return present_count_.load(std::memory_order_relaxed); }
  bool complete() const { return regions_present() == regions_; }

  void add_fetched(FetchKind k, uint64_t bytes);
  uint64_t fetched(FetchKind k) const;
  // Read statistics (cheap: relaxed atomics on the read path). A change of these alone
  // does not make commit() write a slot unless it is asked to (with_counters).
  void add_read_local() { reads_local_.fetch_add(1, std::memory_order_relaxed); }
  void add_read_waited(uint64_t wait_ns) {
    wait_ns_.fetch_add(wait_ns, std::memory_order_relaxed);
    reads_waited_.fetch_add(1, std::memory_order_relaxed);
  }
  void add_prefetch_read(uint64_t bytes) { prefetch_read_.fetch_add(bytes); }
  void add_read_failed() { reads_failed_.fetch_add(1, std::memory_order_relaxed); }
  void add_seeded(uint64_t bytes) {
    seeded_.fetch_add(bytes);
    changes_.fetch_add(1, std::memory_order_release);
  }
  // All counters now. prefetch_bytes_read <= bytes_fetched_prefetch holds in the result.
  Counters counters() const;
  void set_state(StoreState s, std::string error_message = {});
  StoreState state() const;
  std::string error_message() const;

  // Makes every write to data() so far durable, then commits the bitmap, counters and
  // state to the next slot. Skipped when nothing changed since the last commit; changes
  // of the read statistics alone count only `with_counters` (the streamer asks for that
  // every few seconds and when it stops), so that reading a complete store does not
  // write its meta file every second.
  Result<void> commit(bool with_counters = false);

 private:
  LocalStore(Env& env, std::string dir) : env_(env), dir_(std::move(dir)) {}
  Result<void> create(const StoreOptions& o);
  Result<void> load(const StoreOptions& o);
  Result<void> open_data(bool creating);
  void adopt_slot(const Slot& s);
  std::vector<uint8_t> snapshot_bitmap() const;

  Env& env_;
  std::string dir_;
  std::unique_ptr<FileLock> lock_;
  std::unique_ptr<File> meta_;
  std::unique_ptr<File> data_;
  StoreHeader header_;
  uint64_t regions_ = 0;
  bool created_ = false;

  std::unique_ptr<std::atomic<uint64_t>[]> words_;
  size_t word_count_ = 0;
  std::atomic<uint64_t> present_count_{0};
  std::atomic<uint64_t> fetched_demand_{0}, fetched_background_{0}, fetched_prefetch_{0};
  std::atomic<uint64_t> prefetch_read_{0}, reads_local_{0}, reads_waited_{0}, wait_ns_{0};
  std::atomic<uint64_t> seeded_{0};
  std::atomic<uint64_t> reads_failed_{0};
  Counters committed_counters_;  // under commit_mu_
  std::atomic<uint64_t> changes_{0};  // bumped by every change a commit should record

  mutable std::mutex state_mu_;  // guards state_ and error_message_
  StoreState state_ = StoreState::Streaming;
  std::string error_message_;

  std::mutex commit_mu_;
  uint64_t generation_ = 0;        // of the newest durable slot
  uint64_t committed_changes_ = 0;  // changes_ as of the newest durable slot
};

}  // namespace imgstream::store
