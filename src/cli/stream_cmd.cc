// imgstream stream SOURCE --store DIR: boot/run from a remote image now; the local store is
// hydrated on demand and in the background; detached from the source when complete.
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/env.h"
#include "base/log.h"
#include "base/output_check.h"
#include "base/stop.h"
#include "base/units.h"
#include "cli/cli.h"
#include "cli/listen_args.h"
#include "cli/run_server.h"
#include "cli/stop_signals.h"
#include "nbd/server.h"
#include "pack/pack_source.h"
#include "profile/profile.h"
#include "profile/trace.h"
#include "stack/device_stack.h"
#include "stream/streamer.h"

namespace imgstream::cli {

namespace {

constexpr const char* kBootTraceName = "boot.trace";

struct StreamArgs {
  std::string source;
  std::string store;
  std::vector<std::string> listen;
  std::string export_name;
  std::string region_size;  // empty: the store's own, or 1M for a new store
  std::string rate = "0";
  std::string batch = "8M";
  std::string device;
  std::string run;
  std::string trace;
  std::string profile;
  std::string seed;
  bool no_boot_trace = false;
  double io_timeout_s = 30;
  double idle_after_s = std::chrono::duration<double>(stream::kIdleAfterDefault).count();
  unsigned in_flight = 4;
  bool no_background = false;
  bool paused = false;
  bool force = false;
};

// What a run made of the store directory (and of its missing parents): when the run
// fails before it serves, that goes again, and only that: the store's own names that did
// not exist before the run, then the directories it made, if they are empty (issue 12:
// `stream --region-size 3K` left a store directory behind).
class NewStoreGuard {
 public:
  explicit NewStoreGuard(std::string dir) : dir_(std::move(dir)) {
    for (std::string d = dir_; !exists(d); d = parent_dir(d)) {
      made_dirs_.push_back(d);  // deepest first
      if (d == parent_dir(d)) break;
    }
    for (std::string_view n : names())
      if (!exists(dir_ + "/" + std::string(n))) new_names_.emplace_back(n);
  }
  NewStoreGuard(const NewStoreGuard&) = delete;
  NewStoreGuard& operator=(const NewStoreGuard&) = delete;
  ~NewStoreGuard() {
    if (kept_) return;
    for (const std::string& n : new_names_) (void)Env::posix()->remove(dir_ + "/" + n);
    // Env has no rmdir; rmdir(2) removes a directory only when it is empty.
    for (const std::string& d : made_dirs_) ::rmdir(d.c_str());
  }
  void keep() { kept_ = true; }

 private:
  static bool exists(const std::string& p) { return Env::posix()->exists(p).value_or(true); }
  static std::vector<std::string_view> names() {
    std::vector<std::string_view> v(std::begin(store::kStoreNamesBeingMade),
                                    std::end(store::kStoreNamesBeingMade));
    v.push_back(store::kStoreMetaName);
    return v;
  }
  std::string dir_;
  std::vector<std::string> made_dirs_, new_names_;
  bool kept_ = false;
};

int usage(const std::string& message) {
  print_error(message);
  return kExitUsage;
}

// Every option, checked before anything is opened, bound or created (exit 2).
int check_stream_usage(const StreamArgs& a, stream::StreamerOptions& o,
                       std::vector<Address>& listen) {
  auto region = parse_size(a.region_size.empty() ? "0" : a.region_size);
  auto rate = parse_size(a.rate);
  auto batch = parse_size(a.batch);
  for (auto* r : {&region, &rate, &batch})
    if (!*r) return usage(r->error().message);
  if (*region != 0 && (*region < store::kRegionBytesMin || *region > store::kRegionBytesMax ||
                       !std::has_single_bit(*region)))
    return usage("--region-size " + a.region_size + ": must be a power of two from 4K to 1G");
  o.region_size = static_cast<uint32_t>(*region);
  if (auto sc = stream::check_source_scheme(a.source); !sc)
    return usage("stream " + a.source + ": " + sc.error().message);
  o.hydrate.rate_bytes_per_second = *rate;
  o.hydrate.batch_bytes = *batch;
  if (!a.seed.empty() && !pack::is_pack_source(a.source))
    return usage("--seed works with a pack source (NAME.pack or an http URL), not " + a.source);
  auto l = parse_listen_args(a.listen);
  if (!l) return usage(l.error().message);
  listen = std::move(*l);
  // A directory of someone's files is no store: refused before anything is written there.
  if (auto r = store::LocalStore::check_dir(*Env::posix(), a.store); !r)
    return usage("stream " + a.source + ": " + r.error().message);
  // A --trace in the store directory of a new store: that directory is made later.
  const bool trace_in_new_store = !a.trace.empty() &&
                                  parent_dir(a.trace) == parent_dir(a.store + "/x") &&
                                  !Env::posix()->exists(a.store).value_or(true);
  if (!a.trace.empty() && !trace_in_new_store) {
    const std::vector<std::string> inputs{
        a.source, a.profile,         a.seed,
        a.device, a.store + "/data", a.store + "/" + std::string(store::kStoreMetaName)};
    auto r = check_output(a.trace, inputs, profile::kTraceOutput,
                          a.force ? Overwrite::Force : Overwrite::SameKind);
    if (!r) return usage("stream " + a.source + ": --trace: " + r.error().message);
  }
  return kExitOk;
}

Result<void> read_stream_profile(const std::string& path, stream::StreamerOptions& o) {
  if (path.empty()) return ok();
  auto p = TRY(profile::read_profile(*Env::posix(), path));
  o.prefetch_image_size = p.image_size;
  for (const profile::ProfileRun& run : p.runs)
    o.prefetch_ranges.emplace_back(run.first_region * p.region_size, run.count * p.region_size);
  // The boot it recorded read its boot set within the last first-read time: hydration
  // holds back for the boot at most a few times that long (hydration_pace.h).
  double boot_ms = 0;
  for (const profile::ProfileRegion& r : p.regions)
    boot_ms = std::max(boot_ms, r.mean_first_read_ms);
  if (boot_ms > 0)
    o.hydrate.pace.boot_deadline =
        std::chrono::milliseconds(static_cast<int64_t>(stream::kBootDeadlineFactor * boot_ms)) +
        o.hydrate.pace.idle_after;
  LOG_INFO("profile {}: {} runs, {} to prefetch", path, p.runs.size(),
           format_size(p.boot_set_bytes()));
  return ok();
}

stream::StreamerOptions streamer_options(const StreamArgs& a) {
  stream::StreamerOptions o;
  o.source = a.source;
  o.store_dir = a.store;
  o.device_path = a.device;
  o.background = !a.no_background;
  o.seed = a.seed;
  o.io_timeout = std::chrono::milliseconds(static_cast<int64_t>(a.io_timeout_s * 1000));
  o.request_timeout = std::min(o.io_timeout, std::chrono::milliseconds(10'000));
  o.hydrate.in_flight = a.in_flight;
  o.hydrate.start_paused = a.paused;
  o.hydrate.pace.idle_after =
      std::chrono::milliseconds(static_cast<int64_t>(a.idle_after_s * 1000));
  return o;
}

int run_stream(const StreamArgs& a) {
  set_graceful_stop();
  stream::StreamerOptions o = streamer_options(a);
  nbd::ServerOptions so;
  if (int rc = check_stream_usage(a, o, so.listen); rc != kExitOk) return rc;
  if (auto r = read_stream_profile(a.profile, o); !r) {
    print_error(r.error().message);
    return kExitFailure;
  }
  // Bound before the store is made: an address in use fails with nothing created.
  BoundListen bound;
  if (auto r = bound.bind(std::move(so.listen), !a.run.empty()); !r) {
    print_error("stream " + a.source + ": " + r.error().message);
    return kExitFailure;
  }
  so.listen = bound.addresses;
  so.bound = std::move(bound.listeners);
  NewStoreGuard new_store(a.store);   // declared before the streamer: acts after it closes
  std::optional<TempFile> new_trace;  // a --trace file this run makes, likewise
  auto streamer = stream::Streamer::open(*Env::posix(), o);
  if (!streamer) {
    print_error("stream " + a.source + " into " + a.store + ": " + streamer.error().message);
    return kExitFailure;
  }
  // A new store records its own first boot (STORE/boot.trace), so that profiles can be
  // merged from stores as well as from trace files.
  stack::StackOptions sto;
  sto.base = &(*streamer)->device();
  sto.trace_path = a.trace;
  if (sto.trace_path.empty() && (*streamer)->store().created() && !a.no_boot_trace)
    sto.trace_path = a.store + "/" + kBootTraceName;
  if (!sto.trace_path.empty()) {
    if (!a.trace.empty() && !Env::posix()->exists(a.trace).value_or(true))
      new_trace.emplace(a.trace);
    sto.trace_header = profile::TraceHeader{.region_size = (*streamer)->store().header().region_size,
                                            .flags = profile::kTraceFlagStreaming};
  }
  auto built = stack::DeviceStack::build(*Env::posix(), std::move(sto));
  if (!built) {
    print_error(built.error().message);
    return kExitFailure;
  }
  stack::DeviceStack& devices = **built;
  so.exports.push_back(
      nbd::Export{a.export_name, "imgstream stream of " + a.source, &devices.top(), false});
  auto server = nbd::Server::create(std::move(so));
  if (!server) {
    print_error(server.error().message);
    return kExitFailure;
  }
  new_store.keep();  // serving: the store is whole, and the trace the user's
  if (new_trace) new_trace->keep();
  (*streamer)->start();
  LOG_INFO("streaming {} into {}", a.source, a.store);
  int status = run_server(**server, a.export_name, a.run, [&] { (*streamer)->interrupt(); });
  server->reset();
  auto r = (*streamer)->stop();
  if (!r) {
    print_error("store " + a.store + ": " + r.error().message);
    return kExitFailure;
  }
  if (auto t = devices.close(); !t) {
    print_error(t.error().message);
    return kExitFailure;
  }
  return status;
}

}  // namespace

Runner add_stream(CLI::App& app) {
  auto a = std::make_shared<StreamArgs>();
  CLI::App* cmd = app.add_subcommand(
      "stream",
      "Serve a remote image over NBD now, keeping every block read on the local store and\n"
      "copying the rest in the background; when the copy is complete the source is let go.\n"
      "Run again on the same store to resume after a crash or a stop.");
  cmd->add_option("SOURCE", a->source,
                  "The image: an NBD URI (nbd://host:port/export, nbd+unix:///export?socket=PATH) "
                  "or a local path")
      ->required();
  cmd->add_option("--store", a->store, "Store directory: the local copy and its state")->required();
  cmd->add_option("--listen", a->listen,
                  "Address to serve on: unix:PATH or tcp:HOST:PORT (repeatable; default "
                  "tcp:127.0.0.1:10809, or a private unix socket with --run)");
  cmd->add_option("--export", a->export_name, "Export name to serve (default: empty)");
  cmd->add_option("--region-size", a->region_size,
                  "Unit of fetching and of the presence bitmap, a power of two from 4K to 1G "
                  "(default: 1M for a new store, the store's own when resuming)")
      ->check(size_validator());
  cmd->add_option("--rate", a->rate, "Limit background hydration to RATE bytes/s (0: no limit; a --profile's "
                  "prefetch is not limited)")
      ->check(size_validator())
      ->capture_default_str();
  cmd->add_option("--batch", a->batch, "Bytes per background request")
      ->check(size_validator())
      ->capture_default_str();
  cmd->add_option("--in-flight", a->in_flight, "Background requests in flight")
      ->check(CLI::Range(1u, 64u))
      ->capture_default_str();
  cmd->add_option("--io-timeout", a->io_timeout_s,
                  "Seconds a source read is retried before the client sees EIO")
      ->check(CLI::Range(0.1, 86400.0))
      ->capture_default_str();
  cmd->add_option("--device", a->device,
                  "Keep the local copy on this file or block device instead of STORE/data");
  cmd->add_flag("--no-background", a->no_background,
                "Fetch on demand only (and, with --profile, the profile's regions)");
  cmd->add_flag("--paused", a->paused, "Start with background hydration paused");
  cmd->add_option("--idle-after", a->idle_after_s,
                  "Background hydration holds back while the machine is busy: while it reads "
                  "from the local copy with nothing waiting on the source, and, with --profile, "
                  "while it boots (until it has read most of the boot set, at most twice the "
                  "boot the profile recorded); it goes at full speed once the machine has read "
                  "nothing for this many seconds. A machine busy for over 60 s still gets one "
                  "batch a second. 0: never hold back")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  cmd->add_option("--profile", a->profile,
                  "Boot profile (imgstream profile merge): fetch its regions first, in its "
                  "order, ahead of the machine; then hydrate the rest. `imgstream status` shows "
                  "the bytes prefetched and the share of them read since (precision)");
  cmd->add_option("--seed", a->seed,
                  "With a pack SOURCE and a new store: copy the chunks this local image (or "
                  "store directory) already has instead of fetching them, e.g. the previous "
                  "version of the image");
  cmd->add_flag("--no-boot-trace", a->no_boot_trace,
                "Do not record the first boot of a new store in STORE/boot.trace");
  cmd->add_option("--trace", a->trace,
                  "Record every read (time, offset, length, served locally or fetched) in FILE "
                  "(docs/trace-format.md)");
  cmd->add_flag("--force", a->force,
                "Replace an existing --trace FILE that is not a trace (never an input)");
  cmd->add_option("--run", a->run,
                  "Captive mode: run CMD under sh -c with $uri set, stop when it exits");
  return [a] { return run_stream(*a); };
}

}  // namespace imgstream::cli
