#include "base/env_memory.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string_view>

namespace imgstream {

namespace {

constexpr uint64_t kPage = MemEnv::kPageSizeBytes;
static_assert((kPage & (kPage - 1)) == 0, "page size must be a power of two");
static_assert(MemEnv::kFileSizeBytesMax % kPage == 0);

// A page is shared by the current and the durable contents after a sync(); a page whose
// use_count() is above one is therefore immutable and writers copy it first. Every
// access happens under MemEnv::State::mu, which makes use_count() exact here.
using Page = std::array<std::byte, kPage>;
using PagePtr = std::shared_ptr<Page>;

// The contents of a file. Invariant: no page lies at or after the end of the file, and the
// bytes of the last page past the end are zero, so that growing the file reads zeros.
struct Contents {
  std::map<uint64_t, PagePtr> pages;  // page index -> bytes; a missing page is a hole
  uint64_t size_bytes = 0;
};

// An inode: a file or a directory.
struct Node {
  explicit Node(bool dir) : is_dir(dir) {}
  const bool is_dir;
  // Files: what reads see now, and what a power loss reverts to.
  Contents current;
  Contents durable;
  // Directories: the entries now, and what a power loss reverts to.
  std::map<std::string, std::shared_ptr<Node>> entries;
  std::map<std::string, std::shared_ptr<Node>> durable_entries;
};

uint64_t pages_spanned(uint64_t size_bytes) {
  return (size_bytes + kPage - 1) / kPage;
}

// A page that may be written: copied first when it is shared, created zeroed when absent.
Page& writable_page(Contents& c, uint64_t index) {
  PagePtr& p = c.pages[index];
  if (!p) {
    p = std::make_shared<Page>();  // value-initialised: zeros
  } else if (p.use_count() > 1) {
    p = std::make_shared<Page>(*p);
  }
  return *p;
}

void read_bytes(const Contents& c, uint64_t offset, std::span<std::byte> out) {
  size_t done = 0;
  while (done < out.size()) {
    uint64_t pos = offset + done;
    uint64_t in_page = pos % kPage;
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(kPage - in_page, out.size() - done));
    auto it = c.pages.find(pos / kPage);
    if (it == c.pages.end()) {
      std::memset(out.data() + done, 0, chunk);
    } else {
      std::memcpy(out.data() + done, it->second->data() + in_page, chunk);
    }
    done += chunk;
  }
}

void write_bytes(Contents& c, uint64_t offset, std::span<const std::byte> in) {
  size_t done = 0;
  while (done < in.size()) {
    uint64_t pos = offset + done;
    uint64_t in_page = pos % kPage;
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(kPage - in_page, in.size() - done));
    if (chunk == kPage) {
      // A whole page: no need to copy the old one.
      auto p = std::make_shared<Page>();
      std::memcpy(p->data(), in.data() + done, chunk);
      c.pages[pos / kPage] = std::move(p);
    } else {
      std::memcpy(writable_page(c, pos / kPage).data() + in_page, in.data() + done, chunk);
    }
    done += chunk;
  }
  c.size_bytes = std::max(c.size_bytes, offset + in.size());
}

// Makes [begin, end) read as zeros: whole pages become holes, partial ones are zeroed.
void zero_bytes(Contents& c, uint64_t begin, uint64_t end) {
  while (begin < end) {
    uint64_t index = begin / kPage;
    uint64_t in_page = begin % kPage;
    uint64_t chunk = std::min(kPage - in_page, end - begin);
    if (chunk == kPage) {
      // Drop every whole page up to the last one that is fully covered, in one pass.
      uint64_t last = end / kPage;  // first page not fully covered
      c.pages.erase(c.pages.lower_bound(index), c.pages.lower_bound(last));
      begin = last * kPage;
      continue;
    }
    if (c.pages.count(index)) {
      std::memset(writable_page(c, index).data() + in_page, 0, static_cast<size_t>(chunk));
    }
    begin += chunk;
  }
}

void resize(Contents& c, uint64_t size_bytes) {
  if (size_bytes < c.size_bytes) {
    c.pages.erase(c.pages.lower_bound(pages_spanned(size_bytes)), c.pages.end());
    // Keep the invariant: the tail of the last page reads as zeros if the file grows.
    zero_bytes(c, size_bytes, std::min(c.size_bytes, pages_spanned(size_bytes) * kPage));
  }
  c.size_bytes = size_bytes;
}

// Splits a path into its components after lexical normalisation (see env_memory.h).
Result<std::vector<std::string>> split_path(const std::string& path) {
  if (path.empty()) return Error::from_errno(ENOENT, "empty path");
  if (path.size() > MemEnv::kPathBytesMax) return Error::from_errno(ENAMETOOLONG, path);
  std::vector<std::string> parts;
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = std::min(path.find('/', i), path.size());
    std::string_view c(path.data() + i, j - i);
    if (c == "..") {
      if (!parts.empty()) parts.pop_back();
    } else if (!c.empty() && c != ".") {
      if (c.size() > MemEnv::kNameBytesMax) return Error::from_errno(ENAMETOOLONG, path);
      parts.emplace_back(c);
    }
    i = j + 1;
  }
  return parts;
}

// Walks the first `depth` components from the root; each must be a directory.
Result<Node*> walk_dirs(Node& root, const std::vector<std::string>& parts, size_t depth,
                        const std::string& path) {
  Node* n = &root;
  for (size_t i = 0; i < depth; ++i) {
    auto it = n->entries.find(parts[i]);
    if (it == n->entries.end()) return Error::from_errno(ENOENT, path);
    n = it->second.get();
    if (!n->is_dir) return Error::from_errno(ENOTDIR, path);
  }
  return n;
}

// The directory holding the last component of a non-empty path.
Result<Node*> parent_dir(Node& root, const std::vector<std::string>& parts,
                         const std::string& path) {
  IMG_CHECK(!parts.empty());
  return walk_dirs(root, parts, parts.size() - 1, path);
}

// The node a path names, or nullptr when its last component is missing.
Result<std::shared_ptr<Node>> lookup(const std::shared_ptr<Node>& root,
                                     const std::vector<std::string>& parts,
                                     const std::string& path) {
  if (parts.empty()) return root;
  Node* dir = TRY(parent_dir(*root, parts, path));
  auto it = dir->entries.find(parts.back());
  if (it == dir->entries.end()) return std::shared_ptr<Node>();
  return it->second;
}

bool is_prefix(const std::vector<std::string>& prefix, const std::vector<std::string>& of) {
  return prefix.size() <= of.size() && std::equal(prefix.begin(), prefix.end(), of.begin());
}

}  // namespace

struct MemEnv::State {
  State() : root(new_dir()) {}

  // Durable links can form reference cycles between directories (see drop_unsynced), so
  // the directories are unlinked by hand when the file system goes; a cycle cut off by a
  // drop lives until then. Files hold no links.
  ~State() {
    for (auto& weak : dirs) {
      if (auto d = weak.lock()) {
        d->entries.clear();
        d->durable_entries.clear();
      }
    }
  }

  // A new directory, registered so that cycles through it can be broken.
  std::shared_ptr<Node> new_dir() {
    auto d = std::make_shared<Node>(/*dir=*/true);
    if (dirs.size() >= dirs_pruned_size * 2) {
      std::erase_if(dirs, [](const std::weak_ptr<Node>& w) { return w.expired(); });
      dirs_pruned_size = std::max<size_t>(dirs.size(), 64);
    }
    dirs.push_back(d);
    return d;
  }

  std::mutex mu;
  // Every directory ever made that may still be alive; pruned when it doubles.
  std::vector<std::weak_ptr<Node>> dirs;
  size_t dirs_pruned_size = 64;
  const std::shared_ptr<Node> root;
  // Bumped by every drop_unsynced(): a File of an older generation is dead.
  uint64_t generation = 0;
};

class MemEnv::MemFile final : public File {
 public:
  MemFile(std::shared_ptr<State> state, std::shared_ptr<Node> node, std::string path,
          uint64_t generation, bool writable)
      : state_(std::move(state)),
        node_(std::move(node)),
        path_(std::move(path)),
        generation_(generation),
        writable_(writable) {}

  Result<size_t> read_at(uint64_t offset, std::span<std::byte> buf) override {
    std::lock_guard lock(state_->mu);
    TRY(check_live("read"));
    const Contents& c = node_->current;
    if (offset >= c.size_bytes) return size_t{0};
    size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), c.size_bytes - offset));
    read_bytes(c, offset, buf.first(n));
    return n;
  }

  // Everything is in memory: the fast path always applies.
  Result<size_t> read_at_nowait(uint64_t offset, std::span<std::byte> buf) override {
    return read_at(offset, buf);
  }

  Result<size_t> write_at(uint64_t offset, std::span<const std::byte> buf) override {
    std::lock_guard lock(state_->mu);
    TRY(check_writable("write"));
    if (buf.empty()) return size_t{0};
    TRY(check_range(offset, buf.size(), "write"));
    write_bytes(node_->current, offset, buf);
    return buf.size();
  }

  Result<void> sync() override {
    std::lock_guard lock(state_->mu);
    TRY(check_live("fdatasync"));
    node_->durable = node_->current;  // copies page pointers; the pages become shared
    return ok();
  }

  Result<uint64_t> size() override {
    std::lock_guard lock(state_->mu);
    TRY(check_live("stat"));
    return node_->current.size_bytes;
  }

  Result<void> truncate(uint64_t size) override {
    std::lock_guard lock(state_->mu);
    TRY(check_writable("truncate", EINVAL));
    if (size > kFileSizeBytesMax) return Error::from_errno(EFBIG, "truncate " + path_);
    resize(node_->current, size);
    return ok();
  }

  Result<void> punch_hole(uint64_t offset, uint64_t len) override {
    return zero("punch", offset, len);
  }

  // The same as punch_hole here: without space accounting "allocated" is not observable.
  Result<void> zero_range(uint64_t offset, uint64_t len) override {
    return zero("zero", offset, len);
  }

  Result<uint64_t> seek_data(uint64_t offset) override {
    std::lock_guard lock(state_->mu);
    TRY(check_live("lseek"));
    const Contents& c = node_->current;
    if (offset >= c.size_bytes) return c.size_bytes;
    auto it = c.pages.lower_bound(offset / kPage);
    if (it == c.pages.end()) return c.size_bytes;
    return std::max(offset, it->first * kPage);  // below size_bytes by the invariant
  }

  Result<uint64_t> seek_hole(uint64_t offset) override {
    std::lock_guard lock(state_->mu);
    TRY(check_live("lseek"));
    const Contents& c = node_->current;
    if (offset >= c.size_bytes) return c.size_bytes;
    uint64_t index = offset / kPage;
    for (auto it = c.pages.find(index); it != c.pages.end() && it->first == index; ++it) {
      ++index;
    }
    return std::min(c.size_bytes, std::max(offset, index * kPage));
  }

  const std::string& path() const override { return path_; }

 private:
  // Callers hold state_->mu.
  Result<void> check_live(const char* what) const {
    if (generation_ != state_->generation)
      return Error::io(std::string(what) + " " + path_ +
                       ": file was opened before a simulated power loss");
    return ok();
  }

  // `err` is what the kernel says for a descriptor opened read-only: EBADF for pwrite and
  // fallocate, EINVAL for ftruncate.
  Result<void> check_writable(const char* what, int err = EBADF) const {
    TRY(check_live(what));
    if (!writable_) return Error::from_errno(err, std::string(what) + " " + path_);
    return ok();
  }

  // As the kernel: an end past the largest file is EFBIG.
  Result<void> check_range(uint64_t offset, uint64_t len, const char* what) const {
    if (offset > kFileSizeBytesMax || len > kFileSizeBytesMax - offset)
      return Error::from_errno(EFBIG, std::string(what) + " " + path_);
    return ok();
  }

  Result<void> zero(const char* what, uint64_t offset, uint64_t len) {
    std::lock_guard lock(state_->mu);
    TRY(check_writable(what));
    // fallocate(2) refuses an empty range.
    if (len == 0) return Error::from_errno(EINVAL, std::string(what) + " " + path_);
    TRY(check_range(offset, len, what));
    // FALLOC_FL_KEEP_SIZE: nothing past the end changes.
    Contents& c = node_->current;
    zero_bytes(c, std::min(offset, c.size_bytes), std::min(offset + len, c.size_bytes));
    return ok();
  }

  const std::shared_ptr<State> state_;
  const std::shared_ptr<Node> node_;
  const std::string path_;
  const uint64_t generation_;
  const bool writable_;
};

MemEnv::MemEnv() : state_(std::make_shared<State>()) {}
MemEnv::~MemEnv() = default;

Result<std::unique_ptr<File>> MemEnv::open(const std::string& path, OpenMode mode) {
  auto parts = TRY_CTX(split_path(path), "open");
  std::lock_guard lock(state_->mu);
  std::shared_ptr<Node> node = TRY_CTX(lookup(state_->root, parts, path), "open");
  if (node && node->is_dir) {
    // As PosixEnv: a directory opens read-only (then is refused), not read-write.
    if (mode == OpenMode::ReadOnly)
      return Error::invalid(path + ": not a regular file or block device");
    return Error::from_errno(EISDIR, "open " + path);
  }
  if (!node) {
    if (mode != OpenMode::CreateOrOpen) return Error::from_errno(ENOENT, "open " + path);
    Node* dir = TRY_CTX(parent_dir(*state_->root, parts, path), "open");
    node = std::make_shared<Node>(/*dir=*/false);
    dir->entries.emplace(parts.back(), node);
  }
  return std::unique_ptr<File>(
      new MemFile(state_, std::move(node), path, state_->generation, mode != OpenMode::ReadOnly));
}

Result<bool> MemEnv::exists(const std::string& path) {
  auto parts = TRY_CTX(split_path(path), "stat");
  std::lock_guard lock(state_->mu);
  auto node = lookup(state_->root, parts, path);
  // As stat(2): a missing directory on the way is "does not exist", a file on the way
  // is an error (ENOTDIR).
  if (!node) {
    if (node.error().code == ENOENT) return false;
    return std::move(node).error().context("stat");
  }
  return *node != nullptr;
}

Result<void> MemEnv::rename(const std::string& from, const std::string& to) {
  const std::string what = "rename " + from + " to " + to;
  auto src_parts = TRY_CTX(split_path(from), what);
  auto dst_parts = TRY_CTX(split_path(to), what);
  if (src_parts.empty() || dst_parts.empty()) return Error::from_errno(EBUSY, what);
  std::lock_guard lock(state_->mu);
  Node* src_dir = TRY_CTX(parent_dir(*state_->root, src_parts, from), what);
  auto src = src_dir->entries.find(src_parts.back());
  if (src == src_dir->entries.end()) return Error::from_errno(ENOENT, what);
  Node* dst_dir = TRY_CTX(parent_dir(*state_->root, dst_parts, to), what);
  auto dst = dst_dir->entries.find(dst_parts.back());
  if (dst != dst_dir->entries.end()) {
    if (dst->second == src->second) return ok();  // the same inode: POSIX does nothing
    if (!src->second->is_dir && dst->second->is_dir) return Error::from_errno(EISDIR, what);
    if (src->second->is_dir && !dst->second->is_dir) return Error::from_errno(ENOTDIR, what);
    if (dst->second->is_dir && !dst->second->entries.empty())
      return Error::from_errno(ENOTEMPTY, what);
  }
  // A directory cannot move under itself.
  if (src->second->is_dir && is_prefix(src_parts, dst_parts))
    return Error::from_errno(EINVAL, what);
  std::shared_ptr<Node> node = src->second;
  src_dir->entries.erase(src);
  dst_dir->entries[dst_parts.back()] = std::move(node);
  return ok();
}

Result<void> MemEnv::remove(const std::string& path) {
  auto parts = TRY_CTX(split_path(path), "remove");
  if (parts.empty()) return Error::from_errno(EISDIR, "remove " + path);
  std::lock_guard lock(state_->mu);
  Node* dir = TRY_CTX(parent_dir(*state_->root, parts, path), "remove");
  auto it = dir->entries.find(parts.back());
  if (it == dir->entries.end()) return Error::from_errno(ENOENT, "remove " + path);
  // As unlink(2) on Linux.
  if (it->second->is_dir) return Error::from_errno(EISDIR, "remove " + path);
  dir->entries.erase(it);
  return ok();
}

Result<void> MemEnv::mkdir(const std::string& path) {
  auto parts = TRY_CTX(split_path(path), "mkdir");
  if (parts.empty()) return ok();  // the root
  std::lock_guard lock(state_->mu);
  Node* dir = TRY_CTX(parent_dir(*state_->root, parts, path), "mkdir");
  auto it = dir->entries.find(parts.back());
  if (it != dir->entries.end()) {
    if (it->second->is_dir) return ok();
    return Error::from_errno(EEXIST, "mkdir " + path);
  }
  dir->entries.emplace(parts.back(), state_->new_dir());
  return ok();
}

Result<void> MemEnv::sync_dir(const std::string& path) {
  auto parts = TRY_CTX(split_path(path), "fsync directory");
  std::lock_guard lock(state_->mu);
  auto node = TRY_CTX(lookup(state_->root, parts, path), "fsync directory");
  if (!node) return Error::from_errno(ENOENT, "open directory " + path);
  if (!node->is_dir) return Error::from_errno(ENOTDIR, "open directory " + path);
  node->durable_entries = node->entries;
  return ok();
}

Result<std::vector<std::string>> MemEnv::list_dir(const std::string& path) {
  auto parts = TRY_CTX(split_path(path), "open directory");
  std::lock_guard lock(state_->mu);
  auto node = TRY_CTX(lookup(state_->root, parts, path), "open directory");
  if (!node) return Error::from_errno(ENOENT, "open directory " + path);
  if (!node->is_dir) return Error::from_errno(ENOTDIR, "open directory " + path);
  std::vector<std::string> names;
  names.reserve(node->entries.size());
  for (const auto& [name, child] : node->entries) names.push_back(name);
  return names;
}

void MemEnv::drop_unsynced() {
  std::lock_guard lock(state_->mu);
  ++state_->generation;
  // Walk the durable tree from the root. An inode linked from two directories (a rename
  // across directories made durable on one side only) is met twice, and the durable
  // links can even form a cycle (directories moved into each other, one side synced),
  // hence the visited set. Whatever the walk does not reach is gone.
  std::set<Node*> visited;
  std::vector<Node*> todo{state_->root.get()};
  while (!todo.empty()) {
    Node* n = todo.back();
    todo.pop_back();
    if (!visited.insert(n).second) continue;
    if (!n->is_dir) {
      n->current = n->durable;
      continue;
    }
    n->entries = n->durable_entries;
    for (const auto& [name, child] : n->entries) todo.push_back(child.get());
  }
}

}  // namespace imgstream
