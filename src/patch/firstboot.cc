#include "patch/firstboot.h"

#include <algorithm>
#include <cstdio>

namespace imgstream::patch {

namespace {

// The runner. POSIX sh and the tools busybox has, so that it runs on any Linux image.
constexpr std::string_view kRunner = R"(#!/bin/sh
# imgstream first-boot runner (installed by `imgstream patch --firstboot`).
# Runs each script in /var/lib/imgstream/firstboot/scripts once, in name order. A script
# is moved to done/ and the move synced BEFORE it runs: at most once, as libguestfs's
# firstboot does; a script cut short by a crash or power cut is not run again.
d=/var/lib/imgstream/firstboot
log=/var/log/imgstream-firstboot.log
mkdir -p "$d/done" /var/log
for s in "$d"/scripts/*; do
  [ -f "$s" ] || continue
  n=${s##*/}
  mv -f "$s" "$d/done/$n" || { echo "imgstream-firstboot: cannot move $n to done/: not run" | tee -a "$log"; continue; }
  sync
  chmod 0755 "$d/done/$n"
  echo "imgstream-firstboot: running $n" | tee -a "$log"
  { "$d/done/$n" 2>&1; echo $? >"$d/done/$n.status"; } | tee -a "$log"
  rc=$(cat "$d/done/$n.status" 2>/dev/null || echo unknown)
  echo "imgstream-firstboot: $n exited with status $rc" | tee -a "$log"
done
sync
exit 0
)";

constexpr std::string_view kUnit = R"([Unit]
Description=imgstream first-boot scripts (run once)
Documentation=man:imgstream(1)
After=local-fs.target
Before=getty.target systemd-user-sessions.service serial-getty@ttyS0.service
ConditionDirectoryNotEmpty=/var/lib/imgstream/firstboot/scripts

[Service]
Type=oneshot
ExecStart=/usr/lib/imgstream/firstboot-runner
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=0

[Install]
WantedBy=multi-user.target
)";

constexpr std::string_view kInittabLine = "::sysinit:/usr/lib/imgstream/firstboot-runner\n";
constexpr std::string_view kRcLocalLine = "/usr/lib/imgstream/firstboot-runner\n";

std::span<const std::byte> bytes(std::string_view s) {
  return std::as_bytes(std::span(s));
}

std::string text(const std::vector<std::byte>& b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

const Attr kRootDir{0755, 0, 0};
const Attr kExec{0755, 0, 0};
const Attr kFile{0644, 0, 0};

// The number of the next script: one past every number waiting or done.
Result<unsigned> next_number(ExtFs& fs) {
  unsigned last = 0;
  for (const char* sub : {"/scripts", "/done"}) {
    auto entries = TRY(fs.list(std::string(kFirstbootDir) + sub));
    for (const auto& e : entries) {
      unsigned n = 0;
      if (std::sscanf(e.name.c_str(), "%4u-", &n) == 1) last = std::max(last, n);
    }
  }
  return last + 1;
}

// Keeps names printable and free of '/': the host file's name, as the log shows it.
std::string safe_name(const std::string& name) {
  std::string out;
  for (char c : name.substr(0, 64))
    out +=
        (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-') ? c : '_';
  return out.empty() ? "script" : out;
}

Result<bool> has_systemd(ExtFs& fs) {
  for (const char* p : {"/usr/lib/systemd/systemd", "/lib/systemd/systemd"}) {
    auto s = fs.stat(p);
    if (s && s->type == FileType::Regular) return true;
    if (!s && s.error().code != ENOENT && s.error().code != EXDEV) return s.error();
  }
  return false;
}

Result<void> append_line(ExtFs& fs, const char* path, std::string_view line, const Attr& attr) {
  std::string content;
  if (TRY(fs.exists(path))) content = text(TRY(fs.read_file(path)));
  if (content.find(line) != std::string::npos) return ok();
  if (!content.empty() && content.back() != '\n') content += '\n';
  content += line;
  return fs.write_file(path, bytes(content), attr);
}

Result<FirstbootHook> install_hook(ExtFs& fs) {
  if (TRY(has_systemd(fs))) {
    TRY(fs.make_dirs("/etc/systemd/system/multi-user.target.wants", kRootDir));
    TRY(fs.write_file(kFirstbootUnit, bytes(kUnit), kFile));
    // What `systemctl enable` makes. Created, never followed here.
    const std::string wants =
        "/etc/systemd/system/multi-user.target.wants/imgstream-firstboot.service";
    TRY(fs.symlink(kFirstbootUnit, wants));
    return FirstbootHook::Systemd;
  }
  // Busybox's inittab ("::sysinit:/etc/init.d/rcS"): a sysinit line after the others runs
  // once they (mounting the file systems) are done. sysvinit's inittab runs its sysinit
  // before the file systems are writable: there rc.local (the end of the boot) serves.
  if (TRY(fs.exists("/etc/inittab"))) {
    const std::string tab = text(TRY(fs.read_file("/etc/inittab")));
    if (tab.find("::sysinit:") != std::string::npos) {
      TRY(append_line(fs, "/etc/inittab", kInittabLine, kFile));
      return FirstbootHook::Inittab;
    }
  }
  if (!TRY(fs.exists("/etc/rc.local")))
    TRY(fs.write_file("/etc/rc.local", bytes("#!/bin/sh\n"), kExec));
  // rc.local ends in "exit 0" by convention: the runner goes before it.
  std::string rc = text(TRY(fs.read_file("/etc/rc.local")));
  if (rc.find(kRcLocalLine) == std::string::npos) {
    const size_t exit_at = rc.rfind("\nexit 0");
    rc.insert(exit_at == std::string::npos ? rc.size() : exit_at + 1, kRcLocalLine);
  }
  TRY(fs.write_file("/etc/rc.local", bytes(rc), kExec));
  return FirstbootHook::RcLocal;
}

}  // namespace

const char* hook_name(FirstbootHook h) {
  switch (h) {
    case FirstbootHook::Systemd: return "systemd unit imgstream-firstboot.service";
    case FirstbootHook::Inittab: return "/etc/inittab sysinit line";
    case FirstbootHook::RcLocal: return "/etc/rc.local";
  }
  return "?";
}

Result<FirstbootHook> install_firstboot(ExtFs& fs, const std::vector<FirstbootScript>& scripts) {
  const std::string dir = kFirstbootDir;
  TRY(fs.make_dirs(dir + "/scripts", kRootDir));
  TRY(fs.make_dirs(dir + "/done", kRootDir));
  TRY(fs.make_dirs("/usr/lib/imgstream", kRootDir));
  unsigned n = TRY(next_number(fs));
  for (const auto& s : scripts) {
    if (n > kFirstbootScriptsMax)
      return Error{E2BIG, fs.name() + ": more than 9999 first-boot scripts"};
    char num[8];
    std::snprintf(num, sizeof num, "%04u", n++);
    TRY(fs.write_file(dir + "/scripts/" + num + "-" + safe_name(s.name), s.content, kExec));
  }
  TRY(fs.write_file(kFirstbootRunner, bytes(kRunner), kExec));
  return install_hook(fs);
}

}  // namespace imgstream::patch
