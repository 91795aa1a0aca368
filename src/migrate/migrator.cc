#include "migrate/migrator.h"

#include <fmt/format.h>

#include <atomic>
#include <cerrno>
#include <mutex>
#include <thread>

#include "base/image_lock.h"
#include "base/log.h"
#include "base/units.h"
#include "io/control.h"
#include "migrate/nbd_target.h"

namespace imgstream::migrate {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct Piece {
  uint64_t offset = 0, length = 0;
  bool zero = false;  // a hole: zeroed on the target, not read
};

// The server side of a live migration, over its control socket.
class Control {
 public:
  explicit Control(std::string path) : path_(std::move(path)) {}
  Result<nlohmann::json> call(const std::string& cmd, int timeout_s = 30) {
    auto r = control_call(path_, cmd, timeout_s);
    if (!r && (r.error().code == ECONNREFUSED || r.error().code == ENOENT))
      return Error{r.error().code,
                   "no imgstream serve --control answers at " + path_ + " (" + r.error().message +
                       "); a migration stopped with its server continues when both run again"};
    auto j = TRY_CTX(std::move(r), "control socket " + path_);
    if (j.contains("error")) return Error::io(path_ + ": " + cmd + ": " + j["error"].get<std::string>());
    return j;
  }

 private:
  std::string path_;
};

class Copier {
 public:
  Copier(File& image, NbdTarget& target) : image_(image), target_(target) {}

  // Copies the pieces with one worker per target connection; returns the bytes moved.
  Result<uint64_t> copy(const std::vector<Piece>& pieces) {
    std::atomic<size_t> next{0};
    std::atomic<uint64_t> bytes{0};
    std::mutex mu;
    Result<void> failed = ok();
    auto work = [&](unsigned conn) {
      // Writes are pipelined on the worker's connection (several in flight): a round of
      // scattered 4 KiB regions would otherwise wait one round trip per region.
      NbdTarget::Pipeline pipe(target_, conn);
      const auto fail = [&](Result<void> r) {
        std::lock_guard lock(mu);
        if (failed) failed = std::move(r);
        next = pieces.size();
      };
      for (size_t i; (i = next.fetch_add(1)) < pieces.size();) {
        const Piece& p = pieces[i];
        Result<void> r = p.zero ? target_.zero(conn, p.offset, p.length) : [&]() -> Result<void> {
          auto b = TRY(pipe.buffer(p.length));
          TRY(read_exact_at(image_, p.offset, b));
          return pipe.write(p.offset);
        }();
        if (!r) return fail(std::move(r));
        if (!p.zero) bytes += p.length;
      }
      if (auto r = pipe.finish(); !r) fail(std::move(r));
    };
    std::vector<std::thread> threads;
    for (unsigned c = 0; c < target_.connections(); ++c) threads.emplace_back(work, c);
    for (auto& t : threads) t.join();
    TRY(failed);
    return bytes.load();
  }

 private:
  File& image_;
  NbdTarget& target_;
};

// Runs of regions -> pieces of at most kCopyPieceBytes, clipped to the image.
std::vector<Piece> pieces_of(const std::vector<std::pair<uint64_t, uint64_t>>& runs,
                             uint64_t region_size, uint64_t image_size) {
  std::vector<Piece> out;
  for (auto [first, count] : runs) {
    const uint64_t a = first * region_size, b = std::min(image_size, (first + count) * region_size);
    for (uint64_t at = a; at < b; at += kCopyPieceBytes)
      out.push_back(Piece{at, std::min(kCopyPieceBytes, b - at), false});
  }
  return out;
}

// Data and holes of [from, to) of the image file.
Result<std::vector<Piece>> extents(File& f, uint64_t from, uint64_t to, uint64_t& data_bytes) {
  std::vector<Piece> out;
  for (uint64_t pos = from; pos < to;) {
    uint64_t data = std::min(TRY(f.seek_data(pos)), to);
    if (data > pos) out.push_back(Piece{pos, data - pos, true});
    if (data >= to) break;
    const uint64_t hole = std::min(TRY(f.seek_hole(data)), to);
    for (uint64_t at = data; at < hole; at += kCopyPieceBytes) {
      out.push_back(Piece{at, std::min(kCopyPieceBytes, hole - at), false});
      data_bytes += out.back().length;
    }
    pos = hole;
  }
  return out;
}

struct State {
  std::string target;
  uint64_t baseline_next = 0;
  bool baseline_done = false;
};

Result<void> write_state(Env& env, const std::string& path, const State& s) {
  const std::string text = nlohmann::json{{"target", s.target},
                                          {"baseline_next", s.baseline_next},
                                          {"baseline_done", s.baseline_done}}
                               .dump() + "\n";
  const std::string tmp = path + ".tmp";
  auto f = TRY(env.open(tmp, OpenMode::CreateOrOpen));
  TRY(f->truncate(0));
  TRY(write_all_at(*f, 0, std::as_bytes(std::span(text))));
  TRY(f->sync());
  return env.rename(tmp, path);
}

std::optional<State> read_state(Env& env, const std::string& path) {
  auto f = env.open(path, OpenMode::ReadOnly);
  if (!f) return std::nullopt;
  auto size = (*f)->size();
  if (!size || *size > 4096) return std::nullopt;
  std::string text(*size, '\0');
  if (!read_exact_at(**f, 0, std::as_writable_bytes(std::span(text)))) return std::nullopt;
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  return State{j.value("target", ""), j.value("baseline_next", uint64_t{0}),
               j.value("baseline_done", false)};
}

std::vector<std::pair<uint64_t, uint64_t>> runs_of(const nlohmann::json& j) {
  std::vector<std::pair<uint64_t, uint64_t>> runs;
  for (const auto& r : j.at("runs")) runs.emplace_back(r.at(0).get<uint64_t>(), r.at(1).get<uint64_t>());
  return runs;
}

// Ends a cutover that has held the disk since `held_at`; `done` is how its copy, flush and
// switch went. With --finish hold and all done, the disk stays held (the caller releases
// it), which is checked: a hold that outlived its limit has lapsed and the machine wrote
// meanwhile. Otherwise the disk resumes. Returns the pause in ms.
Result<double> end_cutover(Control& ctl, const MigrateOptions& o, Clock::time_point held_at,
                           Result<void> done) {
  if (done && o.finish == MigrateOptions::Finish::Hold) {
    auto info = TRY(ctl.call("info"));
    if (!info.value("held", false))
      return Error{ETIMEDOUT, "the cutover took longer than the hold limit: run migrate again"};
    return since(held_at) * 1e3;
  }
  auto resumed = ctl.call("resume");
  const double pause_ms = since(held_at) * 1e3;
  TRY(done);
  TRY(resumed);
  if (resumed->value("expired", false))
    return Error{ETIMEDOUT, fmt::format("the cutover took longer than the hold limit ({} ms): the "
                                        "disk was written meanwhile; run migrate again",
                                        o.hold_limit.count())};
  return pause_ms;
}

void total_up(MigrateReport& rep, Clock::time_point t_start) {
  rep.bytes_total = rep.cutover_bytes;
  for (const RoundReport& r : rep.rounds) rep.bytes_total += r.bytes;
  rep.seconds = since(t_start);
}

// After round 0, in active mode: the server mirrors and copies; this waits until the
// changes left are few, then holds the disk while the server's copier finishes them.
Result<MigrateReport> migrate_active(Control& ctl, const MigrateOptions& o, uint64_t region_size,
                                     Clock::time_point t_start, MigrateReport rep,
                                     const std::function<void(const std::string&)>& say) {
  rep.active = true;
  TRY(ctl.call(fmt::format("active {} {}", o.target, o.connections), 60));
  // New writes are mirrored, so the changed set only shrinks: wait until what is left
  // copies in about 50 ms at the copier's pace (or --converge), then cut over.
  RoundReport ra;
  const auto t = Clock::now();
  auto last_progress = t, last_say = t, last_sample = t;
  uint64_t last_moved = 0, last_dirty = UINT64_MAX, sample_copied = 0;
  double copy_rate = 0;  // bytes/s of the server's copier, smoothed
  nlohmann::json info;
  for (;;) {
    info = TRY(ctl.call("info"));
    const uint64_t dirty = info.at("dirty").get<uint64_t>();
    const uint64_t copied = info.at("copied_bytes").get<uint64_t>();
    const uint64_t moved = copied + info.at("mirrored_bytes").get<uint64_t>();
    if (const double dt = since(last_sample); dt >= 0.5) {
      const double r = double(copied - std::min(copied, sample_copied)) / dt;
      copy_rate = copy_rate == 0 ? r : 0.5 * copy_rate + 0.5 * r;
      sample_copied = copied;
      last_sample = Clock::now();
    }
    const uint64_t converge = o.converge_bytes
                                  ? o.converge_bytes
                                  : std::max<uint64_t>(64u << 10, uint64_t(copy_rate * 0.05));
    if (dirty * region_size <= converge) break;
    if (moved != last_moved || dirty < last_dirty) last_progress = Clock::now();
    if (Clock::now() - last_progress > o.stall_limit) {
      (void)ctl.call("passive");
      return Error{ETIMEDOUT, fmt::format("active mode: nothing reached the target for {} s ({} "
                                          "copies failed); run migrate again",
                                          o.stall_limit.count() / 1000,
                                          info.value("copy_failures", uint64_t{0}))};
    }
    last_moved = moved;
    last_dirty = dirty;
    if (Clock::now() - last_say > std::chrono::seconds(1)) {
      last_say = Clock::now();
      say(fmt::format("active: {} changed regions left; {} mirrored, {} copied", dirty,
                      format_size(info.at("mirrored_bytes").get<uint64_t>()),
                      format_size(info.at("copied_bytes").get<uint64_t>())));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ra.seconds = since(t);
  const uint64_t copied_before = info.at("copied_bytes").get<uint64_t>();

  // Cutover: held, the copier finishes, the server flushes the target.
  const auto tp = Clock::now();
  TRY(ctl.call(fmt::format("hold {}", o.hold_limit.count()), int(o.hold_limit.count() / 1000) + 5));
  const double held_ms = since(tp) * 1e3;  // the requests in flight finished
  auto drained = ctl.call(fmt::format("drain {}", o.hold_limit.count()),
                          int(o.hold_limit.count() / 1000) + 5);
  const double drained_ms = since(tp) * 1e3;  // copied, and the target flushed
  Result<nlohmann::json> finished = nlohmann::json::object();
  if (drained && o.finish == MigrateOptions::Finish::Switch)
    finished = ctl.call("switch " + o.target);
  else
    finished = ctl.call("passive");
  say(fmt::format("cutover: held after {:.1f} ms, drained after {:.1f} ms, {} after {:.1f} ms",
                  held_ms, drained_ms,
                  o.finish == MigrateOptions::Finish::Switch ? "switched" : "mirroring off",
                  since(tp) * 1e3));
  Result<void> done = ok();
  if (!drained) done = std::move(drained).error();
  else if (!finished) done = std::move(finished).error();
  rep.pause_ms = TRY(end_cutover(ctl, o, tp, std::move(done)));
  auto after = ctl.call("info");  // the counters; the migration is done either way
  const nlohmann::json& end = after ? *after : info;
  rep.mirrored_bytes = end.at("mirrored_bytes").get<uint64_t>();
  const uint64_t copied = end.at("copied_bytes").get<uint64_t>();
  rep.cutover_bytes = copied - std::min(copied, copied_before);
  ra.bytes = rep.mirrored_bytes + copied_before;
  rep.rounds.push_back(ra);
  total_up(rep, t_start);
  say(fmt::format("cutover: {} copied while the disk was held for {:.1f} ms ({} mirrored "
                  "with the machine's writes)",
                  format_size(rep.cutover_bytes), rep.pause_ms, format_size(rep.mirrored_bytes)));
  return rep;
}

}  // namespace

nlohmann::json MigrateReport::to_json() const {
  nlohmann::json rs = nlohmann::json::array();
  for (const RoundReport& r : rounds)
    rs.push_back({{"bytes", r.bytes}, {"seconds", r.seconds}, {"dirty_after", r.dirty_after}});
  return {{"rounds", rs},
          {"bytes_total", bytes_total},
          {"allocated_bytes", allocated_bytes},
          {"bytes_over_allocated", allocated_bytes ? double(bytes_total) / double(allocated_bytes) : 0.0},
          {"cutover_bytes", cutover_bytes},
          {"active", active},
          {"mirrored_bytes", mirrored_bytes},
          {"pause_ms", pause_ms},
          {"seconds", seconds},
          {"resumed", resumed}};
}

Result<MigrateReport> migrate(Env& env, const MigrateOptions& o) {
  const auto t_start = Clock::now();
  auto say = [&](const std::string& s) {
    if (o.progress) o.progress(s);
  };
  const bool live = !o.control.empty();
  Control ctl(o.control);
  std::string image_path = o.image, state_path;
  uint64_t region_size = 0;
  if (live) {
    auto info = TRY(ctl.call("info"));
    image_path = info.at("image").get<std::string>();
    region_size = info.at("region_size").get<uint64_t>();
    state_path = info.at("track").get<std::string>() + ".migration";
  }
  auto image = TRY_CTX(env.open(image_path, OpenMode::ReadOnly), image_path);
  // Offline, the disk must not change while it is copied: no writer may hold it (QEMU's
  // locks, base/image_lock.h). Live, the serving process writes it and tracks the changes.
  if (!live) TRY(lock_image(*image, ImageUse::ReadStable));
  const uint64_t size = TRY(image->size());
  auto target = TRY(NbdTarget::open(o.target, o.connections, o.connect_timeout));
  if (target->size() < size)
    return Error::invalid(o.target + " has " + std::to_string(target->size()) +
                          " bytes, the disk has " + std::to_string(size));
  Copier copier(*image, *target);
  MigrateReport rep;

  // Round 0, or what is left of it.
  State st{o.target, 0, false};
  if (live) {
    auto old = read_state(env, state_path);
    if (old && old->target == o.target) {
      st = *old;
      rep.resumed = true;
      TRY(ctl.call("begin resume"));  // a dead migrate's taken regions: dirty again
      say(fmt::format("continuing the migration to {} (full copy {})", o.target,
                      st.baseline_done ? "done" : "at " + format_size(st.baseline_next)));
      // The stopped run's last writes may still be queued at the target, on connections
      // the target has not yet noticed are gone. One landing after this run's copy of
      // the same region would put old bytes there, so this run copies nothing before
      // they are done: at most connections x 4 MiB in flight, seconds even on a slow link.
      say(fmt::format("waiting {} s for the stopped run's writes still queued at the target",
                      kResumeGrace.count()));
      std::this_thread::sleep_for(kResumeGrace);
    } else {
      TRY(ctl.call("begin fresh"));  // the full copy covers every change made before it
      TRY(write_state(env, state_path, st));
    }
  }
  RoundReport r0;
  auto t0 = Clock::now();
  {
    uint64_t data = 0;
    (void)TRY(extents(*image, 0, st.baseline_next, data));  // allocated before the cursor
    auto last_checkpoint = Clock::now();
    while (!st.baseline_done) {
      const uint64_t end = std::min(size, st.baseline_next + kBaselineSegmentBytes);
      // The segment's changes so far are taken before it is read: this copy carries them.
      // A write from now on sets its bit again (bits are set after the data is written).
      if (live)
        TRY(ctl.call(fmt::format("take {} {} {}", st.baseline_next / region_size,
                                 kBaselineSegmentBytes / region_size + 1,
                                 (end + region_size - 1) / region_size)));
      auto pieces = TRY(extents(*image, st.baseline_next, end, data));
      r0.bytes += TRY(copier.copy(pieces));
      st.baseline_next = end;
      st.baseline_done = end == size;
      // A checkpoint every few seconds, not every segment: each costs syncs on both
      // sides (the target's flush, the tracking file, the state file). A migrate killed
      // between two continues from the last; what it had taken since is dirty again.
      if (st.baseline_done || since(last_checkpoint) >= o.checkpoint_seconds) {
        TRY(target->flush());
        if (live) {
          TRY(ctl.call("confirm"));
          TRY(write_state(env, state_path, st));
        }
        last_checkpoint = Clock::now();
      }
      say(fmt::format("round 0: {} of {} ({} copied)", format_size(end), format_size(size),
                      format_size(r0.bytes)));
    }
    rep.allocated_bytes = data;
  }
  r0.seconds = since(t0);
  if (!live) {
    rep.rounds.push_back(r0);
    rep.bytes_total = r0.bytes;
    rep.seconds = since(t_start);
    return rep;
  }

  // Takes everything changed, copies it, makes it durable on the target, confirms.
  auto copy_changes = [&]() -> Result<uint64_t> {
    uint64_t bytes = 0;
    for (uint64_t from = 0;;) {
      auto j = TRY(ctl.call(fmt::format("take {} {}", from, kTakeRegionsMax)));
      auto runs = runs_of(j);
      if (runs.empty()) break;
      bytes += TRY(copier.copy(pieces_of(runs, region_size, size)));
      TRY(target->flush());
      TRY(ctl.call("confirm"));
      from = runs.back().first + runs.back().second;
    }
    return bytes;
  };
  auto dirty = [&]() -> Result<uint64_t> { return TRY(ctl.call("info")).at("dirty").get<uint64_t>(); };

  r0.dirty_after = TRY(dirty());
  rep.rounds.push_back(r0);
  say(fmt::format("round 0: {} in {:.1f} s; {} regions changed meanwhile", format_size(r0.bytes),
                  r0.seconds, r0.dirty_after));
  if (o.active) {
    target.reset();  // the server opens its own connections to the target
    auto r = migrate_active(ctl, o, region_size, t_start, std::move(rep), say);
    if (r) (void)env.remove(state_path);
    return r;
  }
  // The pace that decides the cutover is that of copying changed regions, scattered 4 KiB
  // pieces at a few hundred per megabyte, not round 0's sequential one (several times
  // faster): so until a round has measured it, only a tiny changed set cuts over.
  double rate = 0;
  uint64_t prev = r0.dirty_after;
  for (unsigned round = 1; round <= o.max_rounds; ++round) {
    const uint64_t converge = o.converge_bytes
                                  ? o.converge_bytes
                                  : std::max<uint64_t>(kConvergeMinBytes, uint64_t(rate * 0.1));
    if (prev * region_size <= converge) break;
    RoundReport rr;
    auto t = Clock::now();
    rr.bytes = TRY(copy_changes());
    rr.seconds = since(t);
    rr.dirty_after = TRY(dirty());
    if (rr.seconds > 0 && rr.bytes > 0) rate = double(rr.bytes) / rr.seconds;
    rep.rounds.push_back(rr);
    say(fmt::format("round {}: {} in {:.2f} s; {} regions changed meanwhile", round,
                    format_size(rr.bytes), rr.seconds, rr.dirty_after));
    if (rr.dirty_after >= prev) break;  // not converging: stop and hold
    prev = rr.dirty_after;
  }

  // Cutover.
  const auto tp = Clock::now();
  TRY(ctl.call(fmt::format("hold {}", o.hold_limit.count()), int(o.hold_limit.count() / 1000) + 5));
  auto last = copy_changes();
  Result<void> flushed = last ? target->flush() : ok();
  Result<void> done = ok();
  if (!last) {
    done = std::move(last).error();
  } else if (auto flushed = target->flush(); !flushed) {
    done = std::move(flushed);
  } else if (o.finish == MigrateOptions::Finish::Switch) {
    target.reset();  // our connections go; the server opens its own
    if (auto switched = ctl.call("switch " + o.target); !switched) done = std::move(switched).error();
  }
  rep.pause_ms = TRY(end_cutover(ctl, o, tp, std::move(done)));
  rep.cutover_bytes = *last;
  total_up(rep, t_start);
  (void)env.remove(state_path);
  say(fmt::format("cutover: {} copied while the disk was held for {:.1f} ms", format_size(*last),
                  rep.pause_ms));
  return rep;
}

}  // namespace imgstream::migrate
