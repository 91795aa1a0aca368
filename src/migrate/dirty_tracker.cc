#include "migrate/dirty_tracker.h"

#include <algorithm>
#include <bit>

#include "base/check.h"
#include "base/log.h"

namespace imgstream::migrate {

Result<std::unique_ptr<DirtyTracker>> DirtyTracker::open(Env& env, const std::string& path,
                                                         uint64_t image_size,
                                                         const TrackOptions& o) {
  std::unique_ptr<DirtyTracker> t(new DirtyTracker(env, path));
  t->lock_ = TRY_CTX(env.lock(path + ".lock"), "tracking file " + path + " is in use");
  if (TRY(env.exists(path))) {
    TRY_CTX(t->load(), "tracking file " + path);
    if (t->h_.image_size != image_size)
      return Error{EEXIST, "tracking file " + path + " is for an image of " +
                               std::to_string(t->h_.image_size) + " bytes, not " +
                               std::to_string(image_size)};
  } else {
    TRY_CTX(t->create(image_size, o), "tracking file " + path);
  }
  return t;
}

DirtyTracker::~DirtyTracker() = default;

Result<TrackSnapshot> DirtyTracker::read_snapshot(Env& env, const std::string& path) {
  TrackSnapshot snap;
  // In use when its lock is held. (Taken and let go at once when free; a lock file that
  // does not exist means no server ever ran on it, and is not made.)
  const std::string lock_path = path + ".lock";
  if (TRY(env.exists(lock_path))) {
    auto lock = env.lock(lock_path);
    snap.in_use = !lock && (lock.error().code == EWOULDBLOCK || lock.error().code == EAGAIN);
  }
  auto f = TRY(env.open(path, OpenMode::ReadOnly));
  std::vector<std::byte> head(kTrackHeaderBytes);
  TRY(read_exact_at(*f, 0, head));
  const TrackHeader h = TRY(decode_track_header(head));
  if (TRY(f->size()) < h.file_bytes()) return Error::invalid("tracking file is truncated");
  snap.header = h;
  snap.dirty.resize(h.bitmap_bytes());
  TRY(read_exact_at(*f, h.bitmap_offset(), std::as_writable_bytes(std::span(snap.dirty))));
  AlTransaction newest;
  std::vector<std::byte> slot(kAlSlotBytes);
  for (uint32_t i = 0; i < kAlSlots; ++i) {
    TRY(read_exact_at(*f, h.al_offset() + uint64_t(i) * kAlSlotBytes, slot));
    auto t = decode_al(h, slot);
    if (t && t->seq > newest.seq) newest = std::move(*t);
  }
  if (newest.seq == 0) return Error::invalid("no valid activity-log slot");
  snap.al_extents = newest.extents.size();
  for (uint64_t e : newest.extents) {
    const uint64_t first = e * h.extent_regions;
    const uint64_t end = std::min(h.regions(), first + h.extent_regions);
    for (uint64_t r = first; r < end; ++r) snap.dirty[r / 8] |= uint8_t(1u << (r % 8));
  }
  // Bits past the last region mean nothing (the file's padding).
  if (h.regions() % 8) snap.dirty.back() &= uint8_t((1u << (h.regions() % 8)) - 1);
  return snap;
}

uint64_t TrackSnapshot::dirty_count() const {
  uint64_t n = 0;
  for (uint8_t b : dirty) n += static_cast<uint64_t>(std::popcount(b));
  return n;
}

std::vector<std::pair<uint64_t, uint64_t>> TrackSnapshot::dirty_runs() const {
  std::vector<std::pair<uint64_t, uint64_t>> runs;
  for (uint64_t r = 0; r < header.regions(); ++r) {
    if (r % 8 == 0 && dirty[r / 8] == 0) {  // a clean byte at once
      r += 7;
      continue;
    }
    if (!(dirty[r / 8] >> (r % 8) & 1)) continue;
    if (!runs.empty() && runs.back().first + runs.back().second == r)
      ++runs.back().second;
    else
      runs.emplace_back(r, 1);
  }
  return runs;
}

void DirtyTracker::alloc_side_bitmaps() {
  for (auto* side : {&pending_, &unflushed_[0], &unflushed_[1]}) {
    *side = std::make_unique<std::atomic<uint64_t>[]>(words_);
    for (size_t i = 0; i < words_; ++i) (*side)[i].store(0, std::memory_order_relaxed);
  }
}

Result<void> DirtyTracker::create(uint64_t image_size, const TrackOptions& o) {
  h_.image_size = image_size;
  h_.region_size = o.region_size;
  h_.extent_regions = std::max<uint32_t>(1, o.extent_bytes / std::max<uint32_t>(1, o.region_size));
  h_.al_extents = o.al_extents;
  TRY(validate(h_));
  words_ = (h_.regions() + 63) / 64;
  bits_ = std::make_unique<std::atomic<uint64_t>[]>(words_);
  for (size_t i = 0; i < words_; ++i) bits_[i].store(0, std::memory_order_relaxed);
  alloc_side_bitmaps();
  // Made under a temporary name and renamed: a half-made file is never taken for one.
  const std::string tmp = path_ + ".tmp";
  auto f = TRY(env_.open(tmp, OpenMode::CreateOrOpen));
  TRY(f->truncate(0));
  TRY(f->truncate(h_.file_bytes()));
  TRY(write_all_at(*f, 0, encode_track_header(h_)));
  seq_ = 1;
  TRY(write_all_at(*f, h_.al_offset(), encode_al(h_, AlTransaction{seq_, {}})));
  TRY(f->sync());
  f.reset();
  TRY(env_.rename(tmp, path_));
  TRY(env_.sync_dir(parent_dir(path_)));
  file_ = TRY(env_.open(path_, OpenMode::ReadWrite));
  return ok();
}

Result<void> DirtyTracker::load() {
  file_ = TRY(env_.open(path_, OpenMode::ReadWrite));
  std::vector<std::byte> head(kTrackHeaderBytes);
  TRY(read_exact_at(*file_, 0, head));
  h_ = TRY(decode_track_header(head));
  if (TRY(file_->size()) < h_.file_bytes()) return Error::invalid("tracking file is truncated");
  words_ = (h_.regions() + 63) / 64;
  bits_ = std::make_unique<std::atomic<uint64_t>[]>(words_);
  alloc_side_bitmaps();
  std::vector<std::byte> bitmap(h_.bitmap_bytes());
  TRY(read_exact_at(*file_, h_.bitmap_offset(), bitmap));
  for (size_t w = 0; w < words_; ++w) {
    uint64_t v = 0;
    for (size_t b = 0; b < 8 && w * 8 + b < bitmap.size(); ++b)
      v |= uint64_t(std::to_integer<uint8_t>(bitmap[w * 8 + b])) << (8 * b);
    bits_[w].store(v, std::memory_order_relaxed);
  }
  // The newest valid AL transaction: its extents may hold changes the bitmap lacks.
  AlTransaction newest;
  std::vector<std::byte> slot(kAlSlotBytes);
  for (uint32_t i = 0; i < kAlSlots; ++i) {
    TRY(read_exact_at(*file_, h_.al_offset() + uint64_t(i) * kAlSlotBytes, slot));
    auto t = decode_al(h_, slot);
    if (t && t->seq > newest.seq) newest = std::move(*t);
  }
  if (newest.seq == 0) return Error::invalid("no valid activity-log slot");
  seq_ = newest.seq;
  uint64_t added = 0;
  for (uint64_t e : newest.extents) {
    const uint64_t first = e * h_.extent_regions;
    const uint64_t end = std::min(h_.regions(), first + h_.extent_regions);
    for (uint64_t r = first; r < end; ++r) {
      const uint64_t bit = 1ULL << (r % 64);
      added += !(bits_[r / 64].fetch_or(bit) & bit);
    }
  }
  if (!newest.extents.empty())
    LOG_INFO("tracking file {}: {} extents were active at the last stop; {} more regions count as changed",
             path_, newest.extents.size(), added);
  // Make the recovered set durable, then start with an empty AL.
  TRY(write_bitmap_range(0, h_.regions()));
  TRY(file_->sync());
  std::lock_guard lock(al_mu_);
  return write_al_locked();
}

std::pair<uint64_t, uint64_t> DirtyTracker::extent_span(uint64_t offset, uint64_t length) const {
  IMG_CHECK(length > 0 && offset + length <= h_.image_size);
  const uint64_t eb = uint64_t(h_.extent_regions) * h_.region_size;
  return {offset / eb, (offset + length - 1) / eb};
}

bool DirtyTracker::try_begin_write(uint64_t offset, uint64_t length) {
  auto [first, last] = extent_span(offset, length);
  std::lock_guard lock(al_mu_);
  for (uint64_t e = first; e <= last; ++e)
    if (!al_.contains(e)) return false;
  for (uint64_t e = first; e <= last; ++e) {
    Active& a = al_[e];
    ++a.writers;
    lru_.splice(lru_.begin(), lru_, a.lru);
  }
  return true;
}

Result<void> DirtyTracker::begin_write(uint64_t offset, uint64_t length) {
  if (try_begin_write(offset, length)) return ok();
  auto [first, last] = extent_span(offset, length);
  if (last - first + 1 > h_.al_extents)
    return Error::invalid("a write spans more extents than the activity log holds");
  std::lock_guard lock(al_mu_);
  // Add the missing extents; make room by evicting idle ones (their bits to the bitmap
  // first, durably).
  std::vector<uint64_t> evict;
  size_t needed = 0;
  for (uint64_t e = first; e <= last; ++e) needed += !al_.contains(e);
  for (auto it = lru_.rbegin(); al_.size() - evict.size() + needed > h_.al_extents && it != lru_.rend(); ++it)
    if (al_[*it].writers == 0 && (*it < first || *it > last)) evict.push_back(*it);
  if (al_.size() - evict.size() + needed > h_.al_extents)
    return Error{EBUSY, "activity log full of extents with writes in flight"};
  if (!evict.empty()) {
    for (uint64_t e : evict) {
      const uint64_t r0 = e * h_.extent_regions;
      TRY(write_bitmap_range(r0, std::min(h_.regions(), r0 + h_.extent_regions)));
    }
    TRY(file_->sync());
    for (uint64_t e : evict) {
      lru_.erase(al_[e].lru);
      al_.erase(e);
    }
  }
  for (uint64_t e = first; e <= last; ++e) {
    auto [it, fresh] = al_.try_emplace(e);
    if (fresh) {
      lru_.push_front(e);
      it->second.lru = lru_.begin();
    } else {
      lru_.splice(lru_.begin(), lru_, it->second.lru);
    }
    ++it->second.writers;
  }
  auto r = write_al_locked();
  if (!r) {  // the write must not go ahead: undo our claim on the extents
    for (uint64_t e = first; e <= last; ++e) --al_[e].writers;
    return r;
  }
  return ok();
}

void DirtyTracker::end_write(uint64_t offset, uint64_t length, bool changed) {
  if (changed) {
    const uint64_t first = offset / h_.region_size, last = (offset + length - 1) / h_.region_size;
    for (uint64_t r = first; r <= last; ++r)
      bits_[r / 64].fetch_or(1ULL << (r % 64), std::memory_order_acq_rel);
  }
  auto [fe, le] = extent_span(offset, length);
  std::lock_guard lock(al_mu_);
  for (uint64_t e = fe; e <= le; ++e) {
    auto it = al_.find(e);
    IMG_CHECK(it != al_.end() && it->second.writers > 0);
    --it->second.writers;
  }
}

Result<void> DirtyTracker::write_al_locked() {
  AlTransaction t;
  t.seq = seq_ + 1;
  t.extents.assign(lru_.begin(), lru_.end());
  const uint64_t slot = t.seq % kAlSlots;
  TRY(write_all_at(*file_, h_.al_offset() + slot * kAlSlotBytes, encode_al(h_, t)));
  TRY(file_->sync());
  seq_ = t.seq;
  return ok();
}

// Bitmap bytes covering regions [first, end), whole bytes (a byte never mixes regions of
// an evicted extent with bits that are not current: every bit written is the live one).
Result<void> DirtyTracker::write_bitmap_range(uint64_t first, uint64_t end) {
  std::lock_guard lock(bitmap_io_mu_);
  const uint64_t b0 = first / 8, b1 = (end + 7) / 8;
  std::vector<std::byte> bytes(b1 - b0);
  // Pending and unflushed regions are still changed as far as the file is concerned.
  const auto word = [&](uint64_t w) {
    return bits_[w].load(std::memory_order_acquire) | pending_[w].load(std::memory_order_acquire) |
           unflushed_[0][w].load(std::memory_order_acquire) |
           unflushed_[1][w].load(std::memory_order_acquire);
  };
  for (uint64_t i = b0; i < b1; ++i) bytes[i - b0] = std::byte(word(i / 8) >> (8 * (i % 8)));
  return write_all_at(*file_, h_.bitmap_offset() + b0, bytes);
}

uint64_t DirtyTracker::dirty_count() const { return count({bits_.get()}); }

std::vector<uint64_t> DirtyTracker::dirty_regions(uint64_t from, size_t max) const {
  std::vector<uint64_t> out;
  for (uint64_t w = from / 64; w < words_ && out.size() < max; ++w) {
    uint64_t v = bits_[w].load(std::memory_order_acquire);
    if (w == from / 64) v &= ~0ULL << (from % 64);
    while (v && out.size() < max) {
      out.push_back(w * 64 + static_cast<uint64_t>(std::countr_zero(v)));
      v &= v - 1;
    }
  }
  return out;
}

void DirtyTracker::clear(std::span<const uint64_t> regions) {
  for (uint64_t r : regions) {
    IMG_CHECK(r < h_.regions());
    bits_[r / 64].fetch_and(~(1ULL << (r % 64)), std::memory_order_acq_rel);
  }
}

std::vector<uint64_t> DirtyTracker::take(uint64_t from, size_t max, uint64_t end) {
  std::vector<uint64_t> out;
  end = std::min(end, h_.regions());
  for (uint64_t w = from / 64; w < words_ && w * 64 < end && out.size() < max; ++w) {
    uint64_t want = bits_[w].load(std::memory_order_acquire);
    if (w == from / 64) want &= ~0ULL << (from % 64);
    if ((w + 1) * 64 > end) want &= (1ULL << (end - w * 64)) - 1;  // end is inside w
    // Keep at most the number still wanted, lowest first.
    for (uint64_t v = want, n = 0; v; v &= v - 1)
      if (++n > max - out.size()) {
        want &= (v & (~v + 1)) - 1;
        break;
      }
    if (!want) continue;
    // Pending first, then cleared: a flush in between writes the bit either way.
    pending_[w].fetch_or(want, std::memory_order_acq_rel);
    const uint64_t got = bits_[w].fetch_and(~want, std::memory_order_acq_rel) & want;
    for (uint64_t v = got; v; v &= v - 1)
      out.push_back(w * 64 + static_cast<uint64_t>(std::countr_zero(v)));
  }
  return out;
}

void DirtyTracker::mark(const std::vector<uint64_t>& regions) {
  for (uint64_t r : regions) {
    IMG_CHECK(r < h_.regions());
    bits_[r / 64].fetch_or(1ULL << (r % 64), std::memory_order_acq_rel);
  }
}

void DirtyTracker::confirm() {
  for (size_t w = 0; w < words_; ++w) pending_[w].store(0, std::memory_order_release);
}

void DirtyTracker::make_dirty_again(std::atomic<uint64_t>* side) {
  for (size_t w = 0; w < words_; ++w)
    if (uint64_t p = side[w].exchange(0, std::memory_order_acq_rel))
      bits_[w].fetch_or(p, std::memory_order_acq_rel);
}

uint64_t DirtyTracker::count(std::initializer_list<const std::atomic<uint64_t>*> sides) const {
  uint64_t n = 0;
  for (size_t w = 0; w < words_; ++w) {
    uint64_t v = 0;
    for (const auto* side : sides) v |= side[w].load(std::memory_order_relaxed);
    n += static_cast<uint64_t>(std::popcount(v));
  }
  return n;
}

void DirtyTracker::release() { make_dirty_again(pending_.get()); }

uint64_t DirtyTracker::pending_count() const { return count({pending_.get()}); }

void DirtyTracker::clear_unflushed(std::span<const uint64_t> regions) {
  auto& gen = unflushed_[gen_.load(std::memory_order_acquire)];
  for (uint64_t r : regions) {
    IMG_CHECK(r < h_.regions());
    // Named in the generation first: a flush of the file between the two never misses it.
    gen[r / 64].fetch_or(1ULL << (r % 64), std::memory_order_acq_rel);
    bits_[r / 64].fetch_and(~(1ULL << (r % 64)), std::memory_order_acq_rel);
  }
}

unsigned DirtyTracker::seal() { return gen_.fetch_xor(1, std::memory_order_acq_rel); }

void DirtyTracker::confirm_flushed(unsigned generation) {
  IMG_CHECK(generation < 2);
  for (size_t w = 0; w < words_; ++w) unflushed_[generation][w].store(0, std::memory_order_release);
}

void DirtyTracker::restore_unflushed() {
  for (auto& gen : unflushed_) make_dirty_again(gen.get());
}

uint64_t DirtyTracker::unflushed_count() const {
  return count({unflushed_[0].get(), unflushed_[1].get()});
}

Result<void> DirtyTracker::flush() {
  TRY(write_bitmap_range(0, h_.regions()));
  return file_->sync();
}

Result<void> DirtyTracker::close() {
  std::lock_guard lock(al_mu_);
  for (auto& [e, a] : al_)
    if (a.writers) return Error{EBUSY, "writes still in flight"};
  TRY(write_bitmap_range(0, h_.regions()));
  TRY(file_->sync());
  al_.clear();
  lru_.clear();
  return write_al_locked();
}

}  // namespace imgstream::migrate
