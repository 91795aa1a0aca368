#include "patch/overlay_device.h"

#include <algorithm>
#include <cstring>

#include "base/check.h"

namespace imgstream::patch {

DeviceCaps OverlayDevice::caps() const {
  DeviceCaps c = below_.caps();
  c.writable = true;
  c.can_flush = true;
  c.can_fua = false;
  c.can_trim = false;
  c.can_zero = false;
  c.can_fast_zero = false;
  c.can_multi_conn = false;
  return c;
}

uint64_t OverlayDevice::page_len(uint64_t page) const {
  return std::min(kOverlayPageBytes, size() - page * kOverlayPageBytes);
}

Result<void> OverlayDevice::read(uint64_t offset, std::span<std::byte> buf) {
  IMG_CHECK(offset <= size() && buf.size() <= size() - offset);
  std::lock_guard lock(mu_);
  uint64_t at = offset;
  std::span<std::byte> rest = buf;
  while (!rest.empty()) {
    const uint64_t page = at / kOverlayPageBytes, in_page = at % kOverlayPageBytes;
    auto it = pages_.find(page);
    if (it != pages_.end()) {
      const size_t n = std::min<uint64_t>(rest.size(), it->second.size() - in_page);
      std::memcpy(rest.data(), it->second.data() + in_page, n);
      at += n;
      rest = rest.subspan(n);
      continue;
    }
    // A run of clean pages: one read from below, up to the next dirty page.
    auto next = pages_.lower_bound(page);
    uint64_t end = at + rest.size();
    if (next != pages_.end()) end = std::min(end, next->first * kOverlayPageBytes);
    const size_t n = end - at;
    TRY(below_.read(at, rest.first(n)));
    at += n;
    rest = rest.subspan(n);
  }
  return ok();
}

Result<void> OverlayDevice::write(uint64_t offset, std::span<const std::byte> data, Durability) {
  IMG_CHECK(offset <= size() && data.size() <= size() - offset);
  std::lock_guard lock(mu_);
  uint64_t at = offset;
  std::span<const std::byte> rest = data;
  while (!rest.empty()) {
    const uint64_t page = at / kOverlayPageBytes, in_page = at % kOverlayPageBytes;
    auto it = pages_.find(page);
    if (it == pages_.end()) {
      if ((pages_.size() + 1) * kOverlayPageBytes > kOverlayBytesMax)
        return Error{EFBIG, "the patch changes more than " +
                                std::to_string(kOverlayBytesMax >> 20) + " MiB of the image"};
      std::vector<std::byte> bytes(page_len(page));
      const bool whole = in_page == 0 && rest.size() >= bytes.size();
      if (!whole) TRY(below_.read(page * kOverlayPageBytes, bytes));
      it = pages_.emplace(page, std::move(bytes)).first;
    }
    const size_t n = std::min<uint64_t>(rest.size(), it->second.size() - in_page);
    std::memcpy(it->second.data() + in_page, rest.data(), n);
    at += n;
    rest = rest.subspan(n);
  }
  return ok();
}

std::vector<OverlayDevice::Run> OverlayDevice::dirty_runs() const {
  std::lock_guard lock(mu_);
  std::vector<Run> runs;
  uint64_t next_page = UINT64_MAX;
  for (const auto& [page, bytes] : pages_) {
    if (runs.empty() || page != next_page) runs.push_back(Run{page * kOverlayPageBytes, {}});
    runs.back().bytes.insert(runs.back().bytes.end(), bytes.begin(), bytes.end());
    next_page = page + 1;
  }
  return runs;
}

uint64_t OverlayDevice::dirty_bytes() const {
  std::lock_guard lock(mu_);
  uint64_t n = 0;
  for (const auto& [page, bytes] : pages_) n += bytes.size();
  return n;
}

Result<uint64_t> OverlayDevice::drop_unchanged() {
  std::lock_guard lock(mu_);
  uint64_t dropped = 0;
  std::vector<std::byte> old(kOverlayPageBytes);
  for (auto it = pages_.begin(); it != pages_.end();) {
    auto below = std::span(old).first(it->second.size());
    TRY(below_.read(it->first * kOverlayPageBytes, below));
    if (std::equal(below.begin(), below.end(), it->second.begin())) {
      dropped += below.size();
      it = pages_.erase(it);
    } else {
      ++it;
    }
  }
  return dropped;
}

}  // namespace imgstream::patch
