// imgstream serve IMAGE: export a file or block device over NBD.
#include <unistd.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/env.h"
#include "base/log.h"
#include "base/output_check.h"
#include "base/stop.h"
#include "cli/cli.h"
#include "cli/listen_args.h"
#include "cli/run_server.h"
#include "cli/stop_signals.h"
#include "device/file_device.h"
#include "io/control.h"
#include "migrate/migration_control.h"
#include "nbd/server.h"
#include "pack/pack_source.h"
#include "profile/trace.h"
#include "stack/device_stack.h"

namespace imgstream::cli {

namespace {

struct ServeArgs {
  std::string image;
  std::vector<std::string> listen;
  std::string export_name;
  std::string description;
  bool read_only = false;
  std::string run;
  std::string trace;
  std::string track;
  std::string control;
  unsigned threads = nbd::kWorkerThreadsDefault;
  bool force = false;
};

Result<std::unique_ptr<BlockDevice>> open_pack_device(const std::string& where) {
  auto p = TRY(pack::Pack::open(*Env::posix(), where));
  return std::unique_ptr<BlockDevice>(std::make_unique<pack::PackDevice>(std::move(p)));
}

Result<std::unique_ptr<BlockDevice>> open_file_device(const std::string& path, bool read_only) {
  auto d = TRY(FileDevice::open(*Env::posix(), path, read_only ? Access::ReadOnly : Access::ReadWrite));
  return std::unique_ptr<BlockDevice>(std::move(d));
}

std::string absolute_path(const std::string& p) {
  if (p.starts_with("/")) return p;
  char buf[4096];
  return ::getcwd(buf, sizeof buf) ? std::string(buf) + "/" + p : p;
}


// Usage, checked before anything is opened, bound or created (exit 2).
int check_serve_usage(const ServeArgs& args, bool read_only, std::vector<Address>& listen) {
  auto usage = [](const std::string& m) {
    print_error(m);
    return kExitUsage;
  };
  if (!args.track.empty() && read_only)
    return usage("--track needs a writable export (not --read-only, not a pack)");
  if (!args.control.empty() && args.track.empty())
    return usage("--control needs --track (a migration copies what the tracker records)");
  if (!args.track.empty() && same_file(args.track, args.image))
    return usage("--track " + args.track + " is the image " + args.image +
                 " (the same file); not using it");
  auto l = parse_listen_args(args.listen);
  if (!l) return usage(l.error().message);
  listen = std::move(*l);
  if (!args.trace.empty()) {
    // Never over the image or the tracking file; over another kind of file only with --force.
    auto r = check_output(args.trace, {args.image, args.track}, profile::kTraceOutput,
                          args.force ? Overwrite::Force : Overwrite::SameKind);
    if (!r) return usage("serve " + args.image + ": --trace: " + r.error().message);
  }
  return kExitOk;
}

Result<std::unique_ptr<BlockDevice>> open_image(const ServeArgs& args, bool pack) {
  return pack ? open_pack_device(args.image) : open_file_device(args.image, args.read_only);
}

// Binds the listening addresses (an address in use fails before anything is opened or
// created) and checks that the control socket's path is free: it is bound later, once
// the tracker it drives exists. `bound` keeps what it made (a captive run's private
// socket directory) while the server runs.
Result<void> bind_listen(const ServeArgs& args, nbd::ServerOptions& opt, BoundListen& bound) {
  TRY(bound.bind(std::move(opt.listen), !args.run.empty()));
  opt.listen = bound.addresses;
  opt.bound = std::move(bound.listeners);
  if (!args.control.empty()) {
    Address c{.kind = Address::Kind::Unix, .path = args.control};
    if (auto r = check_listen_path(c); !r)
      return Error{r.error().code, "control socket " + r.error().message};
  }
  return ok();
}

// The migration control socket (migrate/migration_control.h) over the stack's tracker,
// mirror and hold; `migration` must outlive the server returned.
Result<std::unique_ptr<ControlServer>> start_control(const ServeArgs& args,
                                                     stack::DeviceStack& devices,
                                                     std::unique_ptr<migrate::Migration>& migration) {
  migration.reset(new migrate::Migration{absolute_path(args.image), args.track,
                                         *devices.tracker(), *devices.mirror(), *devices.hold()});
  migrate::Migration* m = migration.get();
  return ControlServer::start(args.control, [m](const std::string& line) {
    return migrate::migration_command(line, *m);
  });
}

int run_serve(const ServeArgs& args) {
  set_graceful_stop();
  // A pack (docs/pack-format.md) is served read-only: its chunks are immutable.
  const bool pack = pack::is_pack_source(args.image);
  const bool read_only = args.read_only || pack;
  nbd::ServerOptions opt;
  if (int rc = check_serve_usage(args, read_only, opt.listen); rc != kExitOk) return rc;
  BoundListen bound;
  if (auto r = bind_listen(args, opt, bound); !r) {
    print_error("serve " + args.image + ": " + r.error().message);
    return kExitFailure;
  }
  auto dev = open_image(args, pack);
  if (!dev) {
    print_error(dev.error().message);
    return kExitFailure;
  }
  // A --trace file this run creates goes again when the run fails before it serves;
  // declared before the stack, so that it acts after the writer has closed.
  std::optional<TempFile> new_trace;
  if (!args.trace.empty() && !Env::posix()->exists(args.trace).value_or(true))
    new_trace.emplace(args.trace);
  stack::StackOptions so;
  so.owned_base = std::move(*dev);
  so.trace_path = args.trace;
  so.track_path = args.track;
  so.migration_source = !args.control.empty();
  auto built = stack::DeviceStack::build(*Env::posix(), std::move(so));
  if (!built) {
    print_error(built.error().message);
    return kExitFailure;
  }
  stack::DeviceStack& devices = **built;
  std::unique_ptr<migrate::Migration> migration;
  std::unique_ptr<ControlServer> control;
  if (!args.control.empty()) {
    auto c = start_control(args, devices, migration);
    if (!c) {
      print_error(c.error().message);
      return kExitFailure;
    }
    control = std::move(*c);
  }
  opt.worker_threads = args.threads;
  opt.exports.push_back(
      nbd::Export{args.export_name, args.description, &devices.top(), read_only});
  auto server = nbd::Server::create(std::move(opt));
  if (!server) {
    print_error("serve " + args.image + ": " + server.error().message);
    return kExitFailure;
  }
  if (new_trace) new_trace->keep();  // serving: the trace is the user's now
  LOG_INFO("serving {} ({} bytes{})", args.image, devices.base().size(),
           read_only ? ", read-only" : "");
  int status = run_server(**server, args.export_name, args.run);
  server->reset();
  control.reset();
  // A clean stop: the tracking file with every bit in its bitmap, the trace written out.
  if (auto r = devices.close(); !r) {
    print_error(r.error().message);
    status = kExitFailure;
  }
  return status;
}

}  // namespace

Runner add_serve(CLI::App& app) {
  auto args = std::make_shared<ServeArgs>();
  CLI::App* cmd = app.add_subcommand(
      "serve",
      "Export a disk image (a file or a block device) over NBD.\n"
      "Prints the NBD URI of the export on stdout when ready; stops cleanly on SIGINT or\n"
      "SIGTERM after answering the requests in flight.");
  cmd->add_option("IMAGE", args->image,
                  "Raw disk image file or block device, or a pack (NAME.pack or an http(s) "
                  "URL of one; served read-only)")
      ->required();
  cmd->add_option("--listen", args->listen,
                  "Address to listen on: unix:PATH or tcp:HOST:PORT (repeatable; default "
                  "tcp:127.0.0.1:10809, or a private unix socket with --run)");
  cmd->add_option("--export", args->export_name, "Export name (default: empty, the default export)");
  cmd->add_option("--description", args->description, "Export description shown to clients");
  cmd->add_flag("--read-only", args->read_only, "Refuse writes (clients get EPERM)");
  cmd->add_option("--run", args->run,
                  "Captive mode: run CMD under sh -c with $uri set to the export's NBD URI, "
                  "stop when it exits and exit with its status");
  cmd->add_option("--threads", args->threads, "Threads for requests that may block")
      ->check(CLI::Range(1u, 1024u))
      ->capture_default_str();
  cmd->add_option("--track", args->track,
                  "Record every region written, trimmed or zeroed in this tracking file "
                  "(made when missing; docs/track-format.md), durably before each write is "
                  "acknowledged: for live migration");
  cmd->add_option("--control", args->control,
                  "Control socket for `imgstream migrate --control PATH` (needs --track)");
  cmd->add_option("--trace", args->trace,
                  "Record every read (time, offset, length) in FILE (docs/trace-format.md)");
  cmd->add_flag("--force", args->force,
                "Replace an existing --trace FILE that is not a trace (never the image)");
  return [args] { return run_serve(*args); };
}

}  // namespace imgstream::cli
