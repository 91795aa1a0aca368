// DirtyTracker: which regions of a disk changed, kept in a tracking file so that a crash
// of the process (or of the machine) never loses a change (docs/track-format.md).
//
// The write-ahead rule, without a sync per write (an activity log, as DRBD keeps one):
// the disk is cut into extents of several regions; the activity log (AL) names the
// extents that may hold changes not yet in the on-disk bitmap. Before a write to an
// extent outside the AL is done, the extent is added to the AL and the AL is made
// durable; writes to extents already in it cost nothing. An extent leaves the AL (when
// the AL is full, least recently used first) only after its regions' bits were written
// to the bitmap and synced. After a crash every region of every extent in the AL counts
// as changed: more than changed, never less.
//
//   write path:  begin_write (AL covers the extents, durable) -> data written ->
//                end_write (bits set in memory)
//
// Bits are set after the data is written, so that a copier that clears a bit and then
// reads the region either reads the new data or sees the bit set again.
//
// Thread safety: every method may be called from many threads at once.
#pragma once

#include <atomic>
#include <initializer_list>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/env.h"
#include "migrate/track_format.h"

namespace imgstream::migrate {

struct TrackOptions {
  // 4 KiB: a 4 KiB write costs a migration 4 KiB, not a whole larger region.
  uint32_t region_size = 4096;
  // The activity log covers 508 extents of 16 MiB: a hot set of 7.9 GiB, so that a
  // machine writing all over a disk of a few GiB pays the log's sync only the first time
  // it touches each 16 MiB (bench/migrate.sh: 4 KiB random writes over 2 GiB were held to
  // half their rate with a 1 GiB hot set). The price is paid after a crash only: every
  // region of every extent in the log counts as changed (DRBD's default is ~4.7 GiB).
  uint32_t extent_bytes = 16u << 20;
  uint32_t al_extents = kAlExtentsMax;
};

// What a tracking file names, read without changing it (`track show`): the regions its
// bitmap names, plus every region of the extents of its newest activity-log transaction
// (as a recovery would count them, in memory only).
struct TrackSnapshot {
  TrackHeader header;
  std::vector<uint8_t> dirty;  // bit (i mod 8) of byte (i / 8) is region i
  uint64_t al_extents = 0;     // extents in the newest log transaction
  // A running server holds the file: this is its last durable state (it may have
  // changed regions since, and its log extents are counted as changed).
  bool in_use = false;

  uint64_t dirty_count() const;
  std::vector<std::pair<uint64_t, uint64_t>> dirty_runs() const;  // (first region, count)
};

class DirtyTracker {
 public:
  // Reads the file at `path` without recovering it, writing anything or creating
  // anything; works while a server has it open.
  static Result<TrackSnapshot> read_snapshot(Env& env, const std::string& path);

  // Opens the tracking file at `path` for an image of `image_size` bytes, or makes it
  // (all clean). An existing file for another size is refused. Recovery: the regions of
  // the newest valid AL transaction are added to the bitmap, which is then made durable.
  static Result<std::unique_ptr<DirtyTracker>> open(Env& env, const std::string& path,
                                                    uint64_t image_size,
                                                    const TrackOptions& o = {});
  ~DirtyTracker();

  const TrackHeader& header() const { return h_; }

  // Before changing [offset, offset + length): makes the AL cover its extents, durably.
  // Must be paired with end_write.
  Result<void> begin_write(uint64_t offset, uint64_t length);
  // As begin_write, but only when no I/O is needed (the extents are in the AL already).
  bool try_begin_write(uint64_t offset, uint64_t length);
  // After the change was made (or failed): marks its regions dirty when `changed`.
  void end_write(uint64_t offset, uint64_t length, bool changed);

  bool dirty(uint64_t region) const {
    return (bits_[region / 64].load(std::memory_order_acquire) >> (region % 64)) & 1;
  }
  uint64_t dirty_count() const;
  // The dirty regions in [from, regions()), at most `max` of them, in order.
  std::vector<uint64_t> dirty_regions(uint64_t from = 0, size_t max = SIZE_MAX) const;
  // Clears the bits of these regions in memory (a copier took them). The file still names
  // them until the next flush(), so a crash before then copies them again.
  void clear(std::span<const uint64_t> regions);

  // Two-phase clearing for a copier that may die (migrate): take() clears up to `max`
  // dirty regions from `from` on and holds them as pending; confirm() drops the pending
  // ones once they are copied; release() makes them dirty again. The file names pending
  // regions as dirty until confirmed (flush writes dirty | pending).
  // Only regions below `end` are taken (a segment of a full copy takes its own).
  std::vector<uint64_t> take(uint64_t from, size_t max, uint64_t end = UINT64_MAX);
  void confirm();
  void release();
  uint64_t pending_count() const;

  // Clearing for copies the target acknowledged but has not flushed yet (active
  // mirroring): a target that crashes loses them. clear_unflushed() clears the bits in
  // memory, and the file names the regions as changed until a target flush made after
  // it succeeded: seal() closes the current generation of such regions (later clears go
  // to the next one) and returns it; once the target's flush (sent after seal()) has
  // succeeded, confirm_flushed(generation) forgets them. restore_unflushed() makes every
  // region not yet confirmed dirty again (the target failed: it may have lost them).
  // Callers serialize seal / flush / confirm_flushed.
  void clear_unflushed(std::span<const uint64_t> regions);
  unsigned seal();
  void confirm_flushed(unsigned generation);
  void restore_unflushed();
  uint64_t unflushed_count() const;

  // Marks regions dirty again (a copy of them failed). In memory, like end_write: the file
  // names them already, since clear() is not made durable before the copy is.
  void mark(const std::vector<uint64_t>& regions);

  // Writes every bit to the bitmap and syncs (the AL stays).
  Result<void> flush();
  // flush(), then an empty AL: the file alone names every change (clean shutdown).
  Result<void> close();

 private:
  DirtyTracker(Env& env, std::string path) : env_(env), path_(std::move(path)) {}
  Result<void> create(uint64_t image_size, const TrackOptions& o);
  Result<void> load();
  void alloc_side_bitmaps();  // pending_ and unflushed_, all clear
  // Moves a side bitmap's bits into bits_.
  void make_dirty_again(std::atomic<uint64_t>* side);
  // Regions set in any of these bitmaps.
  uint64_t count(std::initializer_list<const std::atomic<uint64_t>*> sides) const;
  Result<void> write_bitmap_range(uint64_t first_region, uint64_t end_region);
  Result<void> write_al_locked();
  // Extents of [offset, offset + length).
  std::pair<uint64_t, uint64_t> extent_span(uint64_t offset, uint64_t length) const;

  Env& env_;
  const std::string path_;
  std::unique_ptr<File> file_;
  std::unique_ptr<FileLock> lock_;
  TrackHeader h_;
  std::unique_ptr<std::atomic<uint64_t>[]> bits_;
  std::unique_ptr<std::atomic<uint64_t>[]> pending_;  // taken, not yet confirmed
  // Cleared by clear_unflushed(), by generation; gen_ is the one clears go to.
  std::unique_ptr<std::atomic<uint64_t>[]> unflushed_[2];
  std::atomic<unsigned> gen_{0};
  size_t words_ = 0;

  // Activity log: extent -> (writes in progress, position in LRU list).
  std::mutex al_mu_;  // held across AL I/O: one transaction at a time
  struct Active {
    uint32_t writers = 0;
    std::list<uint64_t>::iterator lru;
  };
  std::unordered_map<uint64_t, Active> al_;
  std::list<uint64_t> lru_;  // most recently used first
  uint64_t seq_ = 0;
  std::mutex bitmap_io_mu_;  // bitmap writes, one at a time
};

}  // namespace imgstream::migrate
