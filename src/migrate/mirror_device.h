// MirrorDevice: the active mode of a live migration (migrate/migrator.h), for a machine
// that writes faster than the link to the target, which rounds of copies would chase
// forever. It sits above the tracking layer (hold -> mirror -> tracking -> disk):
//
//   passive (the default)  every request passes through untouched
//   active                 every write, zero and trim is made on the disk, then on the
//                          target, and only then acknowledged: the machine writes at the
//                          target's pace, and what it writes needs no later copy. A copier
//                          thread copies the regions the tracker names as changed (written
//                          before the activation, or whose mirroring failed): one worker
//                          per target connection but one (left to the machine's writes),
//                          each with several runs in flight on its connection.
//
// Ordering: a copy and a mirrored write of the same region never overlap. Each takes a
// lock on its range of regions first and keeps it until the target acknowledged it, so
// the target can never receive an older copy of a region after a newer write to it.
// A mirrored write clears the tracker's bits only of the regions that were clean before
// it (the target had them): a region still waiting for the copier stays named, since a
// write of part of it does not bring the rest along.
//
// Durability: the cutover flushes the target (drain()), the copier flushes it every half
// second when anything reached it, and a machine's flush flushes it too. A region the
// target acknowledged (a mirrored write, a copy) is cleared in memory, but the tracking
// file names it until a target flush made after that succeeded (clear_unflushed / seal /
// confirm_flushed in migrate/dirty_tracker.h); when the target fails, or the mode is
// switched off, what it has not flushed is changed again. So a target that crashes
// loses nothing the next copy does not bring again.
//
// The copier takes the tracker's bits directly, not through take/confirm: the two-phase
// protocol is for a copier in another process, which may die.
//
// Lock contract (take in this order, never the other way):
//   mode_mu_    shared by every request while it runs, exclusive in activate()/deactivate();
//               guards target_ and the mode (active_ is also atomic for cheap reads)
//   flush_mu_   one target flush at a time (seal, flush, confirm)
//   lock_mu_    guards locked_ (range locks), waited on with lock_cv_; never held across I/O
//   copier_mu_  guards stop_, copier_idle_ and copy_workers_; copier_cv_ wakes the copier
// The copier thread (copier_thread_) runs from activate() to deactivate(); the counters
// are atomics read by status without a lock.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <utility>
#include <vector>

#include "device/forwarding_device.h"
#include "migrate/dirty_tracker.h"
#include "migrate/remote_device.h"

namespace imgstream::migrate {

class MirrorDevice final : public ForwardingDevice {
 public:
  MirrorDevice(BlockDevice& inner, DirtyTracker& tracker) : ForwardingDevice(inner), t_(tracker) {}
  ~MirrorDevice() override;

  // Starts mirroring to `target` (of at least this disk's size) and the copier. Waits for
  // the requests in flight to finish first, so that none of them escapes the mirror.
  Result<void> activate(std::unique_ptr<NbdTarget> target);
  // Back to passive: stops the copier, waits for mirrored requests, drops the target.
  void deactivate();
  bool active() const { return active_.load(std::memory_order_acquire); }

  // For the cutover, with the disk held: waits until the copier has copied every changed
  // region, then flushes the target. Fails after `limit`, or when the target fails.
  Result<void> drain(std::chrono::milliseconds limit);

  struct Stats {
    uint64_t mirrored_bytes = 0;   // written to the target with the machine's writes
    uint64_t copied_bytes = 0;     // copied by the copier
    uint64_t mirror_failures = 0;  // writes whose mirroring failed (left to the copier)
    uint64_t copy_failures = 0;
  };
  Stats stats() const;

  Result<void> write(uint64_t offset, std::span<const std::byte> data, Durability d) override;
  Result<void> write_nowait(uint64_t offset, std::span<const std::byte> data,
                            Durability d) override;
  Result<void> flush() override;
  Result<void> trim(uint64_t offset, uint64_t length, Durability d) override;
  Result<void> write_zeroes(uint64_t offset, uint64_t length, ZeroFlags z, Durability d) override;

 private:
  // Regions [first, end) locked against other copies and mirrored writes.
  class RangeLock {
   public:
    RangeLock(MirrorDevice& m, uint64_t first, uint64_t end);
    ~RangeLock();
    RangeLock(const RangeLock&) = delete;
    RangeLock& operator=(const RangeLock&) = delete;

   private:
    MirrorDevice& m_;
    std::pair<uint64_t, uint64_t> range_;
  };

  // A change made on the disk by `local`, then mirrored by `remote` (both may fail).
  template <typename Local, typename Remote>
  Result<void> mirrored(uint64_t offset, uint64_t length, Local local, Remote remote);
  void copier();
  // Flushes the target; on success the regions cleared before it are durable there.
  Result<void> flush_target();
  // Copies the runs of regions [first, end) still changed, taking them from `runs` at
  // `next` (shared by the workers) through one pipelined connection; false when the
  // target failed.
  // Copies `runs` with copy_workers_ threads (this one among them); false when one failed.
  // Called by the copier thread, holding mode_mu_ shared (target_ stays).
  bool copy_in_parallel(const std::vector<std::pair<uint64_t, uint64_t>>& runs);
  bool copy_runs(const std::vector<std::pair<uint64_t, uint64_t>>& runs, std::atomic<size_t>& next,
                 const std::atomic<bool>& failed);

  DirtyTracker& t_;
  // Shared by every request while it runs; exclusive to switch modes.
  std::shared_mutex mode_mu_;
  std::atomic<bool> active_{false};
  std::unique_ptr<RemoteDevice> target_;

  std::mutex flush_mu_;  // one target flush at a time (seal, flush, confirm)
  std::mutex lock_mu_;
  std::condition_variable lock_cv_;
  std::vector<std::pair<uint64_t, uint64_t>> locked_;  // a few: one per request in flight

  std::mutex copier_mu_;
  std::condition_variable copier_cv_;  // wakes the copier (work, stop) and drain (done)
  bool stop_ = false;
  bool copier_idle_ = false;  // the copier found nothing changed on its last full pass
  std::thread copier_thread_;
  unsigned copy_workers_ = 1;  // runs copied at once (set by activate)

  std::atomic<uint64_t> mirrored_bytes_{0}, copied_bytes_{0}, mirror_failures_{0},
      copy_failures_{0};
};

}  // namespace imgstream::migrate
