// `imgstream patch`: edits the ext2/3/4 file systems of a dormant disk image directly
// (libext2fs through patch/ext_fs.h), with no mount and no appliance VM.
//
// The flow (docs/patch.md): lock the image (nobody else may even read it while it is
// patched in place), finish an earlier patch a crash cut short (patch_journal.h), find
// the root file system (the ext file system holding /etc, or --partition N) and /boot
// through the root's /etc/fstab, refuse what must not be touched (a dirty journal, a
// file system in use, not ext), run every action into an in-memory overlay, close the
// file systems, check the result with e2fsck -fn, and only then write it: in place
// through the journal, or to -o OUT as a new image (written aside, renamed).
//
// A pack input is unpacked to a scratch image beside the output first, patched there,
// and written as OUT.img, or as OUT.pack: a delta pack whose base is the input, which
// stores only the chunks the patch changed (a machine streaming the input moves to it
// by fetching those alone).
//
// Not thread-safe: one patch runs on one thread.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/env.h"
#include "base/result.h"
#include "patch/ext_fs.h"

namespace imgstream::patch {

struct Action {
  enum class Kind { Add, Mkdir, Delete, Symlink, Write, Firstboot };
  Kind kind = Kind::Add;
  std::string host;          // Add, Firstboot: the host path
  std::string guest;         // every kind but Firstboot
  std::string text;          // Write: the text; Symlink: the link's target
  std::optional<Attr> attr;  // Add: MODE[:UID:GID] (else the host's mode, root's owner)
};

// Parses one command-line action: Add "HOST:GUEST[:MODE[:UID:GID]]", Mkdir and Delete
// "GUEST", Symlink "TARGET:GUEST", Write "GUEST:TEXT", Firstboot "SCRIPT".
Result<Action> parse_action(Action::Kind kind, std::string_view arg);

struct PatchOptions {
  std::string image;       // a raw image, or a pack (NAME.pack: then -o is required)
  std::string output;      // empty: in place; NAME.pack: a delta pack on the input pack
  unsigned partition = 0;  // 0: the file system holding /etc
  std::vector<Action> actions;
  bool check = true;   // e2fsck -fn of the result before it is written
  bool force = false;  // -o may replace an existing file that is not of its kind
  // Called with what the patch is doing, for a progress line ("unpacking", "packing").
  std::function<void(const std::string&)> phase;
};

struct PatchReport {
  std::string root;            // "disk.img partition 2 (ext4)"
  std::string boot;            // the same for /boot when it was edited
  std::string firstboot_hook;  // when --firstboot was given
  uint64_t changed_bytes = 0;  // what the image gained in changed pages
  uint64_t runs = 0;
  bool recovered = false;        // an earlier, interrupted patch was finished first
  uint64_t pack_new_chunks = 0;  // a delta pack: the chunks it stores (the rest are the base's)
  uint64_t pack_file_bytes = 0;
  double seconds = 0;
};

Result<PatchReport> run_patch(Env& env, const PatchOptions& o);

// Finishes (or discards) what a crash left beside IMAGE; says what it did.
Result<std::string> recover_patch(Env& env, const std::string& image);

// The file systems of an image opened read-only, for `imgstream ls` and `cat`: the root
// (or --partition N) and, through its /etc/fstab, /boot when it is a partition of its own.
// Guest paths under /boot go to the latter.
struct Guest;
class ImageFs {
 public:
  static Result<ImageFs> open(Env& env, const std::string& image, unsigned partition);
  ImageFs(ImageFs&&) noexcept;
  ImageFs& operator=(ImageFs&&) noexcept;
  ~ImageFs();

  Result<std::vector<DirEntry>> list(std::string_view path);
  Result<Stat> lstat(std::string_view path);
  Result<std::vector<std::byte>> read_file(std::string_view path);
  std::string describe() const;  // which file systems, where

 private:
  explicit ImageFs(std::unique_ptr<Guest> g);
  std::unique_ptr<Guest> g_;
};

}  // namespace imgstream::patch
