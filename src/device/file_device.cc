#include "device/file_device.h"

#include <fcntl.h>

#include <algorithm>
#include <vector>

#include "base/check.h"
#include "base/image_lock.h"

namespace imgstream {

Result<std::unique_ptr<FileDevice>> FileDevice::open(Env& env, const std::string& path, Access a) {
  // QEMU's locks (base/image_lock.h): a writer shares the image with no other writer.
  return open(env, path, a, a == Access::ReadOnly ? ImageUse::Read : ImageUse::Write);
}

Result<std::unique_ptr<FileDevice>> FileDevice::open(Env& env, const std::string& path, Access a,
                                                     ImageUse use) {
  IMG_CHECK(a == Access::ReadWrite || use == ImageUse::Read || use == ImageUse::ReadStable ||
            use == ImageUse::Exclusive);
  auto file = TRY(env.open(path, a == Access::ReadOnly ? OpenMode::ReadOnly : OpenMode::ReadWrite));
  TRY(lock_image(*file, use));
  if (use != ImageUse::Exclusive && TRY(env.exists(path + kPatchJournalSuffix)))
    return Error{EBUSY, path + " has an unfinished patch (" + path + kPatchJournalSuffix +
                            "): run `imgstream patch --recover " + path + "` first"};
  uint64_t size = TRY(file->size());
  return std::unique_ptr<FileDevice>(new FileDevice(std::move(file), size, a));
}

DeviceCaps FileDevice::caps() const {
  DeviceCaps c;
  c.writable = access_ == Access::ReadWrite;
  c.can_flush = c.writable;
  c.can_fua = c.writable;
  c.can_trim = c.writable;
  c.can_zero = c.writable;
  c.can_fast_zero = c.writable;
  c.can_cache = true;
  // One file behind every connection: an fdatasync covers the writes of all of them.
  c.can_multi_conn = true;
  return c;
}

Result<void> FileDevice::read(uint64_t offset, std::span<std::byte> buf) {
  IMG_CHECK(offset + buf.size() <= size_);
  return read_exact_at(*file_, offset, buf);
}

Result<void> FileDevice::read_nowait(uint64_t offset, std::span<std::byte> buf) {
  IMG_CHECK(offset + buf.size() <= size_);
  TRY(file_->read_at_nowait(offset, buf));
  return ok();
}

Result<void> FileDevice::write(uint64_t offset, std::span<const std::byte> data, Durability d) {
  IMG_CHECK(access_ == Access::ReadWrite && offset + data.size() <= size_);
  TRY(write_all_at(*file_, offset, data));
  if (d == Durability::Fua) TRY(file_->sync());
  return ok();
}

Result<void> FileDevice::write_nowait(uint64_t offset, std::span<const std::byte> data,
                                      Durability d) {
  // A buffered write is a copy into the page cache; a FUA write waits for the disk.
  if (d == Durability::Fua) return Error::would_block();
  return write(offset, data, d);
}

Result<void> FileDevice::flush() { return file_->sync(); }

Result<void> FileDevice::trim(uint64_t offset, uint64_t length, Durability d) {
  IMG_CHECK(access_ == Access::ReadWrite && offset + length <= size_);
  auto r = file_->punch_hole(offset, length);
  // Trim is advisory: a file system that cannot punch simply keeps the data.
  if (!r && r.error().code != ENOTSUP) return r;
  if (d == Durability::Fua) TRY(file_->sync());
  return ok();
}

Result<void> zero_file_range(File& f, uint64_t offset, uint64_t length, bool may_punch,
                             bool fast_only) {
  Result<void> r = Error{ENOTSUP, ""};
  if (may_punch) r = f.punch_hole(offset, length);
  if (!r && r.error().code == ENOTSUP) r = f.zero_range(offset, length);
  if (r || r.error().code != ENOTSUP) return r;
  if (fast_only) return Error{ENOTSUP, "fast zero not supported on " + f.path()};
  static constexpr uint64_t kChunk = 1u << 20;
  std::vector<std::byte> zeros(std::min(kChunk, length));
  for (uint64_t done = 0; done < length;) {
    const uint64_t n = std::min<uint64_t>(zeros.size(), length - done);
    TRY(write_all_at(f, offset + done, std::span(zeros).first(n)));
    done += n;
  }
  return ok();
}

Result<void> FileDevice::write_zeroes(uint64_t offset, uint64_t length, ZeroFlags z,
                                      Durability d) {
  IMG_CHECK(access_ == Access::ReadWrite && offset + length <= size_);
  TRY(zero_file_range(*file_, offset, length, z.may_trim, z.fast_only));
  if (d == Durability::Fua) TRY(file_->sync());
  return ok();
}

Result<void> FileDevice::cache(uint64_t offset, uint64_t length) {
  IMG_CHECK(offset + length <= size_);
  if (file_->fd() >= 0)
    ::posix_fadvise(file_->fd(), static_cast<off_t>(offset), static_cast<off_t>(length),
                    POSIX_FADV_WILLNEED);
  return ok();
}

Result<void> file_extents(File& f, uint64_t offset, uint64_t length, std::vector<Extent>& out,
                          size_t max_extents) {
  const uint64_t end = offset + length;
  uint64_t pos = offset;
  for (size_t added = 0; pos < end && added < max_extents; ++added) {
    const uint64_t data = std::min(TRY(f.seek_data(pos)), end);
    if (data > pos) {
      out.push_back(Extent{data - pos, kStateHole | kStateZero});
      pos = data;
      continue;
    }
    uint64_t hole = std::min(TRY(f.seek_hole(pos)), end);
    if (hole <= pos) hole = end;  // defensive: a file system that reports nonsense
    out.push_back(Extent{hole - pos, 0});
    pos = hole;
  }
  return ok();
}

Result<void> FileDevice::block_status(size_t context, uint64_t offset, uint64_t length,
                                      std::vector<Extent>& out) {
  IMG_CHECK(context == 0 && offset + length <= size_ && length > 0);
  // Bounded: a fragmented file could otherwise produce millions of extents.
  return file_extents(*file_, offset, length, out);
}

}  // namespace imgstream
