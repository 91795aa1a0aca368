// Env: every file-system access of imgstream goes through this interface (as leveldb's
// Env), so that tests can run the same code on an in-memory file system or on one that
// injects faults and simulates power loss (src/base/env_memory.h, env_fault.h).
//
// Thread safety: an Env and a File may be used from many threads at once; positional
// I/O (read_at / write_at) never shares a file offset.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "base/result.h"

namespace imgstream {

enum class OpenMode {
  ReadOnly,      // must exist
  ReadWrite,     // must exist
  CreateOrOpen,  // read-write; created empty when missing
};

// A regular file or block device opened through an Env.
class File {
 public:
  virtual ~File() = default;

  // Positional read. Returns the number of bytes read: fewer than asked only at the end
  // of the file (or when a fault-injecting Env asks for a short read).
  virtual Result<size_t> read_at(uint64_t offset, std::span<std::byte> buf) = 0;
  // As read_at, but only when it needs no wait for the disk (the data is in the page
  // cache); otherwise Error::would_block(). Lets an event loop serve hot data inline and
  // hand cold reads to a thread. The default never takes the fast path.
  virtual Result<size_t> read_at_nowait(uint64_t offset, std::span<std::byte> buf);
  // Positional write. Returns the bytes written (short only on a fault or a full disk).
  virtual Result<size_t> write_at(uint64_t offset, std::span<const std::byte> buf) = 0;
  // Makes every completed write durable (fdatasync).
  virtual Result<void> sync() = 0;
  virtual Result<uint64_t> size() = 0;
  virtual Result<void> truncate(uint64_t size) = 0;
  // Deallocates [offset, offset+len) keeping the size; the range reads back as zeros.
  // Error with ENOTSUP/EOPNOTSUPP where the file system cannot.
  virtual Result<void> punch_hole(uint64_t offset, uint64_t len) = 0;
  // Makes [offset, offset+len) read as zeros, allocated (FALLOC_FL_ZERO_RANGE), or
  // ENOTSUP where it cannot be done faster than writing zeros.
  virtual Result<void> zero_range(uint64_t offset, uint64_t len) = 0;
  // lseek(SEEK_DATA) / lseek(SEEK_HOLE): the first data (or hole) at or after offset;
  // `size()` when there is none. Files without hole information report all data.
  virtual Result<uint64_t> seek_data(uint64_t offset) = 0;
  virtual Result<uint64_t> seek_hole(uint64_t offset) = 0;
  // The kernel descriptor, or -1 for files that have none (in-memory twins).
  virtual int fd() const { return -1; }
  // The path it was opened as, for error messages.
  virtual const std::string& path() const = 0;
};

// The directory holding `path` ("." for a bare name, "/" for a file at the root):
// what to sync_dir after creating or renaming it. Trailing slashes are ignored.
std::string parent_dir(const std::string& path);

// Loops read_at until the whole buffer is filled; an early end of file is EIO.
Result<void> read_exact_at(File& f, uint64_t offset, std::span<std::byte> buf);
// Loops write_at until the whole buffer is written.
Result<void> write_all_at(File& f, uint64_t offset, std::span<const std::byte> buf);

class Env;
// Makes `dir` and its missing parents (mkdir -p), each made durable in its parent.
Result<void> make_dirs(Env& env, const std::string& dir);

// An exclusive lock on a file, released when the object goes.
class FileLock {
 public:
  virtual ~FileLock() = default;
};

class Env {
 public:
  virtual ~Env() = default;

  virtual Result<std::unique_ptr<File>> open(const std::string& path, OpenMode mode) = 0;
  virtual Result<bool> exists(const std::string& path) = 0;
  // Atomically replaces `to` with `from`. Durable only after sync_dir of the parent.
  virtual Result<void> rename(const std::string& from, const std::string& to) = 0;
  virtual Result<void> remove(const std::string& path) = 0;
  // Creates a directory; succeeds when it exists already.
  virtual Result<void> mkdir(const std::string& path) = 0;
  // Makes creations, renames and removals in the directory durable.
  virtual Result<void> sync_dir(const std::string& path) = 0;
  virtual Result<std::vector<std::string>> list_dir(const std::string& path) = 0;
  // Takes an exclusive advisory lock on `path` (created if missing) without waiting:
  // EWOULDBLOCK when another process holds it. The default (for in-memory twins, which
  // live in one process) always succeeds.
  virtual Result<std::unique_ptr<FileLock>> lock(const std::string& path);

  // The real file system. Lives for the whole process.
  static Env* posix();
};

}  // namespace imgstream
