#include "patch/patcher.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "base/limits.h"
#include "base/log.h"
#include "base/output_check.h"
#include "base/stop.h"
#include "base/subprocess.h"
#include "device/file_device.h"
#include "disk/fs_probe.h"
#include "disk/partition_table.h"
#include "pack/pack_reader.h"
#include "pack/pack_source.h"
#include "pack/pack_tools.h"
#include "pack/pack_writer.h"
#include "patch/firstboot.h"
#include "patch/fstab.h"
#include "patch/overlay_device.h"
#include "patch/patch_journal.h"

namespace imgstream::patch {

namespace {

namespace stdfs = std::filesystem;

// The partition table and any GPT entry array lie in the first MiB.
constexpr uint64_t kTableHeadBytes = limits::kPartitionTableHeadBytes;
// A host directory tree given to --add: how deep it may go, how many files it may hold.
constexpr int kAddDepthMax = limits::kAddDepthMax;
constexpr size_t kAddFilesMax = limits::kAddFilesMax;
constexpr std::chrono::minutes kFsckTimeout = limits::kFsckTimeout;

// Where a file system lies in the image.
struct Located {
  unsigned number = 0;  // 0: the whole image (no partition table)
  uint64_t start = 0, length = 0;
  disk::FsInfo info;
  std::string name;  // "disk.img partition 2 (ext4)"
};

std::string base_name(const std::string& p) {
  return stdfs::path(p).filename().string();
}

Result<std::vector<Located>> find_filesystems(BlockDevice& dev, const std::string& image) {
  std::vector<std::byte> head(std::min<uint64_t>(kTableHeadBytes, dev.size()));
  TRY(dev.read(0, head));
  const auto table = disk::read_partition_table(head);
  std::vector<Located> out;
  if (table.kind == disk::TableKind::None) {
    out.push_back(Located{0, 0, dev.size(), {}, base_name(image)});
  } else {
    for (const auto& p : disk::usable_partitions(table, dev.size()))
      out.push_back(Located{p.number,
                            p.start(),
                            p.bytes(),
                            {},
                            base_name(image) + " partition " + std::to_string(p.number)});
  }
  std::vector<std::byte> probe;
  for (auto& l : out) {
    probe.resize(std::min<uint64_t>(disk::kFsProbeBytes, l.length));
    TRY(dev.read(l.start, probe));
    l.info = disk::probe_fs(probe);
    l.name += std::string(" (") + disk::fs_kind_name(l.info.kind) + ")";
  }
  return out;
}

// A file system imgstream may edit: ext, unmounted, nothing to replay, no known errors.
Result<void> refuse_unsafe(const Located& l) {
  const auto& s = l.info.ext;
  if (!disk::is_ext(l.info.kind))
    return Error{ENOTSUP, l.name + ": imgstream patches ext2/3/4 file systems only"};
  if (s.needs_recovery())
    return Error{EBUSY, l.name +
                            ": its journal needs recovery (mounted now, or not cleanly "
                            "unmounted): boot the image or run e2fsck -fy on it first"};
  if (!s.clean())
    return Error{EBUSY, l.name +
                            ": not cleanly unmounted (or mounted now): boot the image or "
                            "run e2fsck -fy on it first"};
  if (s.has_errors())
    return Error{EUCLEAN,
                 l.name + ": the kernel recorded errors in it: run e2fsck -fy on it first"};
  if (s.has_mmp())
    return Error{ENOTSUP, l.name +
                              ": multi-mount protection is on: imgstream does not patch "
                              "shared file systems"};
  return ok();
}

std::string found_list(const std::vector<Located>& all) {
  std::string s;
  for (const auto& l : all) s += (s.empty() ? "" : ", ") + l.name;
  return s.empty() ? "no partitions" : s;
}

// `edit`: refuse a file system that may not be edited (reading one is let through).
Result<Located> pick_root(BlockDevice& dev, const std::vector<Located>& all, unsigned partition,
                          const std::string& image, bool edit) {
  auto usable = [&](const Located& l) -> Result<void> {
    if (edit) return refuse_unsafe(l);
    if (!disk::is_ext(l.info.kind))
      return Error{ENOTSUP, l.name + ": imgstream reads ext2/3/4 file systems only"};
    return ok();
  };
  if (partition != 0) {
    for (const auto& l : all)
      if (l.number == partition) {
        TRY(usable(l));
        return l;
      }
    return Error{ENOENT, image + " has no usable partition " + std::to_string(partition) +
                             " (found: " + found_list(all) + ")"};
  }
  for (const auto& l : all) {
    if (!disk::is_ext(l.info.kind)) continue;
    auto fs = ExtFs::open(dev, l.start, l.length, false, l.name);
    if (!fs) continue;
    auto etc = (*fs)->stat("/etc");
    if (etc && etc->type == FileType::Directory) {
      TRY(usable(l));
      return l;
    }
  }
  bool other = false;
  for (const auto& l : all)
    other |= l.info.kind != disk::FsKind::Unknown && !disk::is_ext(l.info.kind);
  return Error{ENOENT, image + ": no root file system (no ext2/3/4 file system holds /etc; " +
                           (other ? "imgstream patches ext2/3/4 only; " : "") +
                           "found: " + found_list(all) + ")"};
}

// /boot's partition, as the root's /etc/fstab names it; nullopt when /boot is not a file
// system of its own. An fstab entry no partition matches is an error only when used.
Result<std::optional<Located>> find_boot(ExtFs& root, const std::vector<Located>& all,
                                         const Located& root_at, std::string& unmatched) {
  auto has = TRY(root.exists("/etc/fstab"));
  if (!has) return std::optional<Located>{};
  const auto bytes = TRY(root.read_file("/etc/fstab", 1 << 20));
  const auto entries =
      parse_fstab(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  for (const auto& e : entries) {
    if (e.dir != "/boot") continue;
    const auto ref = parse_device_ref(e.spec);
    for (const auto& l : all) {
      if (l.number == root_at.number || !disk::is_ext(l.info.kind)) continue;
      const bool match =
          (ref.kind == DeviceRef::Kind::Uuid && l.info.ext.uuid_text() == ref.value) ||
          (ref.kind == DeviceRef::Kind::Label && l.info.ext.label == ref.value) ||
          (ref.kind == DeviceRef::Kind::Partition && l.number == ref.partition);
      if (match) return std::optional<Located>(l);
    }
    unmatched = e.spec;
  }
  return std::optional<Located>{};
}

}  // namespace

// The file systems being read or edited, and which guest paths go to which.
struct Guest {
  std::unique_ptr<FileDevice> dev;
  std::unique_ptr<OverlayDevice> overlay;  // editing: the writes go here
  Located root_at;
  std::optional<Located> boot_at;
  std::string boot_unmatched;  // an fstab /boot entry that names no partition
  std::unique_ptr<ExtFs> root, boot;
  std::string image;
  bool recovered = false;  // an interrupted patch's committed journal was finished first

  static bool under_boot(std::string_view p) {
    return p == "/boot" || p == "/boot/" || p.starts_with("/boot/");
  }
  // The file system and path inside it of a guest path.
  Result<std::pair<ExtFs*, std::string>> route(std::string_view p) {
    if (!under_boot(p) || !boot_at) {
      if (under_boot(p) && !boot_unmatched.empty())
        return Error{ENOENT, image + ": the root's /etc/fstab mounts /boot from " + boot_unmatched +
                                 ", which no partition of the image matches"};
      return std::pair{root.get(), std::string(p)};
    }
    std::string rest(p.substr(5));
    return std::pair{boot.get(), rest.empty() ? std::string("/") : rest};
  }
};

namespace {

// `shown`: the name messages give the image (the pack, for a pack's scratch image).
Result<std::unique_ptr<Guest>> open_guest(Env& env, const std::string& image,
                                          const std::string& shown, unsigned partition, bool edit,
                                          bool exclusive) {
  auto g = std::make_unique<Guest>();
  g->image = image;
  g->dev = TRY(FileDevice::open(env, image, exclusive ? Access::ReadWrite : Access::ReadOnly,
                                exclusive ? ImageUse::Exclusive : ImageUse::ReadStable));
  if (exclusive) {
    // What an interrupted patch left is finished (or discarded) under the same lock as
    // the patch that follows, before anything is read.
    auto info = TRY(recover_journal(env, journal_path(image), g->dev->file(), g->dev->size()));
    g->recovered = info.state == JournalState::Committed;
  }
  const auto all = TRY(find_filesystems(*g->dev, shown));
  g->root_at = TRY(pick_root(*g->dev, all, partition, shown, edit));
  BlockDevice* below = g->dev.get();
  if (edit) {
    g->overlay = std::make_unique<OverlayDevice>(*g->dev);
    below = g->overlay.get();
  }
  g->root = TRY(ExtFs::open(*below, g->root_at.start, g->root_at.length, edit, g->root_at.name));
  if (partition == 0) {
    g->boot_at = TRY(find_boot(*g->root, all, g->root_at, g->boot_unmatched));
    if (g->boot_at) {
      if (edit) TRY(refuse_unsafe(*g->boot_at));
      g->boot =
          TRY(ExtFs::open(*below, g->boot_at->start, g->boot_at->length, edit, g->boot_at->name));
    }
  }
  return g;
}

// ---- actions ----

Result<std::vector<std::byte>> read_host_file(Env& env, const std::string& path) {
  auto f = TRY(env.open(path, OpenMode::ReadOnly));
  const uint64_t size = TRY(f->size());
  if (size > kOverlayBytesMax)
    return Error{EFBIG, path + " is larger than a patch may be (" +
                            std::to_string(kOverlayBytesMax >> 20) + " MiB)"};
  std::vector<std::byte> b(size);
  TRY(read_exact_at(*f, 0, b));
  return b;
}

Result<uint32_t> host_mode(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return Error::from_errno(errno, path);
  return uint32_t(st.st_mode);
}

// cp -r of a host path to a guest path; an existing guest directory receives it inside.
Result<void> add_tree(Env& env, ExtFs& fs, const std::string& host, const std::string& guest,
                      const std::optional<Attr>& attr, int depth, size_t& files) {
  if (stop_requested()) return Error{ECANCELED, "stopped"};
  if (depth > kAddDepthMax || ++files > kAddFilesMax)
    return Error{E2BIG, host + ": a tree deeper than 64 levels or of more than 2^20 files"};
  const uint32_t mode = TRY(host_mode(host));
  const Attr a = attr.value_or(Attr{mode & 07777, 0, 0});
  if (S_ISLNK(mode)) {
    std::error_code ec;
    const auto target = stdfs::read_symlink(host, ec);
    if (ec) return Error{ec.value(), host + ": " + ec.message()};
    return fs.symlink(target.string(), guest);
  }
  if (S_ISREG(mode)) return fs.write_file(guest, TRY(read_host_file(env, host)), a);
  if (!S_ISDIR(mode)) return Error{EINVAL, host + " is not a regular file, directory or symlink"};
  TRY(fs.make_dirs(guest, a));
  for (const std::string& name : TRY(env.list_dir(host))) {
    if (name == "." || name == "..") continue;
    TRY(add_tree(env, fs, host + "/" + name, guest + (guest == "/" ? "" : "/") + name, attr,
                 depth + 1, files));
  }
  return ok();
}

// mkdir -p of the directory that will hold `path` (the issue: "parents made as needed").
Result<void> make_parents(ExtFs& fs, const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == 0 || slash == std::string::npos) return ok();
  return fs.make_dirs(path.substr(0, slash), Attr{0755, 0, 0});
}

Result<void> run_add(Env& env, Guest& g, const Action& a) {
  auto [fs, path] = TRY(g.route(a.guest));
  TRY(make_parents(*fs, path));
  // As cp and virt-customize --upload: into an existing directory, under the host's name.
  auto st = fs->stat(path);
  if (st && st->type == FileType::Directory && !S_ISDIR(TRY(host_mode(a.host))))
    path += (path.back() == '/' ? "" : "/") + base_name(a.host);
  size_t files = 0;
  return add_tree(env, *fs, a.host, path, a.attr, 0, files);
}

Result<void> run_action(Env& env, Guest& g, const Action& a,
                        std::vector<FirstbootScript>& firstboot) {
  using K = Action::Kind;
  if (a.kind == K::Firstboot) {
    firstboot.push_back(FirstbootScript{base_name(a.host), TRY(read_host_file(env, a.host))});
    return ok();
  }
  if (a.kind == K::Add) return run_add(env, g, a);
  auto [fs, path] = TRY(g.route(a.guest));
  if (a.kind == K::Symlink || a.kind == K::Write) TRY(make_parents(*fs, path));
  switch (a.kind) {
    case K::Mkdir: return fs->make_dirs(path, Attr{0755, 0, 0});
    case K::Delete: return fs->remove(path);
    case K::Symlink: return fs->symlink(a.text, path);
    case K::Write: {
      auto old = fs->stat(path);
      const Attr attr = old ? Attr{old->mode & 07777, old->uid, old->gid} : Attr{0644, 0, 0};
      return fs->write_file(path, std::as_bytes(std::span(a.text)), attr);
    }
    default: return ok();
  }
}

// ---- the check ----

std::string first_lines(const std::string& s, size_t n) {
  size_t at = 0;
  for (size_t i = 0; i < n && at != std::string::npos; ++i) at = s.find('\n', at + 1);
  std::string out = s.substr(0, at);
  for (char& c : out)
    if (c == '\n') c = ' ';
  return out;
}

// Where the metadata copy goes: /dev/shm when it is there (a tmpfs: removing the copy
// from a disk file system mounted with `discard` took 5 s here, the check itself 1 s),
// else $TMPDIR, else beside the image.
std::string check_dir(const std::string& image) {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): read once, on the one thread a patch runs on
  for (const char* d : std::initializer_list<const char*>{"/dev/shm", std::getenv("TMPDIR")})
    if (d && ::access(d, W_OK | X_OK) == 0) return d;
  return parent_dir(image);
}

// e2fsck -fn of the patched file system: a metadata copy of the original (e2image -r,
// sparse, beside the image), the overlay's pages of that range written into it.
// A patch killed (kill -9) during its check leaves its copy behind, named with its pid:
// the next check of the same image removes those whose process is gone.
void remove_stale_checks(const std::string& dir, const std::string& prefix) {
  std::error_code ec;
  for (const auto& e : stdfs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (!name.starts_with(prefix)) continue;
    const std::string pid = name.substr(prefix.size());
    if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) continue;
    if (::kill(std::stoi(pid), 0) != 0 && errno == ESRCH) stdfs::remove(e.path(), ec);
  }
}

Result<void> fsck_patched(Env& env, const std::string& image, const Located& l,
                          const std::vector<OverlayDevice::Run>& runs) {
  const std::string dir = check_dir(image), prefix = "." + base_name(image) + ".imgstream-check-";
  remove_stale_checks(dir, prefix);
  TempFile tmp(dir + "/" + prefix + std::to_string(::getpid()));
  auto img = TRY(run_program({"e2image", "-r", "-o", std::to_string(l.start), image, tmp.path()},
                             kFsckTimeout));
  if (img.exit_code != 0)
    return Error{EIO, "e2image of " + l.name + " failed: " + first_lines(img.output, 3)};
  {
    auto f = TRY(env.open(tmp.path(), OpenMode::ReadWrite));
    for (const auto& r : runs) {
      const uint64_t end = r.offset + r.bytes.size();
      if (end <= l.start || r.offset >= l.start + l.length) continue;
      const uint64_t from = std::max(r.offset, l.start), to = std::min(end, l.start + l.length);
      TRY(write_all_at(*f, from - l.start, std::span(r.bytes).subspan(from - r.offset, to - from)));
    }
  }
  auto ck = TRY(run_program({"e2fsck", "-fn", tmp.path()}, kFsckTimeout));
  if (ck.exit_code != 0)
    return Error{EUCLEAN, l.name + ": the patched file system fails e2fsck -fn (exit " +
                              std::to_string(ck.exit_code) +
                              "), so nothing was written: " + first_lines(ck.output, 6)};
  return ok();
}

// ---- writing the result ----

// A loop device backed by the image means something may have it mounted.
Result<void> refuse_loop_attached(const std::string& image) {
  std::error_code ec;
  const auto real = stdfs::canonical(image, ec);
  if (ec) return ok();
  for (const auto& e : stdfs::directory_iterator("/sys/block", ec)) {
    std::ifstream in(e.path() / "loop/backing_file");
    std::string backing;
    if (in && std::getline(in, backing) && backing == real.string())
      return Error{EBUSY, image + " is attached to /dev/" + e.path().filename().string() +
                              " (losetup): detach it (losetup -d) before patching it"};
  }
  return ok();
}

// Copies [at, end) of a data extent: in the kernel when it can (copy_file_range: no
// copy through user space, and a file system with reflinks shares the blocks), else
// through a buffer.
Result<void> copy_range(File& in, File& out, uint64_t at, uint64_t end,
                        std::vector<std::byte>& buf) {
  while (at < end && in.fd() >= 0 && out.fd() >= 0) {
    loff_t src = loff_t(at), dst = loff_t(at);
    const ssize_t n = ::copy_file_range(in.fd(), &src, out.fd(), &dst, size_t(end - at), 0);
    if (n > 0) {
      at += uint64_t(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    break;  // EXDEV, ENOSYS, EINVAL...: the buffered copy below
  }
  while (at < end) {
    const size_t n = size_t(std::min<uint64_t>(buf.size(), end - at));
    TRY(read_exact_at(in, at, std::span(buf).first(n)));
    TRY(write_all_at(out, at, std::span(buf).first(n)));
    at += n;
  }
  return ok();
}

Result<void> copy_sparse(File& in, File& out, uint64_t size) {
  std::vector<std::byte> buf(4 << 20);
  TRY(out.truncate(size));
  uint64_t at = 0;
  while (at < size) {
    if (stop_requested()) return Error{ECANCELED, "stopped"};
    auto data = in.seek_data(at);
    if (!data) break;  // ENXIO: only a hole is left
    at = *data;
    const uint64_t hole = std::min(TRY(in.seek_hole(at)), size);
    // In pieces of at most 64 MiB, so that a stop request is seen within one.
    for (uint64_t end = at; at < hole; at = end) {
      end = std::min(hole, at + (uint64_t(64) << 20));
      TRY(copy_range(in, out, at, end, buf));
    }
  }
  return ok();
}

Result<void> write_output(Env& env, Guest& g, const std::string& output,
                          const std::vector<OverlayDevice::Run>& runs) {
  TempFile tmp(output + ".tmp");
  {
    auto out = TRY(env.open(tmp.path(), OpenMode::CreateOrOpen));
    TRY(copy_sparse(g.dev->file(), *out, g.dev->size()));
    for (const auto& r : runs) TRY(write_all_at(*out, r.offset, r.bytes));
    TRY(out->sync());
  }
  TRY(env.rename(tmp.path(), output));
  tmp.keep();
  return env.sync_dir(parent_dir(output));
}

Result<void> write_in_place(Env& env, Guest& g, const std::vector<OverlayDevice::Run>& runs) {
  const std::string journal = journal_path(g.image);
  TRY(write_journal(env, journal, g.dev->size(), runs));
  auto done = TRY(apply_journal(env, journal, g.dev->file(), g.dev->size()));
  if (done.state != JournalState::Committed)
    return Error{EIO, journal + " was not read back as written: " + done.why};
  return ok();
}

// The scratch image of a pack's patch is ours alone: its pages go straight in.
Result<void> write_scratch(Guest& g, const std::vector<OverlayDevice::Run>& runs) {
  for (const auto& r : runs) TRY(write_all_at(g.dev->file(), r.offset, r.bytes));
  return g.dev->file().sync();
}

Result<void> check_inputs(Env& env, const PatchOptions& o) {
  if (o.actions.empty()) return Error{EINVAL, "nothing to do: give at least one action"};
  for (const auto& a : o.actions) {
    if (a.kind != Action::Kind::Add && a.kind != Action::Kind::Firstboot) continue;
    if (!TRY(env.exists(a.host))) return Error{ENOENT, a.host + " does not exist"};
  }
  if (o.output.empty()) return ok();
  const Overwrite ow = o.force ? Overwrite::Force : Overwrite::SameKind;
  if (o.output.ends_with(".pack")) return check_output(o.output, {o.image}, pack::kPackOutput, ow);
  return check_output(o.output, {o.image}, pack::kRawImageOutput, ow);
}

}  // namespace

Result<Action> parse_action(Action::Kind kind, std::string_view arg) {
  using K = Action::Kind;
  Action a;
  a.kind = kind;
  const std::string s(arg);
  auto need_guest = [&](const std::string& p) -> Result<void> {
    if (p.empty() || p[0] != '/')
      return Error{EINVAL, "'" + s + "': the guest path must be absolute (start with /)"};
    return ok();
  };
  switch (kind) {
    case K::Mkdir:
    case K::Delete:
      a.guest = s;
      TRY(need_guest(a.guest));
      return a;
    case K::Firstboot:
      if (s.empty()) return Error{EINVAL, "--firstboot needs a script"};
      a.host = s;
      return a;
    case K::Write: {
      const size_t c = s.find(':');
      if (c == std::string::npos) return Error{EINVAL, "'" + s + "': expected GUEST_PATH:TEXT"};
      a.guest = s.substr(0, c);
      a.text = s.substr(c + 1);
      TRY(need_guest(a.guest));
      return a;
    }
    case K::Symlink: {
      const size_t c = s.rfind(":/");
      if (c == std::string::npos || c == 0)
        return Error{EINVAL, "'" + s + "': expected TARGET:GUEST_PATH"};
      a.text = s.substr(0, c);
      a.guest = s.substr(c + 1);
      return a;
    }
    case K::Add: break;
  }
  const size_t c = s.find(":/");
  if (c == std::string::npos || c == 0)
    return Error{EINVAL, "'" + s + "': expected HOST_PATH:GUEST_PATH[:MODE[:UID:GID]]"};
  a.host = s.substr(0, c);
  std::string rest = s.substr(c + 1);
  const size_t m = rest.find(':');
  a.guest = rest.substr(0, m);
  if (m == std::string::npos) return a;
  unsigned mode = 0, uid = 0, gid = 0;
  char extra = 0;
  const std::string tail = rest.substr(m + 1);
  const int got = std::sscanf(tail.c_str(), "%o:%u:%u%c", &mode, &uid, &gid, &extra);
  if ((got != 1 && got != 3) || mode > 07777 || (got == 1 && tail.find(':') != std::string::npos))
    return Error{EINVAL, "'" + s + "': MODE is octal (0644), UID and GID numbers"};
  a.attr = Attr{mode, uid, gid};
  return a;
}

Result<std::string> recover_patch(Env& env, const std::string& image) {
  auto dev = TRY(FileDevice::open(env, image, Access::ReadWrite, ImageUse::Exclusive));
  const auto info = TRY(recover_journal(env, journal_path(image), dev->file(), dev->size()));
  switch (info.state) {
    case JournalState::Absent: return std::string(image + ": no unfinished patch");
    case JournalState::Incomplete:
      return image + ": an unfinished patch was discarded (" + info.why +
             "); the image is as it was before it";
    case JournalState::Committed:
      return image + ": an interrupted patch was finished (" + std::to_string(info.bytes) +
             " bytes written again)";
  }
  return std::string();
}

namespace {

// Runs the actions into the overlay, closes the file systems, checks the result. Returns
// the changed pages.
Result<std::vector<OverlayDevice::Run>> build_patch(Env& env, Guest& g, const PatchOptions& o,
                                                    PatchReport& report) {
  report.root = g.root_at.name;
  std::vector<FirstbootScript> firstboot;
  bool touched_boot = false;
  for (const auto& a : o.actions) {
    if (stop_requested()) return Error{ECANCELED, "stopped: nothing was written"};
    touched_boot |= g.boot && a.kind != Action::Kind::Firstboot && Guest::under_boot(a.guest);
    auto r = run_action(env, g, a, firstboot);
    if (!r) return std::move(r).error().context("nothing was written");
  }
  if (!firstboot.empty()) {
    auto hook = install_firstboot(*g.root, firstboot);
    if (!hook) return std::move(hook).error().context("nothing was written");
    report.firstboot_hook = hook_name(*hook);
  }
  TRY(g.root->close());
  g.root.reset();
  if (g.boot) {
    TRY(g.boot->close());
    g.boot.reset();
    if (touched_boot) report.boot = g.boot_at->name;
  }
  TRY(g.overlay->drop_unchanged());
  auto runs = g.overlay->dirty_runs();
  report.changed_bytes = g.overlay->dirty_bytes();
  report.runs = runs.size();
  if (o.check) {
    TRY(fsck_patched(env, g.image, g.root_at, runs));
    if (!report.boot.empty()) TRY(fsck_patched(env, g.image, *g.boot_at, runs));
  }
  if (stop_requested()) return Error{ECANCELED, "stopped: nothing was written"};
  return runs;
}

void say(const PatchOptions& o, const std::string& what) {
  if (o.phase) o.phase(what);
}

// PACK -o OUT.pack|OUT.img: unpack to a scratch image beside the output, patch it there,
// then pack it on the input as its base (only changed chunks are stored) or keep it.
Result<PatchReport> patch_pack(Env& env, const PatchOptions& o) {
  if (o.output.empty())
    return Error{EINVAL, o.image +
                             " is a pack: a pack is never changed; give -o OUT.pack "
                             "(a delta pack on it) or -o OUT.img"};
  auto input = TRY(pack::Pack::open(env, o.image));
  PatchReport report;
  const std::string scratch = o.output + ".imgstream-scratch";
  TempFile scratch_file(scratch);
  say(o, "unpacking " + o.image);
  pack::UnpackOptions u;
  u.output = scratch;
  u.overwrite = Overwrite::Force;
  TRY(pack::unpack(env, *input, u));
  {
    auto g = TRY(open_guest(env, scratch, o.image, o.partition, true, true));
    const auto runs = TRY(build_patch(env, *g, o, report));
    TRY(write_scratch(*g, runs));
  }
  if (!o.output.ends_with(".pack")) {
    TRY(env.rename(scratch, o.output));
    scratch_file.keep();
    TRY(env.sync_dir(parent_dir(o.output)));
    return report;
  }
  say(o, "packing the changed chunks on " + o.image);
  pack::PackWriteOptions w;
  w.image = scratch;
  w.output = o.output;
  w.base = o.image;
  w.chunk_size = input->header().chunk_size;
  input.reset();
  const auto packed = TRY(pack::write_pack(env, w));
  report.pack_new_chunks = packed.stored_chunks;
  report.pack_file_bytes = packed.file_bytes;
  return report;
}

}  // namespace

Result<PatchReport> run_patch(Env& env, const PatchOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  TRY(check_inputs(env, o));
  if (pack::is_pack_source(o.image)) {
    auto report = TRY(patch_pack(env, o));
    report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return report;
  }
  const bool in_place = o.output.empty();
  if (o.output.ends_with(".pack"))
    return Error{EINVAL, o.output + ": a delta pack needs a pack as input (pack the image first)"};
  PatchReport report;
  if (in_place) TRY(refuse_loop_attached(o.image));
  auto g = TRY(open_guest(env, o.image, o.image, o.partition, true, in_place));
  report.recovered = g->recovered;
  const auto runs = TRY(build_patch(env, *g, o, report));
  if (in_place)
    TRY(write_in_place(env, *g, runs));
  else
    TRY(write_output(env, *g, o.output, runs));
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

// ---- ImageFs ----

ImageFs::ImageFs(std::unique_ptr<Guest> g) : g_(std::move(g)) {}
ImageFs::ImageFs(ImageFs&&) noexcept = default;
ImageFs& ImageFs::operator=(ImageFs&&) noexcept = default;
ImageFs::~ImageFs() = default;

Result<ImageFs> ImageFs::open(Env& env, const std::string& image, unsigned partition) {
  return ImageFs(TRY(open_guest(env, image, image, partition, false, false)));
}

Result<std::vector<DirEntry>> ImageFs::list(std::string_view path) {
  auto [fs, p] = TRY(g_->route(path));
  return fs->list(p);
}

Result<Stat> ImageFs::lstat(std::string_view path) {
  auto [fs, p] = TRY(g_->route(path));
  return fs->lstat(p);
}

Result<std::vector<std::byte>> ImageFs::read_file(std::string_view path) {
  auto [fs, p] = TRY(g_->route(path));
  return fs->read_file(p);
}

std::string ImageFs::describe() const {
  std::string s = "root: " + g_->root_at.name;
  if (g_->boot_at) s += ", /boot: " + g_->boot_at->name;
  return s;
}

}  // namespace imgstream::patch
