// FileDevice: a BlockDevice over a regular file or a block device, opened through an Env.
// Holes of sparse files are reported by block_status (SEEK_DATA / SEEK_HOLE); trim punches
// holes; write_zeroes uses FALLOC_FL_ZERO_RANGE / PUNCH_HOLE where the file system can.
#pragma once

#include <memory>
#include <string>

#include "base/env.h"
#include "base/image_lock.h"
#include "device/block_device.h"

namespace imgstream {

enum class Access { ReadOnly, ReadWrite };

// Appends base:allocation extents of [offset, offset + length) of a file from its holes
// (SEEK_DATA / SEEK_HOLE), at most max_extents of them (the rest is left to a later call).
Result<void> file_extents(File& f, uint64_t offset, uint64_t length, std::vector<Extent>& out,
                          size_t max_extents = 1024);

// Makes [offset, offset + length) of a file read as zeros: punches a hole (when may_punch),
// else zeroes the range in place (FALLOC_FL_ZERO_RANGE), else, unless fast_only, writes
// zeros. ENOTSUP when fast_only and only writing would do.
Result<void> zero_file_range(File& f, uint64_t offset, uint64_t length, bool may_punch,
                             bool fast_only = false);

class FileDevice final : public BlockDevice {
 public:
  // Opens `path` and takes QEMU's image locks on it (base/image_lock.h): shared for
  // ReadOnly (other readers and writers may come), and for ReadWrite no other writer: a
  // second writable serve, or a qemu-nbd / qemu-system writing the image, is refused
  // (EBUSY, naming the holder), as qemu refuses one of ours.
  //
  // An image with an unfinished patch beside it (PATH.imgstream-journal, patch/patch_journal.h)
  // is refused: its bytes may be half old, half new until `imgstream patch --recover`.
  static Result<std::unique_ptr<FileDevice>> open(Env& env, const std::string& path, Access a);
  // The same with the lock of `use`. ImageUse::Exclusive (the patcher) is let through a
  // pending journal: it is the one that finishes it.
  static Result<std::unique_ptr<FileDevice>> open(Env& env, const std::string& path, Access a,
                                                  ImageUse use);

  uint64_t size() const override { return size_; }
  DeviceCaps caps() const override;
  Result<void> read(uint64_t offset, std::span<std::byte> buf) override;
  Result<void> read_nowait(uint64_t offset, std::span<std::byte> buf) override;
  Result<void> write(uint64_t offset, std::span<const std::byte> data, Durability d) override;
  Result<void> write_nowait(uint64_t offset, std::span<const std::byte> data,
                            Durability d) override;
  Result<void> flush() override;
  Result<void> trim(uint64_t offset, uint64_t length, Durability d) override;
  Result<void> write_zeroes(uint64_t offset, uint64_t length, ZeroFlags z,
                            Durability d) override;
  Result<void> cache(uint64_t offset, uint64_t length) override;
  Result<void> block_status(size_t context, uint64_t offset, uint64_t length,
                            std::vector<Extent>& out) override;

  File& file() { return *file_; }

 private:
  FileDevice(std::unique_ptr<File> f, uint64_t size, Access a)
      : file_(std::move(f)), size_(size), access_(a) {}

  std::unique_ptr<File> file_;
  uint64_t size_;
  Access access_;
};

}  // namespace imgstream
