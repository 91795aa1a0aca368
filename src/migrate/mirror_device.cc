#include "migrate/mirror_device.h"

#include <algorithm>
#include <array>
#include <deque>
#include <thread>

#include "base/check.h"
#include "base/limits.h"
#include "base/log.h"

namespace imgstream::migrate {

namespace {

// What the copier moves in one piece: large enough for the link, small enough that a
// machine's write to the same regions waits for it only briefly.
constexpr uint64_t kCopyRunBytes = limits::kCopyRunBytes;
constexpr size_t kScanRegions = 4096;  // regions looked at per pass of the copier
constexpr auto kIdlePoll = std::chrono::milliseconds(20);
constexpr auto kFailureBackoff = std::chrono::milliseconds(200);
constexpr auto kTargetFlushEvery = std::chrono::milliseconds(500);

}  // namespace

MirrorDevice::RangeLock::RangeLock(MirrorDevice& m, uint64_t first, uint64_t end)
    : m_(m), range_(first, end) {
  std::unique_lock l(m_.lock_mu_);
  m_.lock_cv_.wait(l, [&] {
    return std::none_of(m_.locked_.begin(), m_.locked_.end(),
                        [&](auto r) { return r.first < end && first < r.second; });
  });
  m_.locked_.push_back(range_);
}

MirrorDevice::RangeLock::~RangeLock() {
  {
    std::lock_guard l(m_.lock_mu_);
    auto it = std::find(m_.locked_.begin(), m_.locked_.end(), range_);
    IMG_CHECK(it != m_.locked_.end());
    m_.locked_.erase(it);
  }
  m_.lock_cv_.notify_all();
}

MirrorDevice::~MirrorDevice() { deactivate(); }

Result<void> MirrorDevice::activate(std::unique_ptr<NbdTarget> target) {
  if (active()) return Error::invalid("the disk is mirrored already");
  if (target->size() < size())
    return Error::invalid(target->uri() + " has " + std::to_string(target->size()) +
                          " bytes, the disk has " + std::to_string(size()));
  // The copier leaves one connection to the machine's mirrored writes. It must: a worker
  // keeps its connection while it waits for a region a mirrored write has locked, and
  // that write needs a connection to finish.
  if (target->connections() < 2)
    return Error::invalid(target->uri() + ": active mirroring needs at least 2 connections");
  copy_workers_ = target->connections() - 1;
  auto remote = std::make_unique<RemoteDevice>(std::move(target), size());
  {
    std::unique_lock mode(mode_mu_);  // the requests in flight finish unmirrored first
    target_ = std::move(remote);
    active_.store(true, std::memory_order_release);
  }
  {
    std::lock_guard l(copier_mu_);
    stop_ = false;
    copier_idle_ = false;
  }
  copier_thread_ = std::thread([this] { copier(); });
  LOG_INFO("active mirroring on: every write goes to the target before it is acknowledged");
  return ok();
}

void MirrorDevice::deactivate() {
  if (!active()) return;
  {
    std::lock_guard l(copier_mu_);
    stop_ = true;
  }
  copier_cv_.notify_all();
  if (copier_thread_.joinable()) copier_thread_.join();
  std::unique_lock mode(mode_mu_);
  active_.store(false, std::memory_order_release);
  target_.reset();
  // What the target acknowledged since its last successful flush may be lost with it
  // (after a drain there is nothing): changed again, for whatever copies next.
  t_.restore_unflushed();
  LOG_INFO("active mirroring off");
}

MirrorDevice::Stats MirrorDevice::stats() const {
  return Stats{mirrored_bytes_.load(), copied_bytes_.load(), mirror_failures_.load(),
               copy_failures_.load()};
}

template <typename Local, typename Remote>
Result<void> MirrorDevice::mirrored(uint64_t offset, uint64_t length, Local local, Remote remote) {
  std::shared_lock mode(mode_mu_);
  if (!active() || length == 0) return local();
  const uint64_t rs = t_.header().region_size;
  const uint64_t first = offset / rs, end = (offset + length - 1) / rs + 1;
  RangeLock lock(*this, first, end);
  // The regions the target has as they were: on the stack for a usual write (up to 64
  // regions, 256 KiB at 4 KiB), so a mirrored write allocates nothing.
  std::array<uint64_t, 64> few;
  std::vector<uint64_t> many;
  size_t n = 0;
  for (uint64_t r = first; r < end; ++r) {
    if (t_.dirty(r)) continue;
    if (n < few.size()) few[n++] = r;
    else many.push_back(r);
  }
  TRY(local());  // (the tracking layer names the regions, whatever happened)
  if (auto r = remote(); r) {
    t_.clear_unflushed(std::span(few).first(n));
    t_.clear_unflushed(many);
    mirrored_bytes_ += length;
  } else if (mirror_failures_.fetch_add(1) == 0) {
    LOG_WARN("mirroring a write to the target failed ({}); the copier copies it later",
             r.error().message);
  }
  return ok();
}

Result<void> MirrorDevice::write(uint64_t offset, std::span<const std::byte> data, Durability d) {
  return mirrored(
      offset, data.size(), [&] { return inner_.write(offset, data, d); },
      [&] { return target_->write(offset, data, Durability::Buffered); });
}

Result<void> MirrorDevice::write_nowait(uint64_t offset, std::span<const std::byte> data,
                                        Durability d) {
  // Mirroring waits on the network: never on the fast path.
  std::shared_lock mode(mode_mu_, std::try_to_lock);
  if (!mode.owns_lock() || active()) return Error::would_block();
  return inner_.write_nowait(offset, data, d);
}

Result<void> MirrorDevice::trim(uint64_t offset, uint64_t length, Durability d) {
  return mirrored(
      offset, length, [&] { return inner_.trim(offset, length, d); },
      // A trim leaves the bytes undefined: zeros on the target are one right answer, and
      // the only one a later compare with a source that reads zeros accepts.
      [&] { return target_->write_zeroes(offset, length, ZeroFlags{}, Durability::Buffered); });
}

Result<void> MirrorDevice::write_zeroes(uint64_t offset, uint64_t length, ZeroFlags z,
                                        Durability d) {
  return mirrored(
      offset, length, [&] { return inner_.write_zeroes(offset, length, z, d); },
      [&] { return target_->write_zeroes(offset, length, ZeroFlags{}, Durability::Buffered); });
}

Result<void> MirrorDevice::flush() {
  std::shared_lock mode(mode_mu_);
  TRY(inner_.flush());
  if (active()) {
    // The machine asked for durability: what was mirrored is made durable there too.
    if (auto r = flush_target(); !r) mirror_failures_.fetch_add(1);
  }
  return ok();
}

Result<void> MirrorDevice::flush_target() {
  std::lock_guard l(flush_mu_);
  const unsigned generation = t_.seal();  // cleared before this: covered by the flush
  auto r = target_->flush();
  if (r) t_.confirm_flushed(generation);
  else t_.restore_unflushed();  // the target failed: it may have lost any of them
  return r;
}

bool MirrorDevice::copy_runs(const std::vector<std::pair<uint64_t, uint64_t>>& runs,
                             std::atomic<size_t>& next, const std::atomic<bool>& failed) {
  const uint64_t rs = t_.header().region_size;
  RemoteDevice::Lease lease(*target_);
  NbdTarget::Pipeline pipe(lease.target(), lease.conn());
  // The runs sent and not yet acknowledged, oldest first, each still locked: a mirrored
  // write of its regions waits until the target has the copy.
  struct Sent {
    Sent(MirrorDevice& m, uint64_t first, uint64_t end) : lock(m, first, end) {}
    RangeLock lock;
    std::vector<uint64_t> regions;
    uint64_t bytes = 0;
  };
  std::deque<Sent> sent;
  uint64_t acked = 0;  // writes acknowledged and retired: sent.front() is the next
  // Cleared once the target has the copy (no write can set them meanwhile: they wait for
  // the lock), and named in the file until the target flushed it.
  const auto retire = [&] {
    for (; acked < pipe.completed(); ++acked) {
      t_.clear_unflushed(sent.front().regions);
      copied_bytes_ += sent.front().bytes;
      sent.pop_front();
    }
  };
  Result<void> r = ok();
  for (size_t i; r && !failed.load() && (i = next.fetch_add(1)) < runs.size();) {
    auto& s = sent.emplace_back(*this, runs[i].first, runs[i].second);
    for (uint64_t g = runs[i].first; g < runs[i].second; ++g)
      if (t_.dirty(g)) s.regions.push_back(g);
    if (s.regions.empty()) {  // copied meanwhile: nothing to send, nothing to order
      sent.pop_back();
      continue;
    }
    const uint64_t a = s.regions.front() * rs, b = std::min(size(), (s.regions.back() + 1) * rs);
    s.bytes = b - a;
    r = [&]() -> Result<void> {
      auto buf = TRY(pipe.buffer(b - a));  // (may wait for, and retire, older ones)
      TRY(inner_.read(a, buf));
      return pipe.write(a);
    }();
    if (r) r = pipe.reap();  // a machine's write may wait for a region acknowledged since
    if (r) retire();
  }
  // Every write answered before any lock goes, on failure too: a copy still in flight
  // must not land after a mirrored write that its released lock let through.
  if (auto f = pipe.finish(); r) r = std::move(f);
  retire();
  if (r) {
    IMG_CHECK(sent.empty());
    return true;
  }
  // What was not acknowledged is still named changed (its bits were never cleared).
  if (copy_failures_.fetch_add(1) == 0)
    LOG_WARN("copying changed regions to the target failed ({}); retrying", r.error().message);
  return false;
}

namespace {

// Sorted regions -> runs [first, end) of consecutive ones, of at most run_max regions.
std::vector<std::pair<uint64_t, uint64_t>> runs_of(const std::vector<uint64_t>& regions,
                                                   uint64_t run_max) {
  std::vector<std::pair<uint64_t, uint64_t>> runs;
  for (size_t i = 0; i < regions.size();) {
    size_t j = i + 1;
    while (j < regions.size() && regions[j] == regions[j - 1] + 1 &&
           regions[j] - regions[i] < run_max)
      ++j;
    runs.emplace_back(regions[i], regions[j - 1] + 1);
    i = j;
  }
  return runs;
}

}  // namespace

// Several runs at once, each under its own range lock (the runs are disjoint): one at a
// time, scattered 4 KiB regions waited a round trip each, 20 MB/s behind a 1 Gbit/s link
// in bench/migrate.sh.
bool MirrorDevice::copy_in_parallel(const std::vector<std::pair<uint64_t, uint64_t>>& runs) {
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  auto work = [&] {
    if (!copy_runs(runs, next, failed)) failed = true;
  };
  {
    std::vector<std::jthread> helpers;
    for (size_t k = 1; k < copy_workers_ && k < runs.size(); ++k) helpers.emplace_back(work);
    work();
  }  // the helpers join here
  return !failed;
}

void MirrorDevice::copier() {
  std::shared_lock mode(mode_mu_);  // target_ stays while the copier runs
  const uint64_t rs = t_.header().region_size;
  const uint64_t run_max = std::max<uint64_t>(1, kCopyRunBytes / rs);
  uint64_t cursor = 0;
  bool unflushed = false;
  uint64_t flushed_mirrored = 0;
  auto last_flush = std::chrono::steady_clock::now();
  // Busy or idle, the target is flushed every kTargetFlushEvery when anything reached it:
  // a target's page cache left to fill makes the flush at the cutover long.
  const auto flush_now_and_then = [&] {
    const uint64_t mirrored = mirrored_bytes_.load();
    if ((unflushed || mirrored != flushed_mirrored) &&
        std::chrono::steady_clock::now() - last_flush > kTargetFlushEvery) {
      if (flush_target()) unflushed = false;
      flushed_mirrored = mirrored;
      last_flush = std::chrono::steady_clock::now();
    }
  };
  for (;;) {
    {
      std::lock_guard l(copier_mu_);
      if (stop_) return;
    }
    const std::vector<uint64_t> regions = t_.dirty_regions(cursor, kScanRegions);
    if (regions.empty()) {
      if (cursor != 0) {
        cursor = 0;  // a pass from the start finds what was marked behind us
        continue;
      }
      // Nothing changed anywhere: tell drain(), which flushes the target itself. The
      // tracking file is not flushed here: an
      // fsync can take long on a busy disk, and deactivate() at the cutover waits for this
      // thread. The cleared bits reach it at its next flush (AL eviction, a clean stop);
      // until then it names more than changed, never less.
      {
        std::lock_guard l(copier_mu_);
        copier_idle_ = true;
      }
      copier_cv_.notify_all();
      flush_now_and_then();
      std::unique_lock l(copier_mu_);
      copier_cv_.wait_for(l, kIdlePoll, [&] { return stop_; });
      continue;
    }
    {
      std::lock_guard l(copier_mu_);
      copier_idle_ = false;
    }
    const bool failed = !copy_in_parallel(runs_of(regions, run_max));
    unflushed = true;
    flush_now_and_then();
    cursor = regions.back() + 1;
    if (failed) {
      std::unique_lock l(copier_mu_);
      copier_cv_.wait_for(l, kFailureBackoff, [&] { return stop_; });
    }
  }
}

Result<void> MirrorDevice::drain(std::chrono::milliseconds limit) {
  if (!active()) return Error::invalid("the disk is not mirrored (no `active` command)");
  const auto deadline = std::chrono::steady_clock::now() + limit;
  std::unique_lock l(copier_mu_);
  while (!(copier_idle_ && t_.dirty_count() == 0)) {
    if (copier_cv_.wait_until(l, deadline) == std::cv_status::timeout &&
        !(copier_idle_ && t_.dirty_count() == 0))
      return Error{ETIMEDOUT, "the copier did not finish within " +
                                  std::to_string(limit.count()) + " ms"};
  }
  l.unlock();
  const auto copied = std::chrono::steady_clock::now();
  std::shared_lock mode(mode_mu_);
  if (!active()) return Error::io("mirroring stopped while draining");
  TRY(flush_target());
  LOG_INFO("drained: copier done after {:.1f} ms, target flushed after {:.1f} ms",
           std::chrono::duration<double, std::milli>(copied - (deadline - limit)).count(),
           std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() -
                                                     (deadline - limit))
               .count());
  return ok();
}

}  // namespace imgstream::migrate
