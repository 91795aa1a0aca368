#include "stream/streamer.h"

#include <fmt/format.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <optional>

#include "base/check.h"
#include "base/log.h"
#include "base/stop.h"
#include "base/units.h"
#include "blob/blob.h"
#include "io/control.h"
#include "io/socket.h"
#include "pack/pack_source.h"
#include "pack/seed.h"
#include "source/file_source.h"
#include "source/nbd_source.h"
#include "stream/fingerprint.h"

namespace imgstream::stream {

using store::StoreState;

bool is_nbd_uri(const std::string& s) {
  return s.starts_with("nbd://") || s.starts_with("nbd+unix://") || s.starts_with("nbds://") ||
         s.starts_with("nbds+unix://") || s.starts_with("nbd+vsock://");
}

Result<void> check_source_scheme(const std::string& s) {
  const std::string scheme = blob::url_scheme(s);
  if (scheme.empty() || is_nbd_uri(s) || blob::is_http_url(s)) return ok();
  return Error::invalid("unsupported source scheme '" + scheme +
                        "' (expected nbd://, nbd+unix://, http(s)://, or a local path)");
}

Result<void> Streamer::open_sources() {
  TRY(check_source_scheme(opt_.source));
  if (is_nbd_uri(opt_.source)) {
    source::NbdSourceOptions so;
    so.io_timeout = opt_.io_timeout;
    so.request_timeout = std::min(opt_.request_timeout, opt_.io_timeout);
    demand_src_ = TRY(source::NbdSource::open(opt_.source, so));
    // Background hydration gets its own connection, so that its large requests never
    // queue ahead of a demand read inside one connection.
    if (opt_.background) {
      auto bg = source::NbdSource::open(opt_.source, so);
      if (bg) background_src_ = std::move(*bg);
      else LOG_WARN("second connection to {} failed ({}): hydrating over the first", opt_.source, bg.error().message);
    }
  } else if (pack::is_pack_source(opt_.source)) {
    // One Pack (header, index, base chain) behind the source; its pool reads in parallel.
    pack::PackOpenOptions po;
    po.blob.timeout = opt_.io_timeout;
    // Fetched once, kept here. The pack makes the directory of a new store for it only
    // once it opened whole: a source that fails to open leaves no directory behind.
    po.index_cache = opt_.store_dir + "/" + kPackIndexName;
    po.index_cache_mkdir = true;
    demand_src_ = std::make_unique<pack::PackSource>(TRY(pack::Pack::open(env_, opt_.source, po)));
  } else {
    demand_src_ = TRY(source::FileSource::open(env_, opt_.source));
  }
  // A stop that came while the sources opened (they fail by themselves when it came
  // during a wait) ends open() here rather than in the fingerprint.
  if (stop_requested()) return Error{EINTR, "interrupted"};
  return ok();
}

// A pack packed with a profile knows its boot set: its chunks stored in the boot range,
// in the order they are stored (the profile's order).
std::vector<std::pair<uint64_t, uint64_t>> pack_boot_ranges(const pack::Pack& p) {
  const pack::PackHeader& h = p.header();
  std::vector<std::pair<uint64_t, uint64_t>> by_offset;  // (pack offset, chunk)
  for (uint64_t c = 0; c < p.index().size(); ++c) {
    const pack::IndexEntry& e = p.index()[c];
    if (e.stored() && e.offset >= h.boot_begin && e.offset < h.boot_end) by_offset.emplace_back(e.offset, c);
  }
  std::sort(by_offset.begin(), by_offset.end());
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto [off, c] : by_offset) {
    const uint64_t start = c * h.chunk_size, len = h.chunk_bytes(c);
    if (!ranges.empty() && ranges.back().first + ranges.back().second == start)
      ranges.back().second += len;
    else
      ranges.emplace_back(start, len);
  }
  return ranges;
}

// The store to open or make: a whole one as it is (no source needed), else for the
// source, opened here. `existing`: the store's status on disk, when it has one.
Result<store::StoreOptions> Streamer::store_options(const std::optional<store::StoreStatus>& existing,
                                                   bool whole) {
  const StreamerOptions& o = opt_;
  store::StoreOptions so;
  so.dir = o.store_dir;
  // 0 means: the store's own region size when resuming, the default when new.
  so.region_size = o.region_size ? o.region_size
                                 : existing ? existing->header.region_size
                                            : kRegionSizeDefault;
  so.device_path = o.device_path;
  if (whole) {
    so.image_size = existing->header.image_size;
    so.fingerprint = existing->header.fingerprint;
    so.fingerprint_kind = existing->header.fingerprint_kind;
    so.source_uri = existing->header.source_uri;
    so.region_size = existing->header.region_size;
    TRY(check_whole_store_source(existing->header));
    return so;
  }
  TRY_CTX(open_sources(), "source " + o.source);
  so.image_size = demand_src_->size();
  so.source_uri = demand_src_->uri();
  // A pack names its image (identity); other sources are fingerprinted by their bytes.
  // A store being resumed was fingerprinted its own way (older stores: Ends; for a
  // pack's identity the kind means nothing and is kept as it was).
  so.fingerprint_kind = existing ? existing->header.fingerprint_kind
                                 : store::FingerprintKind::Sampled;
  if (auto id = demand_src_->identity()) so.fingerprint = *id;
  else so.fingerprint = TRY(fingerprint(*demand_src_, so.fingerprint_kind));
  if (auto* ps = dynamic_cast<pack::PackSource*>(demand_src_.get())) {
    // Regions of the pack's chunk size, so that a region is one verified chunk.
    if (!o.region_size && !existing) so.region_size = ps->pack().header().chunk_size;
    if (opt_.prefetch_ranges.empty() && o.background_boot_prefetch)
      opt_.prefetch_ranges = pack_boot_ranges(ps->pack());
  }
  return so;
}

// What can be checked before the store is made is checked before.
Result<void> Streamer::check_before_store(const store::StoreOptions& so) const {
  if (!opt_.seed.empty() && !dynamic_cast<pack::PackSource*>(demand_src_.get()))
    return Error::invalid("--seed works with a pack source (NAME.pack or an http URL)");
  if (opt_.prefetch_image_size && opt_.prefetch_image_size != so.image_size)
    return Error::invalid("the profile was made for an image of " +
                          std::to_string(opt_.prefetch_image_size) + " bytes, this one has " +
                          std::to_string(so.image_size));
  return ok();
}

// A seed fills a store before anything is fetched; one being resumed has its regions.
Result<void> Streamer::seed_store() {
  if (!store_->created())
    return Error{EEXIST, "--seed needs a new store: " + opt_.store_dir +
                             " holds one already (run without --seed to resume it)"};
  auto* ps = dynamic_cast<pack::PackSource*>(demand_src_.get());
  auto r = TRY(pack::seed_store(env_, ps->pack(), *store_, opt_.seed));
  LOG_INFO("seed {}: {} chunks ({} bytes) copied instead of fetched", opt_.seed, r.chunks, r.bytes);
  store_->add_seeded(r.bytes);
  return store_->commit();
}

// The hydrator: the profile's ranges first (as the store's regions), then the rest.
void Streamer::make_hydrator() {
  HydratorOptions ho = opt_.hydrate;
  ho.prefetch_only = !opt_.background;
  const uint64_t rs = store_->region_size(), size = store_->header().image_size;
  for (auto [off, len] : opt_.prefetch_ranges) {
    if (len == 0 || off >= size) continue;
    const uint64_t first = off / rs, end = (std::min(off + len, size) + rs - 1) / rs;
    ho.prefetch.push_back(PrefetchRun{first, end - first});
  }
  source::Source& bg = background_src_ ? *background_src_ : *demand_src_;
  hydrator_ = std::make_unique<Hydrator>(*device_, *store_, bg, std::move(ho),
                                         [this] { on_complete(); });
}

Result<std::unique_ptr<Streamer>> Streamer::open(Env& env, const StreamerOptions& o) {
  std::unique_ptr<Streamer> s(new Streamer(env, o));
  // Someone's directory that is no store is refused before anything is written in it.
  TRY(store::LocalStore::check_dir(env, o.store_dir));
  // A store that is already whole needs no source at all: run from the local disk.
  std::optional<store::StoreStatus> existing;
  if (auto st = store::LocalStore::read_status(env, o.store_dir)) existing = std::move(*st);
  const bool whole = existing && existing->slot.count_present() == existing->header.regions();
  const store::StoreOptions so = TRY(s->store_options(existing, whole));
  TRY(s->check_before_store(so));
  s->store_ = TRY(store::LocalStore::open_or_create(env, so));
  if (!o.seed.empty()) TRY(s->seed_store());
  const bool prefetching = !whole && !s->opt_.prefetch_ranges.empty();
  // Read-ahead only on demand alone: the hydrator copies everything anyway, and knows the
  // source's holes (a read-ahead would fetch their zeros).
  FetchLimits limits;
  if (o.background) limits.readahead_bytes = 0;
  s->device_ =
      std::make_unique<StreamingDevice>(*s->store_, s->demand_src_.get(), prefetching, limits);
  if (whole) {
    s->store_->set_state(StoreState::Detached);
  } else if (s->store_->state() != StoreState::Error) {
    s->store_->set_state(o.hydrate.start_paused ? StoreState::Paused : StoreState::Streaming);
  } else {
    s->store_->set_state(StoreState::Streaming);  // resuming is a new try
  }
  TRY(s->store_->commit());
  if (!whole && (o.background || prefetching)) s->make_hydrator();
  return s;
}

Streamer::~Streamer() { (void)stop(); }

// A complete store needs no source. But when the user names one that answers, it must
// be the image the store was made from: a store never serves another image's data.
Result<void> Streamer::check_whole_store_source(const store::StoreHeader& h) {
  if (opt_.source.empty()) return ok();
  TRY_CTX(check_source_scheme(opt_.source), "source " + opt_.source);
  std::unique_ptr<source::Source> src;
  if (is_nbd_uri(opt_.source)) {
    source::NbdSourceOptions so;
    so.io_timeout = so.request_timeout = std::chrono::milliseconds(2000);
    auto r = source::NbdSource::open(opt_.source, so);
    if (r) src = std::move(*r);
  } else if (pack::is_pack_source(opt_.source)) {
    pack::PackOpenOptions po;
    po.blob.timeout = po.blob.connect_timeout = std::chrono::milliseconds(2000);
    auto r = pack::Pack::open(env_, opt_.source, po);
    if (r) src = std::make_unique<pack::PackSource>(std::move(*r));
  } else {
    auto r = source::FileSource::open(env_, opt_.source);
    if (r) src = std::move(*r);
  }
  if (stop_requested()) return Error{EINTR, "source " + opt_.source + ": interrupted"};
  if (!src) {
    LOG_INFO("store {} is complete; source {} not reachable, not needed", opt_.store_dir, opt_.source);
    return ok();
  }
  const bool same = src->size() == h.image_size && [&] {
    if (auto id = src->identity()) return *id == h.fingerprint;
    auto fp = fingerprint(*src, h.fingerprint_kind);
    return fp && *fp == h.fingerprint;
  }();
  src->close();
  if (stop_requested()) return Error{EINTR, "source " + opt_.source + ": interrupted"};
  if (!same)
    return Error{EEXIST, "store " + opt_.store_dir + " was made for another image than " +
                             opt_.source + " (made from " + h.source_uri + ")"};
  return ok();
}

void Streamer::start() {
  commit_thread_ = std::thread([this] { commit_loop(); });
  // The control socket is a convenience: a store path too long for a socket goes without.
  auto c = ControlServer::start(opt_.store_dir + "/" + kControlSocketName,
                                [this](const std::string& line) { return handle_command(line); });
  if (c) control_ = std::move(*c);
  else LOG_WARN("no control socket: {}", c.error().message);
  if (hydrator_) hydrator_->start();
}

void Streamer::interrupt() {
  if (hydrator_) hydrator_->request_stop();
  if (background_src_) background_src_->close();
  if (demand_src_) demand_src_->close();
}

Result<void> Streamer::stop() {
  {
    std::lock_guard lock(mu_);
    if (stopped_) return ok();
    stopped_ = stopping_ = true;
  }
  cv_.notify_all();
  if (hydrator_) hydrator_->stop();
  if (commit_thread_.joinable()) commit_thread_.join();
  control_.reset();
  // open() may have failed before the store existed.
  return store_ ? store_->commit(/*with_counters=*/true) : ok();
}

void Streamer::on_complete() {
  // The hydrator and the commit timer (when hydration is not running) may both see the
  // store complete: the first one lets the source go.
  if (completed_.exchange(true)) return;
  // Everything is local: make it durable, then let the source go.
  auto r = store_->commit();
  if (!r) {
    LOG_ERROR("final commit failed: {}", r.error().message);
    store_->set_state(StoreState::Error, r.error().message);
    return;
  }
  store_->set_state(StoreState::Complete);
  (void)store_->commit();
  device_->detach_source();
  if (background_src_) background_src_->close();
  if (demand_src_) demand_src_->close();
  store_->set_state(StoreState::Detached);
  r = store_->commit();
  if (!r) LOG_ERROR("commit failed: {}", r.error().message);
  LOG_INFO("hydration complete: {} detached from {}", opt_.store_dir, opt_.source);
  cv_.notify_all();
}

bool Streamer::wait_detached(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, timeout, [&] {
    return store_->state() == StoreState::Detached || stopping_;
  }) && store_->state() == StoreState::Detached;
}

void Streamer::commit_loop() {
  std::unique_lock lock(mu_);
  for (uint64_t tick = 1; !stopping_; ++tick) {
    cv_.wait_for(lock, kCommitInterval);
    if (stopping_) break;
    lock.unlock();
    // Without background hydration, demand reads alone may complete the store.
    if (!opt_.background && store_->complete() && store_->state() != StoreState::Detached)
      on_complete();
    sample_rate();
    auto r = store_->commit(tick % kCountersCommitTicks == 0);
    if (!r) LOG_WARN("periodic commit failed: {}", r.error().message);
    lock.lock();
  }
}

void Streamer::pause() {
  if (hydrator_) hydrator_->pause();
}
void Streamer::resume() {
  if (hydrator_) hydrator_->resume();
}
void Streamer::set_rate(uint64_t bps) {
  if (hydrator_) hydrator_->set_rate(bps);
}

namespace {

// An absolute path (the store as the user named it, from wherever they ran the command).
std::string absolute(const std::string& dir) {
  std::error_code ec;
  auto p = std::filesystem::absolute(dir, ec);
  return ec ? dir : p.lexically_normal().string();
}

// What the user can do about the state, or nothing when there is nothing to say.
std::optional<std::string> status_hint(StoreState state, bool running, const std::string& dir,
                                       const std::string& source,
                                       std::optional<double> retry_in_s) {
  if (state == StoreState::Detached)
    return running ? std::nullopt
                   : std::optional<std::string>("complete: the store holds the whole image");
  if (!running)
    return "no streamer runs on this store: figures as of its last commit; `imgstream stream " +
           (source.empty() ? std::string("SOURCE") : source) + " --store " + dir + "` goes on";
  if (state == StoreState::Error && retry_in_s)
    return fmt::format(
        "the source failed: hydration tries again by itself in {:.0f} s "
        "(`imgstream ctl {} resume`: now)",
        std::ceil(*retry_in_s), dir);
  if (state == StoreState::Error)
    return "the source failed: `imgstream ctl " + dir + " resume` tries again";
  if (state == StoreState::Paused) return "paused: `imgstream ctl " + dir + " resume` goes on";
  return std::nullopt;
}

std::optional<double> ratio(uint64_t part, uint64_t whole) {
  return whole > 0 ? std::optional<double>(double(part) / double(whole)) : std::nullopt;
}

// The fields of DESIGN.md's status object, from a store's header and numbers; shared by
// the live status and the status read from disk so that the two never differ in shape
// (a value that is not known is null, never left out; README.md's status section).
control::StreamStatus status_of(const store::StoreHeader& h, StoreState state, uint64_t present,
                                const store::Counters& c, const std::string& error,
                                const std::string& dir, bool running) {
  control::StreamStatus s;
  // `state` is what is happening now: an incomplete store that nothing streams is
  // "stopped", whatever it last committed; `stored_state` is that committed state.
  s.state = running || state == StoreState::Detached ? store::state_name(state) : "stopped";
  s.stored_state = store::state_name(state);
  s.daemon_running = running;
  s.image_size = h.image_size;
  s.region_size = h.region_size;
  s.regions_total = h.regions();
  s.regions_present = present;
  s.percent = h.regions() ? 100.0 * double(present) / double(h.regions()) : 100.0;
  s.bytes_fetched_demand = c.bytes_fetched_demand;
  s.bytes_fetched_background = c.bytes_fetched_background;
  s.bytes_prefetched = c.bytes_fetched_prefetch;
  s.prefetch_bytes_read = c.prefetch_bytes_read;
  s.bytes_seeded = c.bytes_seeded;
  s.prefetch_precision = ratio(c.prefetch_bytes_read, c.bytes_fetched_prefetch);
  s.reads_total = c.reads_total();
  s.reads_local = c.reads_local;
  s.reads_waited = c.reads_waited;
  s.reads_failed = c.reads_failed;
  s.wait_seconds = double(c.wait_ns) / 1e9;
  s.hit_ratio = ratio(c.reads_local, c.reads_total());
  s.source = h.source_uri;
  s.store = absolute(dir);
  if (!error.empty()) s.error = error;
  // Live values (Streamer::status()); what a store on disk says when nothing runs.
  if (present == h.regions()) s.eta_s = 0.0;
  s.hint = status_hint(state, running, absolute(dir), h.source_uri, std::nullopt);
  return s;
}

}  // namespace

control::StreamStatus Streamer::status() const {
  const StoreState state = store_->state();
  const uint64_t present = store_->regions_present();
  control::StreamStatus s = status_of(store_->header(), state, present, store_->counters(),
                                      store_->error_message(), opt_.store_dir, true);
  s.rate_limit = hydrator_ ? hydrator_->rate() : 0;
  const uint64_t left_bytes = (store_->regions() - present) * store_->region_size();
  {
    std::lock_guard lock(rate_mu_);
    s.rate_bytes_per_s = rate_.rate();
    if (auto eta = rate_.eta_seconds(present == store_->regions() ? 0 : left_bytes)) s.eta_s = *eta;
  }
  if (hydrator_) s.retry_in_s = hydrator_->retry_in_seconds();
  s.hint = status_hint(state, true, absolute(opt_.store_dir), store_->header().source_uri,
                       s.retry_in_s);
  if (!s.hint && hydrator_ && state == StoreState::Streaming) {
    if (const PaceState p = hydrator_->pace_state(); p != PaceState::Free)
      s.hint =
          std::string(p == PaceState::Booting ? "hydration holds back while the machine boots"
                                              : "hydration holds back while the machine is busy") +
          " and goes on once it is quiet (`stream --idle-after 0`: never)";
  }
  return s;
}

void Streamer::sample_rate() {
  const uint64_t fetched = store_->counters().bytes_fetched();
  std::lock_guard lock(rate_mu_);
  rate_.sample(fetched);
}

// The control socket has checked that the line is UTF-8 without control characters.
nlohmann::json Streamer::handle_command(const std::string& line) {
  auto request = control::decode_stream_request(line);
  if (!request) return control::error_reply(request.error().message);
  struct Run {
    Streamer& s;
    nlohmann::json operator()(const control::StatusRequest&) const { return s.status().to_json(); }
    nlohmann::json operator()(const control::PauseRequest&) const {
      s.pause();
      return control::Ok{}.to_json();
    }
    nlohmann::json operator()(const control::ResumeRequest&) const {
      s.resume();
      return control::Ok{}.to_json();
    }
    nlohmann::json operator()(const control::RateRequest& r) const {
      s.set_rate(r.bytes_per_s);
      return control::Ok{}.to_json();
    }
  };
  return std::visit(Run{*this}, *request);
}

Result<control::StreamStatus> stored_status(Env& env, const std::string& dir) {
  auto st = TRY(store::LocalStore::read_status(env, dir));
  return status_of(st.header, st.slot.state, st.slot.count_present(), st.slot.counters,
                     st.slot.error_message, dir, false);
}

}  // namespace imgstream::stream
