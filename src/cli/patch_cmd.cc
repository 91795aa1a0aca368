// imgstream patch IMAGE ACTION...: edit a dormant image's file systems (patch/patcher.h).
// imgstream ls IMAGE PATH, imgstream cat IMAGE PATH: read them.
#include <fmt/format.h>

#include <cstdio>
#include <memory>

#include "base/log.h"
#include "base/units.h"
#include "cli/cli.h"
#include "patch/patcher.h"

namespace imgstream::cli {

namespace {

struct PatchArgs {
  patch::PatchOptions o;
  bool no_check = false;
  bool recover = false;
  std::string bad_action;  // the first action that did not parse
};

// Actions run in the order given, across options: each is recorded as CLI11 meets it.
void add_action(CLI::App* cmd, PatchArgs& a, const char* flag, patch::Action::Kind kind,
                const char* type, const char* help) {
  cmd->add_option_function<std::string>(
         flag,
         [&a, kind](const std::string& v) {
           auto r = patch::parse_action(kind, v);
           if (r)
             a.o.actions.push_back(std::move(*r));
           else if (a.bad_action.empty())
             a.bad_action = r.error().message;
         },
         help)
      ->type_name(type)
      ->trigger_on_parse()
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
}

int run_patch_cmd(PatchArgs& a) {
  if (!a.bad_action.empty()) {
    print_error(a.bad_action);
    return kExitUsage;
  }
  if (a.recover) {
    auto r = patch::recover_patch(*Env::posix(), a.o.image);
    if (!r) {
      print_error(r.error().message);
      return kExitFailure;
    }
    std::printf("%s\n", r->c_str());
    return kExitOk;
  }
  a.o.check = !a.no_check;
  a.o.phase = [](const std::string& what) { LOG_INFO("patch: {}", what); };
  auto r = patch::run_patch(*Env::posix(), a.o);
  if (!r) {
    print_error(r.error().message);
    return kExitFailure;
  }
  if (r->recovered) std::printf("finished an interrupted earlier patch first\n");
  std::printf("patched %s%s%s: %s changed in %llu runs, %.3f s%s\n", r->root.c_str(),
              r->boot.empty() ? "" : " and ", r->boot.c_str(),
              format_size(r->changed_bytes).c_str(), (unsigned long long)r->runs, r->seconds,
              a.o.output.empty() ? "" : (" -> " + a.o.output).c_str());
  if (r->pack_file_bytes > 0)
    std::printf("delta pack %s: %llu new chunks, %s (the rest is %s's)\n", a.o.output.c_str(),
                (unsigned long long)r->pack_new_chunks, format_size(r->pack_file_bytes).c_str(),
                a.o.image.c_str());
  if (!r->firstboot_hook.empty())
    std::printf("first-boot scripts run once at the next boot (%s)\n", r->firstboot_hook.c_str());
  return kExitOk;
}

std::string type_letter(patch::FileType t) {
  switch (t) {
    case patch::FileType::Regular: return "-";
    case patch::FileType::Directory: return "d";
    case patch::FileType::Symlink: return "l";
    default: return "?";
  }
}

// Opens IMAGE's file systems read-only and runs `read` on them: ls and cat.
template <typename Read>
int read_image(const std::string& image, unsigned partition, Read read) {
  auto fs = patch::ImageFs::open(*Env::posix(), image, partition);
  if (!fs) {
    print_error(fs.error().message);
    return kExitFailure;
  }
  auto r = read(*fs);
  if (!r) {
    print_error(r.error().message);
    return kExitFailure;
  }
  return kExitOk;
}

}  // namespace

Runner add_patch(CLI::App& app) {
  auto a = std::make_shared<PatchArgs>();
  auto* cmd = app.add_subcommand(
      "patch",
      "Edit the ext2/3/4 file systems of a dormant disk image in place (or into -o OUT), with\n"
      "no mount and no VM. The root is the file system holding /etc (or --partition N);\n"
      "/boot on a partition of its own is found through the root's /etc/fstab. Actions run\n"
      "in the order given. The result is checked with e2fsck -fn before anything is\n"
      "written; in place it goes through a journal beside the image, so that a crash at\n"
      "any moment leaves the image as it was or fully patched.\n\n"
      "Examples:\n"
      "  imgstream patch golden.img --add fix.conf:/etc/app/fix.conf:0644 \\\n"
      "                             --firstboot ./restart-app.sh\n"
      "  imgstream patch golden.img -o golden-2.img --write /etc/motd:'patched\\n'\n"
      "  imgstream patch golden.pack -o golden-2.pack --add fix.conf:/etc/app/fix.conf\n"
      "  imgstream patch golden.img --recover      # after a crash, without a new patch");
  cmd->add_option("IMAGE", a->o.image,
                  "The raw disk image (or a file system image), or a pack (then -o is needed)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("-o,--output", a->o.output,
                  "Write the patched image here instead of patching IMAGE in place; for a pack\n"
                  "input, OUT.pack is a delta pack on it holding only the changed chunks");
  cmd->add_option("--partition", a->o.partition,
                  "Edit partition N (1-based, as Linux names them) instead of the root");
  add_action(cmd, *a, "--add", patch::Action::Kind::Add, "HOST:GUEST[:MODE[:UID:GID]]",
             "Copy a host file or directory tree (recursively) into the image; parents are made");
  add_action(cmd, *a, "--mkdir", patch::Action::Kind::Mkdir, "GUEST_DIR", "mkdir -p in the image");
  add_action(cmd, *a, "--delete", patch::Action::Kind::Delete, "GUEST_PATH",
             "Remove a file, symlink or directory tree");
  add_action(cmd, *a, "--symlink", patch::Action::Kind::Symlink, "TARGET:GUEST_PATH",
             "Make a symlink");
  add_action(cmd, *a, "--write", patch::Action::Kind::Write, "GUEST_PATH:TEXT",
             "Write TEXT into a file (created 0644 root:root, or keeping its mode and owner)");
  add_action(cmd, *a, "--firstboot", patch::Action::Kind::Firstboot, "SCRIPT",
             "Run SCRIPT once at the next boot (a systemd unit, or inittab / rc.local); "
             "several run in the order given");
  cmd->add_flag("--no-check", a->no_check, "Skip the e2fsck -fn of the result (not advised)");
  cmd->add_flag("--force", a->o.force,
                "Let -o replace an existing file (a raw image has no magic to recognise it by)");
  cmd->add_flag("--recover", a->recover,
                "Only finish or discard what an interrupted patch left beside IMAGE");
  return [a] { return run_patch_cmd(*a); };
}

Runner add_ls(CLI::App& app) {
  struct Args {
    std::string image, path = "/";
    unsigned partition = 0;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("ls", "List a directory inside a disk image (no mount)");
  cmd->add_option("IMAGE", a->image, "The raw disk image")->required()->check(CLI::ExistingFile);
  cmd->add_option("PATH", a->path, "The directory in the image (default /)");
  cmd->add_option("--partition", a->partition, "Read partition N instead of the root");
  return [a] {
    return read_image(a->image, a->partition, [&](patch::ImageFs& fs) -> Result<void> {
      for (const auto& e : TRY(fs.list(a->path))) {
        std::string line =
            fmt::format("{}{:04o} {:>5} {:>5} {:>10} {}", type_letter(e.stat.type),
                        e.stat.mode & 07777, e.stat.uid, e.stat.gid, e.stat.size, e.name);
        if (e.stat.type == patch::FileType::Symlink) line += " -> " + e.stat.link_target;
        std::printf("%s\n", line.c_str());
      }
      return ok();
    });
  };
}

Runner add_cat(CLI::App& app) {
  struct Args {
    std::string image, path;
    unsigned partition = 0;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("cat", "Print a file inside a disk image (no mount)");
  cmd->add_option("IMAGE", a->image, "The raw disk image")->required()->check(CLI::ExistingFile);
  cmd->add_option("PATH", a->path, "The file in the image")->required();
  cmd->add_option("--partition", a->partition, "Read partition N instead of the root");
  return [a] {
    return read_image(a->image, a->partition, [&](patch::ImageFs& fs) -> Result<void> {
      const auto data = TRY(fs.read_file(a->path));
      std::fwrite(data.data(), 1, data.size(), stdout);
      if (std::fflush(stdout) != 0) return Error::from_errno(errno, "writing to stdout");
      return ok();
    });
  };
}

}  // namespace imgstream::cli
