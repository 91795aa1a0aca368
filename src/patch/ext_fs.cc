#include "patch/ext_fs.h"

#include <ext2fs/ext2fs.h>
extern "C" {
#include <et/com_err.h>
}

#include <atomic>
#include <cstring>
#include <ctime>
#include <deque>
#include <map>
#include <mutex>

#include "base/check.h"
#include "base/limits.h"
#include "base/stop.h"

namespace imgstream::patch {

namespace {

// ---- the io_manager: libext2fs's block I/O, served by a BlockDevice range ----

struct Backend {
  BlockDevice* dev = nullptr;
  uint64_t offset = 0;
  uint64_t length = 0;
  bool writable = false;
  struct struct_io_stats stats {};
};

// libext2fs opens a channel by name: the name says which Backend it is.
std::mutex registry_mu;
std::map<std::string, Backend*> registry;  // under registry_mu
std::atomic<uint64_t> next_backend{1};

Backend* backend_of(io_channel ch) { return static_cast<Backend*>(ch->private_data); }

errcode_t dev_error(const Error& e) { return e.code > 0 && e.code < 256 ? e.code : EIO; }

// Bytes and offset of a block request: a negative count is a byte count (libext2fs's rule).
bool request_range(io_channel ch, unsigned long long block, int count, uint64_t& at,
                   uint64_t& bytes) {
  Backend* b = backend_of(ch);
  bytes = count < 0 ? uint64_t(-int64_t(count)) : uint64_t(count) * uint64_t(ch->block_size);
  at = block * uint64_t(ch->block_size);
  return block <= b->length / uint64_t(ch->block_size) && at <= b->length &&
         bytes <= b->length - at;
}

errcode_t io_open(const char* name, int flags, io_channel* out);

errcode_t io_close(io_channel ch) {
  if (--ch->refcount > 0) return 0;
  std::free(ch->name);
  delete ch;
  return 0;
}

errcode_t io_set_blksize(io_channel ch, int blksize) {
  if (blksize <= 0) return EXT2_ET_INVALID_ARGUMENT;
  ch->block_size = blksize;
  return 0;
}

errcode_t io_read64(io_channel ch, unsigned long long block, int count, void* data) {
  uint64_t at = 0, bytes = 0;
  if (!request_range(ch, block, count, at, bytes)) return EXT2_ET_SHORT_READ;
  Backend* b = backend_of(ch);
  auto r = b->dev->read(b->offset + at, std::span(static_cast<std::byte*>(data), bytes));
  if (!r) return dev_error(r.error());
  b->stats.bytes_read += bytes;
  return 0;
}

errcode_t io_write64(io_channel ch, unsigned long long block, int count, const void* data) {
  uint64_t at = 0, bytes = 0;
  if (!request_range(ch, block, count, at, bytes)) return EXT2_ET_SHORT_WRITE;
  Backend* b = backend_of(ch);
  if (!b->writable) return EXT2_ET_RO_FILSYS;
  auto r = b->dev->write(b->offset + at, std::span(static_cast<const std::byte*>(data), bytes),
                         Durability::Buffered);
  if (!r) return dev_error(r.error());
  b->stats.bytes_written += bytes;
  return 0;
}

errcode_t io_read(io_channel ch, unsigned long block, int count, void* data) {
  return io_read64(ch, block, count, data);
}
errcode_t io_write(io_channel ch, unsigned long block, int count, const void* data) {
  return io_write64(ch, block, count, data);
}

errcode_t io_write_byte(io_channel ch, unsigned long offset, int count, const void* data) {
  Backend* b = backend_of(ch);
  if (!b->writable) return EXT2_ET_RO_FILSYS;
  if (count < 0 || offset > b->length || uint64_t(count) > b->length - offset)
    return EXT2_ET_SHORT_WRITE;
  auto r = b->dev->write(b->offset + offset,
                         std::span(static_cast<const std::byte*>(data), size_t(count)),
                         Durability::Buffered);
  if (!r) return dev_error(r.error());
  b->stats.bytes_written += uint64_t(count);
  return 0;
}

errcode_t io_flush(io_channel ch) {
  auto r = backend_of(ch)->dev->flush();
  return r ? 0 : dev_error(r.error());
}

errcode_t io_set_option(io_channel, const char*, const char*) { return EXT2_ET_INVALID_ARGUMENT; }

errcode_t io_get_stats(io_channel ch, io_stats* stats) {
  Backend* b = backend_of(ch);
  b->stats.num_fields = 2;
  *stats = &b->stats;
  return 0;
}

errcode_t io_zeroout(io_channel ch, unsigned long long block, unsigned long long count) {
  static const std::vector<char> zeros(64 * 1024);
  const uint64_t per = zeros.size() / uint64_t(ch->block_size);
  while (count > 0) {
    const uint64_t n = std::min<unsigned long long>(count, per);
    if (errcode_t e = io_write64(ch, block, int(n), zeros.data())) return e;
    block += n;
    count -= n;
  }
  return 0;
}

errcode_t io_discard(io_channel, unsigned long long, unsigned long long) {
  return EXT2_ET_UNIMPLEMENTED;
}
errcode_t io_readahead(io_channel, unsigned long long, unsigned long long) { return 0; }

struct struct_io_manager manager = [] {
  struct struct_io_manager m {};
  m.magic = EXT2_ET_MAGIC_IO_MANAGER;
  m.name = "imgstream device";
  m.open = io_open;
  m.close = io_close;
  m.set_blksize = io_set_blksize;
  m.read_blk = io_read;
  m.write_blk = io_write;
  m.flush = io_flush;
  m.write_byte = io_write_byte;
  m.set_option = io_set_option;
  m.get_stats = io_get_stats;
  m.read_blk64 = io_read64;
  m.write_blk64 = io_write64;
  m.discard = io_discard;
  m.cache_readahead = io_readahead;
  m.zeroout = io_zeroout;
  return m;
}();

errcode_t io_open(const char* name, int flags, io_channel* out) {
  Backend* b = nullptr;
  {
    std::lock_guard lock(registry_mu);
    auto it = registry.find(name);
    if (it == registry.end()) return EXT2_ET_BAD_DEVICE_NAME;
    b = it->second;
  }
  if ((flags & IO_FLAG_RW) && !b->writable) return EXT2_ET_RO_FILSYS;
  auto* ch = new struct_io_channel();
  ch->magic = EXT2_ET_MAGIC_IO_CHANNEL;
  ch->manager = &manager;
  ch->name = strdup(name);
  ch->block_size = 1024;
  ch->refcount = 1;
  ch->flags = flags;
  ch->private_data = b;
  *out = ch;
  return 0;
}

// Registered for the life of an ExtFs: libext2fs may reopen nothing, but looks it up
// by name once in ext2fs_open2.
class Registration {
 public:
  explicit Registration(Backend* b) : name_("imgstream:" + std::to_string(next_backend++)) {
    std::lock_guard lock(registry_mu);
    registry[name_] = b;
  }
  ~Registration() {
    std::lock_guard lock(registry_mu);
    registry.erase(name_);
  }
  const std::string& name() const { return name_; }

 private:
  std::string name_;
};

// ---- helpers ----

uint32_t now() { return uint32_t(std::time(nullptr)); }

std::vector<std::string> split_path(std::string_view path) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    std::string_view c = path.substr(i, j - i);
    if (!c.empty() && c != ".") out.emplace_back(c);
    i = j + 1;
  }
  return out;
}

FileType type_of(uint32_t mode) {
  if (LINUX_S_ISREG(mode)) return FileType::Regular;
  if (LINUX_S_ISDIR(mode)) return FileType::Directory;
  if (LINUX_S_ISLNK(mode)) return FileType::Symlink;
  return FileType::Other;
}

void set_owner(struct ext2_inode& inode, const Attr& a) {
  inode.i_uid = uint16_t(a.uid);
  ext2fs_set_i_uid_high(inode, uint16_t(a.uid >> 16));
  inode.i_gid = uint16_t(a.gid);
  ext2fs_set_i_gid_high(inode, uint16_t(a.gid >> 16));
}

// Depth of a directory tree that remove() walks: a hostile image cannot make it recurse
// without bound.
constexpr int kRemoveDepthMax = limits::kGuestRemoveDepthMax;
// Entries list() returns: a hostile directory cannot grow memory without bound.
constexpr size_t kListEntriesMax = limits::kGuestDirEntriesMax;

}  // namespace

struct ExtFs::Resolved {
  uint32_t parent = 0;  // the directory holding it
  std::string name;     // its name there ("" for the root)
  uint32_t ino = 0;     // 0: absent (parent and name say where it would be)
  std::string path;     // as the user gave it, for messages
};

Error ExtFs::fail(long code, std::string_view what) const {
  int err = EIO;
  std::string why = error_message(code);
  switch (code) {
    case EXT2_ET_BLOCK_ALLOC_FAIL:
    case EXT2_ET_INODE_ALLOC_FAIL:
    case EXT2_ET_DIR_NO_SPACE:
    case EXT2_ET_TOOSMALL:
      err = ENOSPC;
      why += " (the file system is full)";
      break;
    case EXT2_ET_FILE_NOT_FOUND: err = ENOENT; break;
    case EXT2_ET_NO_DIRECTORY: err = ENOTDIR; break;
    case EXT2_ET_RO_FILSYS: err = EROFS; break;
    default:
      if (code > 0 && code < 256) err = int(code);
  }
  return Error{err, name_ + ": " + std::string(what) + ": " + why};
}

Result<std::unique_ptr<ExtFs>> ExtFs::open(BlockDevice& dev, uint64_t offset, uint64_t length,
                                           bool writable, std::string name) {
  IMG_CHECK(offset <= dev.size() && length <= dev.size() - offset);
  // libext2fs's messages ("Could not allocate block"), not "Unknown code ext2 72".
  static std::once_flag tables;
  std::call_once(tables, [] { initialize_ext2_error_table(); });
  auto backend = std::make_unique<Backend>();
  backend->dev = &dev;
  backend->offset = offset;
  backend->length = length;
  backend->writable = writable;
  Registration reg(backend.get());
  ext2_filsys fs = nullptr;
  int flags = EXT2_FLAG_64BITS;
  if (writable) flags |= EXT2_FLAG_RW;
  errcode_t e = ext2fs_open2(reg.name().c_str(), nullptr, flags, 0, 0, &manager, &fs);
  if (e) return Error{EINVAL, name + ": not an ext2/3/4 file system libext2fs can open: " +
                                  std::string(error_message(e))};
  // The channel keeps the Backend; it lives as long as the file system (private_data of
  // the channel, freed in the destructor below through fs->priv_data).
  fs->priv_data = backend.release();
  auto out = std::unique_ptr<ExtFs>(new ExtFs(fs, std::move(name), writable));
  if (writable) {
    // The kernel updates the primary superblock and descriptors only; so do we (the
    // backups would make every group's first blocks part of a delta pack).
    fs->flags |= EXT2_FLAG_MASTER_SB_ONLY;
    if (errcode_t be = ext2fs_read_bitmaps(fs)) return out->fail(be, "reading the bitmaps");
  }
  return out;
}

ExtFs::ExtFs(struct_ext2_filsys* fs, std::string name, bool writable)
    : fs_(fs), name_(std::move(name)), writable_(writable) {}

ExtFs::~ExtFs() {
  if (!fs_) return;
  auto* b = static_cast<Backend*>(fs_->priv_data);
  ext2fs_free(fs_);  // no flush: what was not closed is dropped
  delete b;
}

Result<void> ExtFs::close() {
  IMG_CHECK(fs_ != nullptr);
  auto* b = static_cast<Backend*>(fs_->priv_data);
  errcode_t e = writable_ ? ext2fs_close2(fs_, 0) : ext2fs_close2(fs_, EXT2_FLAG_FLUSH_NO_SYNC);
  if (e) {
    // ext2fs_close2 frees the handle only on success.
    ext2fs_free(fs_);
    fs_ = nullptr;
    delete b;
    return fail(e, "writing the file system's metadata");
  }
  fs_ = nullptr;
  delete b;
  return ok();
}

uint64_t ExtFs::block_bytes() const { return fs_->blocksize; }
uint64_t ExtFs::free_blocks() const { return ext2fs_free_blocks_count(fs_->super); }
uint64_t ExtFs::free_inodes() const { return fs_->super->s_free_inodes_count; }

Result<uint32_t> ExtFs::lookup_in(uint32_t dir, std::string_view name) {
  ext2_ino_t ino = 0;
  errcode_t e = ext2fs_lookup(fs_, dir, name.data(), int(name.size()), nullptr, &ino);
  if (e == EXT2_ET_FILE_NOT_FOUND) return uint32_t(0);
  if (e) return fail(e, "looking up " + std::string(name));
  return uint32_t(ino);
}

Result<Stat> ExtFs::stat_ino(uint32_t ino) {
  struct ext2_inode inode {};
  if (errcode_t e = ext2fs_read_inode(fs_, ino, &inode))
    return fail(e, "reading inode " + std::to_string(ino));
  Stat s;
  s.ino = ino;
  s.mode = inode.i_mode;
  s.type = type_of(inode.i_mode);
  s.uid = inode_uid(inode);
  s.gid = inode_gid(inode);
  s.size = EXT2_I_SIZE(&inode);
  s.links = inode.i_links_count;
  s.mtime = inode.i_mtime;
  return s;
}

Result<std::string> ExtFs::read_link(uint32_t ino) {
  struct ext2_inode inode {};
  if (errcode_t e = ext2fs_read_inode(fs_, ino, &inode))
    return fail(e, "reading inode " + std::to_string(ino));
  const uint64_t size = EXT2_I_SIZE(&inode);
  if (size == 0 || size > kSymlinkTargetMax)
    return Error{EINVAL, name_ + ": symlink inode " + std::to_string(ino) + " has a bad size"};
  if (ext2fs_is_fast_symlink(&inode)) {
    const char* p = reinterpret_cast<const char*>(inode.i_block);
    return std::string(p, strnlen(p, std::min<uint64_t>(size, sizeof inode.i_block)));
  }
  auto bytes = TRY(read_file_ino(ino, size));
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}


Result<std::vector<std::byte>> ExtFs::read_file_ino(uint32_t ino, uint64_t max) {
  ext2_file_t f = nullptr;
  if (errcode_t e = ext2fs_file_open(fs_, ino, 0, &f))
    return fail(e, "opening inode " + std::to_string(ino));
  const uint64_t size = ext2fs_file_get_size(f);
  if (size > max) {
    ext2fs_file_close(f);
    return Error{EFBIG, name_ + ": inode " + std::to_string(ino) + " holds " +
                            std::to_string(size) + " bytes, more than the " +
                            std::to_string(max) + " read at most"};
  }
  std::vector<std::byte> out(size);
  uint64_t done = 0;
  while (done < size) {
    unsigned int got = 0;
    const unsigned int want = unsigned(std::min<uint64_t>(size - done, 1u << 20));
    if (errcode_t e = ext2fs_file_read(f, out.data() + done, want, &got)) {
      ext2fs_file_close(f);
      return fail(e, "reading inode " + std::to_string(ino));
    }
    if (got == 0) break;
    done += got;
  }
  ext2fs_file_close(f);
  out.resize(done);
  return out;
}

Result<ExtFs::Resolved> ExtFs::resolve(std::string_view path, bool follow_last) {
  Resolved r;
  r.path = std::string(path);
  if (path.empty() || path[0] != '/')
    return Error{EINVAL, name_ + ": guest path '" + r.path + "' is not absolute"};
  if (path.size() > kGuestPathMax)
    return Error{ENAMETOOLONG, name_ + ": guest path is longer than " +
                                   std::to_string(kGuestPathMax) + " bytes"};
  std::deque<std::string> todo;
  for (auto& c : split_path(path)) todo.push_back(std::move(c));
  std::vector<uint32_t> dirs{EXT2_ROOT_INO};
  std::vector<std::string> names{""};
  int hops = 0;
  while (!todo.empty()) {
    std::string c = std::move(todo.front());
    todo.pop_front();
    if (c == "..") {
      if (dirs.size() == 1)
        return Error{EXDEV, name_ + ": " + r.path + ": '..' climbs above the root"};
      dirs.pop_back();
      names.pop_back();
      continue;
    }
    if (c.size() > kGuestNameMax)
      return Error{ENAMETOOLONG, name_ + ": " + r.path + ": a name is longer than 255 bytes"};
    const uint32_t dir = dirs.back();
    const uint32_t ino = TRY(lookup_in(dir, c));
    const bool last = todo.empty();
    if (ino == 0) {
      if (!last) return Error{ENOENT, name_ + ": " + r.path + ": " + c + " does not exist"};
      r.parent = dir;
      r.name = c;
      return r;
    }
    const Stat st = TRY(stat_ino(ino));
    if (st.type == FileType::Symlink && (!last || follow_last)) {
      if (++hops > kSymlinkHopsMax)
        return Error{ELOOP, name_ + ": " + r.path + ": too many levels of symlinks"};
      const std::string target = TRY(read_link(ino));
      if (target[0] == '/')
        return Error{EXDEV, name_ + ": " + r.path + ": " + c + " is a symlink to the absolute path " +
                                target + ", not followed: name the path it points to"};
      auto parts = split_path(target);
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) todo.push_front(std::move(*it));
      continue;
    }
    if (last) {
      r.parent = dir;
      r.name = c;
      r.ino = ino;
      return r;
    }
    if (st.type != FileType::Directory)
      return Error{ENOTDIR, name_ + ": " + r.path + ": " + c + " is not a directory"};
    dirs.push_back(ino);
    names.push_back(c);
  }
  // The path ends in a directory reached by "/", "." or "..".
  r.ino = dirs.back();
  r.name = names.back();
  r.parent = dirs.size() > 1 ? dirs[dirs.size() - 2] : uint32_t(EXT2_ROOT_INO);
  return r;
}

Result<Stat> ExtFs::stat(std::string_view path) {
  Resolved r = TRY(resolve(path, true));
  if (r.ino == 0) return Error{ENOENT, name_ + ": " + r.path + " does not exist"};
  return stat_ino(r.ino);
}

Result<Stat> ExtFs::lstat(std::string_view path) {
  Resolved r = TRY(resolve(path, false));
  if (r.ino == 0) return Error{ENOENT, name_ + ": " + r.path + " does not exist"};
  Stat s = TRY(stat_ino(r.ino));
  if (s.type == FileType::Symlink) s.link_target = TRY(read_link(r.ino));
  return s;
}

Result<bool> ExtFs::exists(std::string_view path) {
  Resolved r = TRY(resolve(path, false));
  return r.ino != 0;
}

Result<std::vector<DirEntry>> ExtFs::list(std::string_view dir) {
  Resolved r = TRY(resolve(dir, true));
  if (r.ino == 0) return Error{ENOENT, name_ + ": " + r.path + " does not exist"};
  const Stat st = TRY(stat_ino(r.ino));
  if (st.type != FileType::Directory)
    return Error{ENOTDIR, name_ + ": " + r.path + " is not a directory"};
  const auto entries = TRY(children(r.ino, r.path));
  std::vector<DirEntry> out;
  out.reserve(entries.size());
  for (auto& [n, ino] : entries) {
    DirEntry d{n, TRY(stat_ino(ino))};
    if (d.stat.type == FileType::Symlink) d.stat.link_target = TRY(read_link(ino));
    out.push_back(std::move(d));
  }
  return out;
}

Result<std::vector<std::byte>> ExtFs::read_file(std::string_view path, uint64_t max) {
  Resolved r = TRY(resolve(path, true));
  if (r.ino == 0) return Error{ENOENT, name_ + ": " + r.path + " does not exist"};
  const Stat st = TRY(stat_ino(r.ino));
  if (st.type != FileType::Regular)
    return Error{EINVAL, name_ + ": " + r.path + " is not a regular file"};
  return read_file_ino(r.ino, max);
}

Result<std::vector<std::pair<std::string, uint32_t>>> ExtFs::children(uint32_t dir,
                                                                      const std::string& path) {
  struct Collect {
    std::vector<std::pair<std::string, uint32_t>> entries;
    bool too_many = false;
  } c;
  auto cb = [](ext2_ino_t, int, struct ext2_dir_entry* d, int, int, char*, void* priv) -> int {
    auto* col = static_cast<Collect*>(priv);
    std::string n(d->name, size_t(ext2fs_dirent_name_len(d)));
    if (n == "." || n == "..") return 0;
    if (col->entries.size() == kListEntriesMax) {
      col->too_many = true;
      return DIRENT_ABORT;
    }
    col->entries.emplace_back(std::move(n), d->inode);
    return 0;
  };
  if (errcode_t e = ext2fs_dir_iterate2(fs_, dir, 0, nullptr, cb, &c))
    return fail(e, "reading directory " + path);
  if (c.too_many)
    return Error{E2BIG, name_ + ": " + path + " has more than " + std::to_string(kListEntriesMax) +
                            " entries"};
  return std::move(c.entries);
}

Result<void> ExtFs::link_into(uint32_t dir, const std::string& name, uint32_t ino, int file_type) {
  errcode_t e = ext2fs_link(fs_, dir, name.c_str(), ino, file_type);
  if (e == EXT2_ET_DIR_NO_SPACE) {
    e = ext2fs_expand_dir(fs_, dir);
    if (!e) e = ext2fs_link(fs_, dir, name.c_str(), ino, file_type);
  }
  if (e) return fail(e, "adding " + name + " to directory inode " + std::to_string(dir));
  return ok();
}

Result<uint32_t> ExtFs::new_inode(uint32_t dir, uint32_t mode, const Attr& attr) {
  ext2_ino_t ino = 0;
  if (errcode_t e = ext2fs_new_inode(fs_, dir, int(mode), nullptr, &ino))
    return fail(e, "allocating an inode");
  ext2fs_inode_alloc_stats2(fs_, ino, +1, LINUX_S_ISDIR(mode) ? 1 : 0);
  struct ext2_inode inode {};
  inode.i_mode = uint16_t(mode);
  set_owner(inode, attr);
  inode.i_links_count = 1;
  inode.i_atime = inode.i_ctime = inode.i_mtime = now();
  if (ext2fs_has_feature_extents(fs_->super)) {
    // An empty extent tree in i_block, as mke2fs -d makes its files.
    ext2_extent_handle_t h = nullptr;
    if (errcode_t e = ext2fs_extent_open2(fs_, ino, &inode, &h))
      return fail(e, "making the extent tree of a new file");
    ext2fs_extent_free(h);
  }
  if (errcode_t e = ext2fs_write_new_inode(fs_, ino, &inode))
    return fail(e, "writing a new inode");
  return uint32_t(ino);
}

Result<void> ExtFs::write_data(uint32_t ino, std::span<const std::byte> data, bool truncate) {
  ext2_file_t f = nullptr;
  if (errcode_t e = ext2fs_file_open(fs_, ino, EXT2_FILE_WRITE, &f))
    return fail(e, "opening inode " + std::to_string(ino));
  auto failed = [&](errcode_t e, const char* what) {
    ext2fs_file_close(f);
    return fail(e, what);
  };
  if (truncate)
    if (errcode_t e = ext2fs_file_set_size2(f, 0)) return failed(e, "truncating a file");
  uint64_t done = 0;
  while (done < data.size()) {
    if (stop_requested()) {
      ext2fs_file_close(f);
      return Error{ECANCELED, name_ + ": stopped while writing a file"};
    }
    unsigned int put = 0;
    const unsigned int want = unsigned(std::min<uint64_t>(data.size() - done, 1u << 20));
    if (errcode_t e = ext2fs_file_write(f, data.data() + done, want, &put))
      return failed(e, "writing a file");
    if (put == 0) return failed(EXT2_ET_SHORT_WRITE, "writing a file");
    done += put;
  }
  if (errcode_t e = ext2fs_file_set_size2(f, ext2_off64_t(data.size())))
    return failed(e, "setting a file's size");
  if (errcode_t e = ext2fs_file_close(f)) return fail(e, "writing a file");
  return ok();
}

Result<void> ExtFs::set_attr(uint32_t ino, const Attr& attr) {
  struct ext2_inode inode {};
  if (errcode_t e = ext2fs_read_inode(fs_, ino, &inode))
    return fail(e, "reading inode " + std::to_string(ino));
  inode.i_mode = uint16_t((inode.i_mode & LINUX_S_IFMT) | (attr.mode & 07777));
  set_owner(inode, attr);
  inode.i_ctime = now();
  if (errcode_t e = ext2fs_write_inode(fs_, ino, &inode))
    return fail(e, "writing inode " + std::to_string(ino));
  return ok();
}

Result<void> ExtFs::make_dirs(std::string_view dir, const Attr& attr) {
  std::string prefix;
  for (const std::string& c : split_path(dir)) {
    prefix += "/" + c;
    Resolved r = TRY(resolve(prefix, true));
    if (r.ino != 0) {
      const Stat st = TRY(stat_ino(r.ino));
      if (st.type != FileType::Directory)
        return Error{ENOTDIR, name_ + ": " + prefix + " exists and is not a directory"};
      continue;
    }
    errcode_t e = ext2fs_mkdir(fs_, r.parent, 0, r.name.c_str());
    if (e == EXT2_ET_DIR_NO_SPACE) {
      e = ext2fs_expand_dir(fs_, r.parent);
      if (!e) e = ext2fs_mkdir(fs_, r.parent, 0, r.name.c_str());
    }
    if (e) return fail(e, "making directory " + prefix);
    const uint32_t ino = TRY(lookup_in(r.parent, r.name));
    if (ino == 0) return Error{EIO, name_ + ": " + prefix + " is not there after mkdir"};
    TRY(set_attr(ino, attr));
  }
  return ok();
}

Result<void> ExtFs::write_file(std::string_view path, std::span<const std::byte> data,
                               const Attr& attr) {
  Resolved r = TRY(resolve(path, true));
  if (r.name.empty()) return Error{EISDIR, name_ + ": " + r.path + " is a directory"};
  if (r.ino != 0) {
    const Stat st = TRY(stat_ino(r.ino));
    if (st.type == FileType::Directory)
      return Error{EISDIR, name_ + ": " + r.path + " is a directory"};
    if (st.type == FileType::Regular) {
      TRY(write_data(r.ino, data, true));
      return set_attr(r.ino, attr);
    }
    TRY(remove_entry(r.parent, r.name, r.ino, 0));
  }
  const uint32_t ino = TRY(new_inode(r.parent, LINUX_S_IFREG | (attr.mode & 07777), attr));
  TRY(link_into(r.parent, r.name, ino, EXT2_FT_REG_FILE));
  return write_data(ino, data, false);
}

Result<void> ExtFs::symlink(std::string_view target, std::string_view path) {
  if (target.empty() || target.size() > kSymlinkTargetMax)
    return Error{EINVAL, name_ + ": a symlink target must be 1 to 4095 bytes"};
  Resolved r = TRY(resolve(path, false));
  if (r.name.empty()) return Error{EISDIR, name_ + ": " + r.path + " is a directory"};
  if (r.ino != 0) {
    const Stat st = TRY(stat_ino(r.ino));
    if (st.type == FileType::Directory)
      return Error{EISDIR, name_ + ": " + r.path + " is a directory"};
    TRY(remove_entry(r.parent, r.name, r.ino, 0));
  }
  const std::string t(target);
  errcode_t e = ext2fs_symlink(fs_, r.parent, 0, r.name.c_str(), t.c_str());
  if (e == EXT2_ET_DIR_NO_SPACE) {
    e = ext2fs_expand_dir(fs_, r.parent);
    if (!e) e = ext2fs_symlink(fs_, r.parent, 0, r.name.c_str(), t.c_str());
  }
  if (e) return fail(e, "making symlink " + r.path);
  return ok();
}

Result<void> ExtFs::remove(std::string_view path) {
  Resolved r = TRY(resolve(path, false));
  if (r.ino == 0) return Error{ENOENT, name_ + ": " + r.path + " does not exist"};
  if (r.name.empty()) return Error{EINVAL, name_ + ": the root directory cannot be removed"};
  return remove_entry(r.parent, r.name, r.ino, 0);
}

Result<void> ExtFs::remove_entry(uint32_t dir, const std::string& name, uint32_t ino, int depth) {
  if (depth > kRemoveDepthMax)
    return Error{ELOOP, name_ + ": a directory tree deeper than " +
                            std::to_string(kRemoveDepthMax) + " levels"};
  const Stat st = TRY(stat_ino(ino));
  const bool is_dir = st.type == FileType::Directory;
  if (is_dir) {
    for (auto& [n, child] : TRY(children(ino, name))) TRY(remove_entry(ino, n, child, depth + 1));
  }
  if (errcode_t e = ext2fs_unlink(fs_, dir, name.c_str(), ino, 0))
    return fail(e, "removing " + name);
  TRY(release_inode(ino, is_dir));
  if (is_dir) {  // the parent loses the child's ".."
    struct ext2_inode parent {};
    if (errcode_t e = ext2fs_read_inode(fs_, dir, &parent)) return fail(e, "reading a directory");
    if (parent.i_links_count > 1) --parent.i_links_count;
    parent.i_mtime = parent.i_ctime = now();
    if (errcode_t e = ext2fs_write_inode(fs_, dir, &parent)) return fail(e, "writing a directory");
  }
  return ok();
}

Result<void> ExtFs::release_inode(uint32_t ino, bool is_dir) {
  struct ext2_inode inode {};
  if (errcode_t e = ext2fs_read_inode(fs_, ino, &inode))
    return fail(e, "reading inode " + std::to_string(ino));
  if (!is_dir && inode.i_links_count > 1) {  // another hard link keeps it
    --inode.i_links_count;
    inode.i_ctime = now();
    if (errcode_t e = ext2fs_write_inode(fs_, ino, &inode)) return fail(e, "writing an inode");
    return ok();
  }
  // Fast symlinks keep their target in i_block: nothing there is a block to free.
  if (ext2fs_inode_has_valid_blocks2(fs_, &inode) || (inode.i_flags & EXT4_INLINE_DATA_FL))
    if (errcode_t e = ext2fs_punch(fs_, ino, &inode, nullptr, 0, ~blk64_t(0)))
      return fail(e, "freeing the blocks of inode " + std::to_string(ino));
  if (blk64_t acl = ext2fs_file_acl_block(fs_, &inode)) {
    __u32 count = 0;
    if (errcode_t e = ext2fs_adjust_ea_refcount3(fs_, acl, nullptr, -1, &count, ino))
      return fail(e, "releasing the extended attributes of inode " + std::to_string(ino));
    if (count == 0) ext2fs_block_alloc_stats2(fs_, acl, -1);
    ext2fs_file_acl_block_set(fs_, &inode, 0);
  }
  inode.i_links_count = 0;
  inode.i_dtime = now();
  if (errcode_t e = ext2fs_write_inode(fs_, ino, &inode)) return fail(e, "writing an inode");
  ext2fs_inode_alloc_stats2(fs_, ino, -1, is_dir ? 1 : 0);
  return ok();
}

}  // namespace imgstream::patch
