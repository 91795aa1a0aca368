#include "source/source.h"

#include <condition_variable>
#include <mutex>

namespace imgstream::source {

Result<void> Source::read(uint64_t offset, std::span<std::byte> buf) {
  std::mutex mu;
  std::condition_variable cv;
  bool finished = false;
  Result<void> result;
  read_async(offset, buf, [&](Result<void> r) {
    std::lock_guard lock(mu);
    result = std::move(r);
    finished = true;
    cv.notify_one();
  });
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return finished; });
  return result;
}

Result<void> Source::block_status(uint64_t, uint64_t length, std::vector<Extent>& out) {
  out.push_back(Extent{length, 0});
  return ok();
}

}  // namespace imgstream::source
