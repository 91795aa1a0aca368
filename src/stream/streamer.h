// Streamer: one streamed image put together: the source(s), the local store, the
// StreamingDevice, the background Hydrator, the commit timer and the control socket.
// `imgstream stream` exports streamer.device() over NBD; tests drive it directly.
//
// Lifecycle: open() resumes or creates the store (refusing another image's store),
// start() begins hydration and the timers, stop() ends them with a final commit. When
// every region is present the source is closed and the state becomes `detached`; a store
// already complete is opened without any source at all.
//
// Lock contract: open/start/stop from one thread (the command). The commit thread
// (commit_thread_) runs from start() to stop(); mu_ guards stopping_/stopped_ and is
// waited on with cv_ (the commit tick, wait_detached). on_complete() may run on the
// hydrator's or the commit thread: completed_ makes it run once. rate_mu_ guards rate_,
// sampled by the commit thread and read by status() on the control socket's thread.
// status() and handle_command() may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "base/env.h"
#include "base/rate_meter.h"
#include "base/unique_fd.h"
#include "control/stream_messages.h"
#include "io/control.h"
#include "source/source.h"
#include "store/local_store.h"
#include "stream/hydrator.h"
#include "stream/streaming_device.h"

namespace imgstream::stream {

inline constexpr std::chrono::milliseconds kCommitInterval{1000};
// Read statistics alone are committed every this many commit intervals (and at stop).
inline constexpr uint64_t kCountersCommitTicks = 10;
inline constexpr uint32_t kRegionSizeDefault = 1u << 20;
inline constexpr const char* kControlSocketName = control::kStreamSocketName;
// A pack source's header and index, kept in the store (docs/pack-format.md).
inline constexpr const char* kPackIndexName = "pack.index";

struct StreamerOptions {
  std::string source;  // NBD URI or local path
  std::string store_dir;
  uint32_t region_size = 0;  // 0: the store's own when resuming, else kRegionSizeDefault
  std::string device_path;  // optional external local disk
  HydratorOptions hydrate;
  // Byte ranges to fetch first, in this order (a boot profile); converted to the store's
  // regions when it is opened.
  std::vector<std::pair<uint64_t, uint64_t>> prefetch_ranges;
  uint64_t prefetch_image_size = 0;  // the profile's image size: must be the store's
  bool background = true;  // false: fetch on demand only
  // A pack's own boot set (packed with --profile) is prefetched when no profile is given.
  bool background_boot_prefetch = true;
  // For a new store streamed from a pack: a local image or store whose chunks are copied
  // instead of fetched (pack/seed.h).
  std::string seed;
  std::chrono::milliseconds io_timeout{30'000};
  std::chrono::milliseconds request_timeout{10'000};
};

class Streamer {
 public:
  static Result<std::unique_ptr<Streamer>> open(Env& env, const StreamerOptions& o);
  ~Streamer();

  BlockDevice& device() { return *device_; }
  store::LocalStore& store() { return *store_; }

  void start();
  // For a stop under way (the server letting its clients finish): ends hydration and
  // closes the sources, so that a read waiting on a source that does not answer fails
  // now (ESHUTDOWN) instead of after --io-timeout. Idempotent; stop() follows.
  void interrupt();
  // Stops hydration and timers and commits. Idempotent.
  Result<void> stop();

  void pause();
  void resume();
  void set_rate(uint64_t bytes_per_second);
  // Blocks until the store is detached or `timeout` passes; true when detached.
  bool wait_detached(std::chrono::milliseconds timeout);

  // The status object of DESIGN.md (live values).
  control::StreamStatus status() const;
  // Answers one line of the control socket (control/stream_messages.h); public for
  // fuzz/control_fuzz.cc. Never throws.
  nlohmann::json handle_command(const std::string& line);

 private:
  Streamer(Env& env, StreamerOptions o) : env_(env), opt_(std::move(o)) {}
  // The pieces of open(), in order.
  Result<store::StoreOptions> store_options(const std::optional<store::StoreStatus>& existing,
                                            bool whole);
  Result<void> check_before_store(const store::StoreOptions& so) const;
  Result<void> seed_store();
  void make_hydrator();
  Result<void> open_sources();
  Result<void> check_whole_store_source(const store::StoreHeader& h);
  void on_complete();
  void commit_loop();
  void sample_rate();  // the fetch rate, once per commit tick

  Env& env_;
  StreamerOptions opt_;
  std::unique_ptr<source::Source> demand_src_;
  std::unique_ptr<source::Source> background_src_;  // a second connection, or null
  std::unique_ptr<store::LocalStore> store_;
  std::unique_ptr<StreamingDevice> device_;
  std::unique_ptr<Hydrator> hydrator_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  bool stopped_ = false;
  std::thread commit_thread_;
  std::unique_ptr<ControlServer> control_;
  std::atomic<bool> completed_{false};  // on_complete() ran
  mutable std::mutex rate_mu_;
  RateMeter rate_;  // bytes fetched per second, smoothed
};

// The status of a store read from disk (no streamer needed): the same fields as
// Streamer::status(), as of the last commit, with daemon_running false.
Result<control::StreamStatus> stored_status(Env& env, const std::string& dir);

// Whether a SOURCE string names an NBD server (else it is a local path).
bool is_nbd_uri(const std::string& s);
// Refuses a SOURCE that is a URL of a scheme no source reads (ftp://, s3://, ...), which
// would otherwise be taken for a local path: "unsupported source scheme 'ftp' (...)".
// Cheap and without I/O: usable to validate the command line before anything is made.
Result<void> check_source_scheme(const std::string& s);

}  // namespace imgstream::stream
