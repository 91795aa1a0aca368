#include "source/source.h"

#include <condition_variable>
#include <mutex>

namespace imgstream::source {

Result<void> Source::read(uint64_t offset, std::span<std::byte> buf) {
  const Piece one{offset, buf};
  return read_all(std::span(&one, 1));
}

Result<void> Source::read_all(std::span<const Piece> pieces) {
  std::mutex mu;
  std::condition_variable cv;
  size_t left = pieces.size();
  Result<void> result = ok();
  for (const Piece& p : pieces)
    read_async(p.offset, p.buf, [&](Result<void> r) {
      std::lock_guard lock(mu);
      if (!r && result) result = std::move(r);
      if (--left == 0) cv.notify_one();
    });
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return left == 0; });
  return result;
}

Result<void> Source::block_status(uint64_t, uint64_t length, std::vector<Extent>& out) {
  out.push_back(Extent{length, 0});
  return ok();
}

}  // namespace imgstream::source
