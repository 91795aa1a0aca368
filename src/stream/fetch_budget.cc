#include "stream/fetch_budget.h"

#include <algorithm>

#include "base/check.h"

namespace imgstream::stream {

namespace {
size_t index(FetchPriority p) { return p == FetchPriority::Demand ? 0 : 1; }
}  // namespace

FetchBudget::Grant& FetchBudget::Grant::operator=(Grant&& o) noexcept {
  if (this != &o) {
    reset();
    budget_ = o.budget_;
    bytes_ = o.bytes_;
    o.bytes_ = 0;
  }
  return *this;
}

FetchBudget::Grant FetchBudget::Grant::take(uint64_t n) {
  IMG_CHECK(n <= bytes_);
  bytes_ -= n;
  return Grant(budget_, n);
}

void FetchBudget::Grant::reset() {
  if (bytes_ == 0) return;
  budget_->give_back(bytes_);
  bytes_ = 0;
}

FetchBudget::FetchBudget(uint64_t total_bytes, uint64_t demand_reserve_bytes)
    : total_(total_bytes), reserve_(demand_reserve_bytes) {
  IMG_CHECK(total_bytes > demand_reserve_bytes);
}

FetchBudget::~FetchBudget() {
  std::lock_guard lock(mu_);
  IMG_CHECK_MSG(used_ == 0, "a fetch buffer outlives its device");
}

bool FetchBudget::fits_locked(uint64_t bytes, FetchPriority p) const {
  if (p == FetchPriority::Demand) return used_ + bytes <= total_;
  const bool demand_waits = head_[0] != next_[0];
  return !demand_waits && used_ + bytes <= total_ - reserve_;
}

FetchBudget::Grant FetchBudget::acquire(uint64_t bytes, FetchPriority p) {
  IMG_CHECK(bytes > 0 && bytes <= (p == FetchPriority::Demand ? total_ : total_ - reserve_));
  const size_t c = index(p);
  std::unique_lock lock(mu_);
  const uint64_t ticket = next_[c]++;
  cv_.wait(lock, [&] { return head_[c] == ticket && fits_locked(bytes, p); });
  ++head_[c];
  used_ += bytes;
  used_max_ = std::max(used_max_, used_);
  // The next in line (of either class: no demand waits now, maybe) may fit as well.
  cv_.notify_all();
  return Grant(this, bytes);
}

FetchBudget::Grant FetchBudget::try_acquire(uint64_t bytes, FetchPriority p) {
  IMG_CHECK(bytes > 0);
  std::lock_guard lock(mu_);
  if (head_[0] != next_[0] || head_[1] != next_[1] || !fits_locked(bytes, p)) return Grant();
  used_ += bytes;
  used_max_ = std::max(used_max_, used_);
  return Grant(this, bytes);
}

void FetchBudget::give_back(uint64_t bytes) {
  {
    std::lock_guard lock(mu_);
    IMG_CHECK(bytes <= used_);
    used_ -= bytes;
  }
  cv_.notify_all();
}

uint64_t FetchBudget::used() const {
  std::lock_guard lock(mu_);
  return used_;
}

uint64_t FetchBudget::used_max() const {
  std::lock_guard lock(mu_);
  return used_max_;
}

}  // namespace imgstream::stream
