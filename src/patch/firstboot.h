// First-boot actions: scripts that run once, at the next boot of the image, as
// virt-customize --firstboot installs them (libguestfs mlcustomize/firstboot.ml).
//
// In the guest:
//   /var/lib/imgstream/firstboot/scripts/NNNN-NAME   waiting, run in name order
//   /var/lib/imgstream/firstboot/done/NNNN-NAME      run (or being run)
//   /usr/lib/imgstream/firstboot-runner              the runner (/bin/sh)
//   /var/log/imgstream-firstboot.log                 each script's output and exit status
// and the hook that starts the runner: the systemd unit imgstream-firstboot.service
// (after the local file systems, before the login prompt) when the image has systemd,
// else a sysinit line in a busybox /etc/inittab, else /etc/rc.local.
//
// At most once: the runner moves a script to done/ and syncs before it runs it, so a
// crash or power cut while it runs does not run it again (a half-run script is the
// script author's to make safe; running it twice could do worse). libguestfs does the
// same. Installing again adds scripts after the waiting ones and leaves the runner and
// hook as they are: idempotent.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "base/limits.h"
#include "base/result.h"
#include "patch/ext_fs.h"

namespace imgstream::patch {

inline constexpr const char* kFirstbootDir = "/var/lib/imgstream/firstboot";
inline constexpr const char* kFirstbootRunner = "/usr/lib/imgstream/firstboot-runner";
inline constexpr const char* kFirstbootLog = "/var/log/imgstream-firstboot.log";
inline constexpr const char* kFirstbootUnit = "/etc/systemd/system/imgstream-firstboot.service";
inline constexpr unsigned kFirstbootScriptsMax = limits::kFirstbootScriptsMax;

struct FirstbootScript {
  std::string name;  // the host file's name: what the guest's log calls it
  std::vector<std::byte> content;
};

enum class FirstbootHook { Systemd, Inittab, RcLocal };
const char* hook_name(FirstbootHook h);

// Installs the scripts, in order, and the runner and hook. Returns the hook used.
Result<FirstbootHook> install_firstboot(ExtFs& fs, const std::vector<FirstbootScript>& scripts);

}  // namespace imgstream::patch
