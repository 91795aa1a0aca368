// ExtFs: an ext2/3/4 file system inside a range of a BlockDevice, read and edited with
// libext2fs (e2fsprogs) through an io_manager of ours, so that every block it reads or
// writes goes through the device stack (a file, a pack, an overlay that keeps the writes
// in memory) and nothing is mounted.
//
// Guest paths are absolute ("/etc/hostname"). They are resolved inside the file system
// as the guest would, with two refusals (EXDEV): a ".." that would climb above the root,
// and an absolute symlink met on the way (it names a path of the machine it runs on;
// followed here it could land anywhere, so the user names the real path instead).
// Relative symlinks are followed, at most kSymlinkHopsMax of them (ELOOP).
//
// Not thread-safe: one thread uses an ExtFs (libext2fs keeps its caches in the handle).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/limits.h"
#include "base/result.h"
#include "device/block_device.h"

struct struct_ext2_filsys;

namespace imgstream::patch {

inline constexpr int kSymlinkHopsMax = limits::kSymlinkHopsMax;
inline constexpr size_t kSymlinkTargetMax = limits::kSymlinkTargetMax;
inline constexpr size_t kGuestNameMax = limits::kGuestNameMax;
inline constexpr size_t kGuestPathMax = limits::kGuestPathMax;
// `cat` and the file reads of a patch (fstab) hold the file in memory.
inline constexpr uint64_t kReadFileMax = limits::kGuestReadFileMax;

struct Attr {
  uint32_t mode = 0;  // permission bits (07777)
  uint32_t uid = 0;
  uint32_t gid = 0;
};

enum class FileType { Regular, Directory, Symlink, Other };

struct Stat {
  uint32_t ino = 0;
  FileType type = FileType::Other;
  uint32_t mode = 0;  // the whole i_mode (type and permissions)
  uint32_t uid = 0, gid = 0;
  uint64_t size = 0;
  uint32_t links = 0;
  int64_t mtime = 0;
  std::string link_target;  // symlinks
};

struct DirEntry {
  std::string name;
  Stat stat;
};

class ExtFs {
 public:
  // Opens the file system at [offset, offset + length) of `dev`; `name` is what errors
  // call it ("disk.img partition 2"). Writable: the bitmaps are loaded and writes go to
  // `dev` as libext2fs makes them (the caller gives an overlay when it wants them kept).
  static Result<std::unique_ptr<ExtFs>> open(BlockDevice& dev, uint64_t offset, uint64_t length,
                                             bool writable, std::string name);
  ~ExtFs();
  ExtFs(const ExtFs&) = delete;
  ExtFs& operator=(const ExtFs&) = delete;

  // Writes the superblock, group descriptors and bitmaps (primary copies only, as the
  // kernel does) and closes. Without it the destructor closes without writing.
  Result<void> close();

  const std::string& name() const { return name_; }
  uint64_t block_bytes() const;
  uint64_t free_blocks() const;
  uint64_t free_inodes() const;

  // Follows the last component when it is a symlink.
  Result<Stat> stat(std::string_view path);
  Result<Stat> lstat(std::string_view path);
  Result<bool> exists(std::string_view path);  // lstat: a dangling link exists
  Result<std::vector<DirEntry>> list(std::string_view dir);
  Result<std::vector<std::byte>> read_file(std::string_view path, uint64_t max = kReadFileMax);

  // mkdir -p: missing directories are made with `attr`; existing ones are left as they
  // are. A component that exists and is not a directory is ENOTDIR.
  Result<void> make_dirs(std::string_view dir, const Attr& attr);
  // Creates or replaces a regular file (its parent must exist). An existing regular file
  // is rewritten in place, keeping its inode; `attr` applies either way. A directory
  // there is EISDIR; a symlink or other file there is replaced.
  Result<void> write_file(std::string_view path, std::span<const std::byte> data, const Attr& attr);
  // Creates a symlink (replacing a file or symlink there; a directory is EISDIR).
  Result<void> symlink(std::string_view target, std::string_view path);
  // Removes a file, symlink or directory tree (rm -rf of one path). ENOENT when absent.
  Result<void> remove(std::string_view path);

 private:
  struct Resolved;
  ExtFs(struct_ext2_filsys* fs, std::string name, bool writable);
  Result<Resolved> resolve(std::string_view path, bool follow_last);
  Result<uint32_t> lookup_in(uint32_t dir, std::string_view name);  // 0: absent
  Result<Stat> stat_ino(uint32_t ino);
  Result<std::string> read_link(uint32_t ino);
  Result<std::vector<std::byte>> read_file_ino(uint32_t ino, uint64_t max);
  // The entries of a directory but "." and "..": (name, inode), at most kListEntriesMax.
  Result<std::vector<std::pair<std::string, uint32_t>>> children(uint32_t dir,
                                                                 const std::string& path);
  Result<void> link_into(uint32_t dir, const std::string& name, uint32_t ino, int file_type);
  Result<uint32_t> new_inode(uint32_t dir, uint32_t mode, const Attr& attr);
  Result<void> write_data(uint32_t ino, std::span<const std::byte> data, bool truncate);
  Result<void> set_attr(uint32_t ino, const Attr& attr);
  Result<void> remove_entry(uint32_t dir, const std::string& name, uint32_t ino, int depth);
  Result<void> release_inode(uint32_t ino, bool is_dir);
  Error fail(long code, std::string_view what) const;

  struct_ext2_filsys* fs_;
  std::string name_;
  bool writable_;
};

}  // namespace imgstream::patch
