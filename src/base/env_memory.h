// MemEnv: an in-memory file system behind the Env interface (as leveldb's memenv), with a
// model of durability so that tests can simulate power loss (as leveldb's
// FaultInjectionTestEnv in db/fault_injection_test.cc).
//
// Namespace. A tree of directories and files rooted at "/". Paths are normalised
// lexically: repeated '/' and "." components are dropped, ".." removes the previous
// component, and a relative path is taken from the root ("a/b" is "/a/b"). A file's
// parent directory must exist to create it, as with POSIX; errors carry the errno the
// kernel would give (ENOENT, ENOTDIR, EISDIR, EEXIST, ENOTEMPTY, EINVAL, EBADF).
// Files are inodes: a File opened before a remove or a rename keeps working on the same
// contents, as with POSIX.
//
// Sparseness. Contents are kept in pages of kPageSizeBytes; a page never written, or one
// fully covered by punch_hole or zero_range, is a hole. seek_data / seek_hole report
// holes at page granularity. zero_range also leaves holes: there is no space accounting,
// so "allocated" is not observable (ext4 reports the unwritten extents of
// FALLOC_FL_ZERO_RANGE as holes too). Pages are shared copy-on-write between the current
// and the durable contents, so sync() costs a copy of the page index, not of the data.
//
// Durability. Every file has its current contents and its durable contents; File::sync()
// makes the current contents (and size) durable. Every directory has its current entries
// and its durable entries; Env::sync_dir(d) makes the entries of d durable: creations,
// renames and removals in d, and mkdir of d's subdirectories. A rename across two
// directories needs a sync_dir of both. drop_unsynced() simulates power loss: directories
// and files revert to their durable state, and a file or directory whose link was never
// made durable is gone with everything under it. Nothing unsynced survives: the model is
// the pessimistic one (no partial flush of unsynced data).
//
// Files opened before drop_unsynced() belong to the process that "died": every call on
// them fails with EIO. Open the files again after the drop.
//
// Thread safety: one mutex guards the whole file system, so every Env and File call is
// atomic with respect to the others. Good enough for tests; not built for speed.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/env.h"
#include "base/limits.h"

namespace imgstream {

class MemEnv final : public Env {
 public:
  // Granularity of holes for seek_data / seek_hole.
  static constexpr uint64_t kPageSizeBytes = 4096;
  // The largest file size and end of a write (EFBIG beyond); well under off_t's limit so
  // that offset arithmetic cannot overflow.
  static constexpr uint64_t kFileSizeBytesMax = limits::kMemEnvFileSizeBytesMax;
  // Path components are limited as on Linux (NAME_MAX, PATH_MAX); beyond it ENAMETOOLONG.
  static constexpr size_t kNameBytesMax = limits::kMemEnvNameBytesMax;
  static constexpr size_t kPathBytesMax = limits::kMemEnvPathBytesMax;

  MemEnv();
  ~MemEnv() override;
  MemEnv(const MemEnv&) = delete;
  MemEnv& operator=(const MemEnv&) = delete;

  Result<std::unique_ptr<File>> open(const std::string& path, OpenMode mode) override;
  Result<bool> exists(const std::string& path) override;
  Result<void> rename(const std::string& from, const std::string& to) override;
  Result<void> remove(const std::string& path) override;
  Result<void> mkdir(const std::string& path) override;
  Result<void> sync_dir(const std::string& path) override;
  // Names in byte order (POSIX gives no order; sort before comparing across Envs).
  Result<std::vector<std::string>> list_dir(const std::string& path) override;

  // Power loss: everything not made durable by sync() / sync_dir() is lost, and Files
  // opened before now fail with EIO.
  void drop_unsynced();

 private:
  struct State;
  class MemFile;

  // Shared with the Files, which may outlive the MemEnv.
  std::shared_ptr<State> state_;
};

}  // namespace imgstream
