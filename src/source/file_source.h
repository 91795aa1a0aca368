// FileSource: a Source on a local file or block device, opened through an Env (so tests
// can stream from an in-memory or fault-injecting file system).
//
// Reads run on a small pool of threads of the source's own, so that several reads are
// really in flight at once and one read that waits for a slow disk does not hold up the
// others behind it. done() is always called on a pool thread, never inline in read_async.
//
// Faults: a local file has no connection to lose, so nothing is retried; a failed read
// fails at once with the file's errno (EIO for a file that shrank under us).
//
// Thread safety: every method may be called from any thread, concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <shared_mutex>
#include <span>
#include <string>
#include <vector>

#include "base/env.h"
#include "base/limits.h"
#include "base/result.h"
#include "base/thread_pool.h"
#include "source/source.h"

namespace imgstream::source {

// Threads that read a local file: enough to keep a disk's queue busy, few enough to cost
// nothing when idle.
inline constexpr unsigned kFileSourceThreads = 4;
// Extents that one block_status call appends at most, so that a caller asking about a
// badly fragmented file gets an answer quickly and asks again.
inline constexpr size_t kFileSourceExtentsMax = limits::kFileSourceExtentsMax;

class FileSource final : public Source {
 public:
  static Result<std::unique_ptr<FileSource>> open(Env& env, const std::string& path);
  ~FileSource() override;

  uint64_t size() const override { return size_; }
  const std::string& uri() const override { return path_; }

  // A read past the end fails with EINVAL (done is called at once, on the caller's
  // thread, as for reads after close(), which fail with ESHUTDOWN).
  void read_async(uint64_t offset, std::span<std::byte> buf, ReadDone done) override;
  // From SEEK_DATA / SEEK_HOLE: holes are reported as kStateHole | kStateZero.
  Result<void> block_status(uint64_t offset, uint64_t length, std::vector<Extent>& out) override;
  // Waits for the reads already queued (they complete normally), then closes the file.
  void close() override;

 private:
  FileSource(std::unique_ptr<File> file, std::string path, uint64_t size);

  Error range_error(uint64_t offset, uint64_t length) const;

  const std::string path_;
  const uint64_t size_;

  // Guards the two pointers below and closed_: read_async and block_status hold it
  // shared while they use them, close() exclusively while it takes them away.
  mutable std::shared_mutex mu_;
  bool closed_ = false;
  std::unique_ptr<ThreadPool> pool_;
  // Shared with the pool's tasks, so that the file outlives the last read that uses it.
  std::shared_ptr<File> file_;
};

}  // namespace imgstream::source
