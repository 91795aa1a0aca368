#include "migrate/migrator.h"

#include <fmt/format.h>

#include <atomic>
#include <cerrno>
#include <mutex>
#include <thread>

#include "base/image_lock.h"
#include "base/log.h"
#include "base/units.h"
#include "control/migration_messages.h"
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
namespace msg = control::migration;
using Control = msg::Client;

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

// Bytes of data (not holes) in [from, to) of the image file.
Result<uint64_t> allocated_bytes(File& f, uint64_t from, uint64_t to) {
  uint64_t bytes = 0;
  for (uint64_t pos = from; pos < to;) {
    const uint64_t data = std::min(TRY(f.seek_data(pos)), to);
    if (data >= to) break;
    const uint64_t hole = std::min(TRY(f.seek_hole(data)), to);
    bytes += hole - data;
    pos = hole;
  }
  return bytes;
}

struct State {
  std::string target;
  uint64_t baseline_next = 0;
  bool baseline_done = false;
};

Result<void> write_state(Env& env, const std::string& path, const State& s) {
  const std::string text = dump_json(nlohmann::json{{"target", s.target},
                                                    {"baseline_next", s.baseline_next},
                                                    {"baseline_done", s.baseline_done}}) +
                           "\n";
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
  if (!size || *size > limits::kMigrationStateBytesMax) return std::nullopt;
  std::string text(*size, '\0');
  if (!read_exact_at(**f, 0, std::as_writable_bytes(std::span(text)))) return std::nullopt;
  auto j = nlohmann::json::parse(text, nullptr, false);
  // A damaged file (a field of another type) is no state: the migration starts afresh.
  auto target = get_string(j, "target");
  auto next = get_u64(j, "baseline_next");
  auto done = get_bool(j, "baseline_done");
  if (!target || !next || !done) return std::nullopt;
  return State{*target, *next, *done};
}

// Ends a cutover that has held the disk since `held_at`; `done` is how its copy, flush and
// switch went. With --finish hold and all done, the disk stays held (the caller releases
// it), which is checked: a hold that outlived its limit has lapsed and the machine wrote
// meanwhile. Otherwise the disk resumes. Returns the pause in ms.
Result<double> end_cutover(const Control& ctl, const MigrateOptions& o, Clock::time_point held_at,
                           Result<void> done) {
  if (done && o.finish == MigrateOptions::Finish::Hold) {
    if (!TRY(ctl.call(msg::InfoRequest{})).held)
      return Error{ETIMEDOUT, "the cutover took longer than the hold limit: run migrate again"};
    return since(held_at) * 1e3;
  }
  auto resumed = ctl.call(msg::ResumeRequest{});
  const double pause_ms = since(held_at) * 1e3;
  TRY(done);
  TRY(resumed);
  if (resumed->expired)
    return Error{ETIMEDOUT, fmt::format("the cutover took longer than the hold limit ({} ms): the "
                                        "disk was written meanwhile; run migrate again",
                                        o.hold_limit.count())};
  return pause_ms;
}

// A request that may wait for the hold limit: given that long, and a few seconds more.
int hold_timeout_s(const MigrateOptions& o) { return int(o.hold_limit.count() / 1000) + 5; }

void total_up(MigrateReport& rep, Clock::time_point t_start) {
  rep.bytes_total = rep.cutover_bytes;
  for (const RoundReport& r : rep.rounds) rep.bytes_total += r.bytes;
  rep.seconds = since(t_start);
}

// Active mode's wait: new writes are mirrored, so the changed set only shrinks; this
// returns the server's counts once what is left copies in about 50 ms at the copier's
// pace (or --converge), and gives up (mirroring off) when nothing moves for stall_limit.
Result<msg::InfoReply> wait_converged(const Control& ctl, const MigrateOptions& o,
                                      uint64_t region_size,
                                      const std::function<void(const std::string&)>& say) {
  const auto t = Clock::now();
  auto last_progress = t, last_say = t, last_sample = t;
  uint64_t last_moved = 0, last_dirty = UINT64_MAX, sample_copied = 0;
  double copy_rate = 0;  // bytes/s of the server's copier, smoothed
  for (;;) {
    const msg::InfoReply info = TRY(ctl.call(msg::InfoRequest{}));
    const uint64_t dirty = info.dirty, copied = info.copied_bytes;
    const uint64_t moved = copied + info.mirrored_bytes;
    if (const double dt = since(last_sample); dt >= 0.5) {
      const double r = double(copied - std::min(copied, sample_copied)) / dt;
      copy_rate = copy_rate == 0 ? r : 0.5 * copy_rate + 0.5 * r;
      sample_copied = copied;
      last_sample = Clock::now();
    }
    const uint64_t converge = o.converge_bytes
                                  ? o.converge_bytes
                                  : std::max<uint64_t>(64u << 10, uint64_t(copy_rate * 0.05));
    if (dirty * region_size <= converge) return info;
    if (moved != last_moved || dirty < last_dirty) last_progress = Clock::now();
    if (Clock::now() - last_progress > o.stall_limit) {
      (void)ctl.call(msg::PassiveRequest{});
      return Error{ETIMEDOUT, fmt::format("active mode: nothing reached the target for {} s ({} "
                                          "copies failed); run migrate again",
                                          o.stall_limit.count() / 1000, info.copy_failures)};
    }
    last_moved = moved;
    last_dirty = dirty;
    if (Clock::now() - last_say > std::chrono::seconds(1)) {
      last_say = Clock::now();
      say(fmt::format("active: {} changed regions left; {} mirrored, {} copied", dirty,
                      format_size(info.mirrored_bytes), format_size(copied)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

// Active mode's cutover: held, the server's copier finishes, the server flushes the
// target, then switches (or mirroring goes off). Returns the pause in ms.
Result<double> active_cutover(const Control& ctl, const MigrateOptions& o, unsigned connections,
                              const std::function<void(const std::string&)>& say) {
  const auto tp = Clock::now();
  TRY(ctl.call(msg::HoldRequest{uint64_t(o.hold_limit.count())}, hold_timeout_s(o)));
  const double held_ms = since(tp) * 1e3;  // the requests in flight finished
  auto drained = ctl.call(msg::DrainRequest{uint64_t(o.hold_limit.count())}, hold_timeout_s(o));
  const double drained_ms = since(tp) * 1e3;  // copied, and the target flushed
  Result<control::Ok> finished = control::Ok{};
  if (drained && o.finish == MigrateOptions::Finish::Switch)
    finished = ctl.call(msg::SwitchRequest{o.target, connections});
  else
    finished = ctl.call(msg::PassiveRequest{});
  say(fmt::format("cutover: held after {:.1f} ms, drained after {:.1f} ms, {} after {:.1f} ms",
                  held_ms, drained_ms,
                  o.finish == MigrateOptions::Finish::Switch ? "switched" : "mirroring off",
                  since(tp) * 1e3));
  Result<void> done = ok();
  if (!drained) done = std::move(drained).error();
  else if (!finished) done = std::move(finished).error();
  return end_cutover(ctl, o, tp, std::move(done));
}

// After round 0, in active mode: the server mirrors and copies; this waits until the
// changes left are few, then holds the disk while the server's copier finishes them.
// `connections`: what the target took when migrate connected (the server asks for no more).
Result<MigrateReport> migrate_active(const Control& ctl, const MigrateOptions& o,
                                     uint64_t region_size, unsigned connections,
                                     Clock::time_point t_start, MigrateReport rep,
                                     const std::function<void(const std::string&)>& say) {
  rep.active = true;
  TRY(ctl.call(msg::ActiveRequest{o.target, connections}, 60));
  RoundReport ra;
  const auto t = Clock::now();
  const msg::InfoReply info = TRY(wait_converged(ctl, o, region_size, say));
  ra.seconds = since(t);
  const uint64_t copied_before = info.copied_bytes;
  rep.pause_ms = TRY(active_cutover(ctl, o, connections, say));
  auto after = ctl.call(msg::InfoRequest{});  // the counters; the migration is done either way
  const msg::InfoReply& end = after ? *after : info;
  rep.mirrored_bytes = end.mirrored_bytes;
  rep.cutover_bytes = end.copied_bytes - std::min(end.copied_bytes, copied_before);
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

namespace {

// One migration under way: what migrate() works with, phase after phase.
struct Run {
  Env& env;
  const MigrateOptions& o;
  std::function<void(const std::string&)> say;
  Control ctl{o.control};
  bool live = !o.control.empty();
  std::string image_path = o.image, state_path;
  uint64_t region_size = 0, size = 0;
  std::unique_ptr<File> image;
  std::unique_ptr<NbdTarget> target;
  unsigned connections = 0;  // what the target took
  MigrateReport rep;
  Clock::time_point t_start = Clock::now();

  void progress(unsigned round, uint64_t done, uint64_t total) const {
    if (o.on_progress) o.on_progress(MigrateProgress{round, done, total});
  }
};

constexpr uint64_t kOfflineRegionBytes = 4096;

// The server's view of the disk (live), the image, the target.
Result<void> connect(Run& m) {
  if (m.live) {
    const msg::InfoReply info = TRY(m.ctl.call(msg::InfoRequest{}));
    // A disk already switched runs on its target: another copy would be of nothing.
    if (info.switched)
      return Error{EALREADY, "the disk served at " + m.o.control + " was switched to " +
                                 info.switched_to +
                                 " by a completed migration and runs there: nothing to migrate"};
    m.image_path = info.image;
    m.region_size = info.region_size;
    m.state_path = info.track + ".migration";
    if (m.region_size == 0) return Error::io("reply to 'info': region_size 0");
  }
  if (!m.live) m.region_size = kOfflineRegionBytes;  // no tracker: segments of whole pages
  m.image = TRY_CTX(m.env.open(m.image_path, OpenMode::ReadOnly), m.image_path);
  // Offline, the disk must not change while it is copied: no writer may hold it (QEMU's
  // locks, base/image_lock.h). Live, the serving process writes it and tracks the changes.
  if (!m.live) TRY(lock_image(*m.image, ImageUse::ReadStable));
  m.size = TRY(m.image->size());
  m.target = TRY(NbdTarget::open(m.o.target, m.o.connections, m.o.connect_timeout));
  m.connections = m.target->connections();
  if (!m.target->note().empty()) m.say(m.target->note());
  if (m.target->size() < m.size)
    return Error::invalid(m.o.target + " has " + std::to_string(m.target->size()) +
                          " bytes, the disk has " + std::to_string(m.size));
  return ok();
}

// Where round 0 starts: a migration to the same target stopped before continues there.
Result<State> begin(Run& m) {
  State st{m.o.target, 0, false};
  if (!m.live) return st;
  auto old = read_state(m.env, m.state_path);
  if (!old || old->target != m.o.target || old->baseline_next > m.size ||
      (m.region_size && old->baseline_next % m.region_size && old->baseline_next != m.size)) {
    // The full copy covers every change made before it.
    TRY(m.ctl.call(msg::BeginRequest{msg::BeginRequest::Mode::Fresh}));
    TRY(write_state(m.env, m.state_path, st));
    return st;
  }
  m.rep.resumed = true;
  // A dead migrate's taken regions: dirty again.
  TRY(m.ctl.call(msg::BeginRequest{msg::BeginRequest::Mode::Resume}));
  m.say(fmt::format("continuing the migration to {} (full copy {})", m.o.target,
                    old->baseline_done ? "done" : "at " + format_size(old->baseline_next)));
  // The stopped run's last writes may still be queued at the target, on connections
  // the target has not yet noticed are gone. One landing after this run's copy of
  // the same region would put old bytes there, so this run copies nothing before
  // they are done: at most connections x 4 MiB in flight, seconds even on a slow link.
  m.say(fmt::format("waiting {} s for the stopped run's writes still queued at the target",
                    kResumeGrace.count()));
  std::this_thread::sleep_for(kResumeGrace);
  return *old;
}

// The next segment's size: about kBaselineSegmentSeconds of copying at the pace of the
// last one (image bytes passed per second, holes included), at most twice the last (a
// run of holes is no promise about the data after it).
uint64_t next_segment_bytes(uint64_t last_bytes, double last_seconds) {
  const double pace = last_seconds > 0 ? double(last_bytes) / last_seconds : 0;
  const double want = pace > 0 ? pace * kBaselineSegmentSeconds : double(kBaselineSegmentBytesMax);
  const uint64_t cap = std::min(kBaselineSegmentBytesMax, 2 * last_bytes);
  return std::clamp<uint64_t>(uint64_t(want), kBaselineSegmentBytesMin,
                              std::max(cap, kBaselineSegmentBytesMin));
}

// Round 0: every allocated region, in segments; a checkpoint every checkpoint_seconds.
Result<RoundReport> full_copy(Run& m, Copier& copier, State st) {
  RoundReport r0;
  const auto t0 = Clock::now();
  uint64_t data = 0, total_data = 0;
  (void)TRY(extents(*m.image, 0, st.baseline_next, data));  // allocated before the cursor
  total_data = data + TRY(allocated_bytes(*m.image, st.baseline_next, m.size));
  auto last_checkpoint = Clock::now();
  uint64_t segment = kBaselineSegmentBytesMin;
  while (!st.baseline_done) {
    const auto ts = Clock::now();
    // Whole regions only: a region taken here must be copied whole here, or a write to
    // its other part made after this copy read it would be cleared with the next take
    // and never copied.
    const uint64_t aligned = (st.baseline_next + segment) / m.region_size * m.region_size;
    const uint64_t end = std::min(m.size, std::max(aligned, st.baseline_next + m.region_size));
    // The segment's changes so far are taken before it is read: this copy carries them.
    // A write from now on sets its bit again (bits are set after the data is written).
    if (m.live)
      TRY(m.ctl.call(msg::TakeRequest{st.baseline_next / m.region_size,
                                      (end - st.baseline_next) / m.region_size + 1,
                                      (end + m.region_size - 1) / m.region_size}));
    auto pieces = TRY(extents(*m.image, st.baseline_next, end, data));
    r0.bytes += TRY(copier.copy(pieces));
    segment = next_segment_bytes(end - st.baseline_next, since(ts));
    st.baseline_next = end;
    st.baseline_done = end == m.size;
    // A checkpoint every few seconds, not every segment: each costs syncs on both
    // sides (the target's flush, the tracking file, the state file). A migrate killed
    // between two continues from the last; what it had taken since is dirty again.
    if (st.baseline_done || since(last_checkpoint) >= m.o.checkpoint_seconds) {
      TRY(m.target->flush());
      if (m.live) {
        TRY(m.ctl.call(msg::ConfirmRequest{}));
        TRY(write_state(m.env, m.state_path, st));
      }
      last_checkpoint = Clock::now();
    }
    m.progress(0, data, std::max(total_data, data));
  }
  m.rep.allocated_bytes = data;
  r0.seconds = since(t0);
  return r0;
}

// Takes everything changed, copies it, makes it durable on the target, confirms.
// `round` and `total` are for the progress line.
Result<uint64_t> copy_changes(Run& m, Copier& copier, unsigned round, uint64_t total) {
  uint64_t bytes = 0;
  for (uint64_t from = 0;;) {
    const msg::Runs runs = TRY(m.ctl.call(msg::TakeRequest{from, kTakeRegionsMax, {}})).runs;
    if (runs.empty()) break;
    for (auto [first, count] : runs)
      if (count == 0 || first < from || first > UINT64_MAX / m.region_size - count)
        return Error::io(
            fmt::format("reply to 'take': run [{}, +{}) is not after {}", first, count, from));
    bytes += TRY(copier.copy(pieces_of(runs, m.region_size, m.size)));
    TRY(m.target->flush());
    TRY(m.ctl.call(msg::ConfirmRequest{}));
    from = runs.back().first + runs.back().second;
    m.progress(round, bytes, std::max(total, bytes));
  }
  return bytes;
}

Result<uint64_t> dirty_regions(Run& m) {
  return TRY(m.ctl.call(msg::InfoRequest{})).dirty;
}

// Rounds of changes until they are few (converge), stop shrinking, or max_rounds.
Result<void> rounds(Run& m, Copier& copier) {
  // The pace that decides the cutover is that of copying changed regions, scattered 4 KiB
  // pieces at a few hundred per megabyte, not round 0's sequential one (several times
  // faster): so until a round has measured it, only a tiny changed set cuts over.
  double rate = 0;
  uint64_t prev = m.rep.rounds.back().dirty_after;
  for (unsigned round = 1; round <= m.o.max_rounds; ++round) {
    const uint64_t converge = m.o.converge_bytes
                                  ? m.o.converge_bytes
                                  : std::max<uint64_t>(kConvergeMinBytes, uint64_t(rate * 0.1));
    if (prev * m.region_size <= converge) break;
    RoundReport rr;
    auto t = Clock::now();
    rr.bytes = TRY(copy_changes(m, copier, round, prev * m.region_size));
    rr.seconds = since(t);
    rr.dirty_after = TRY(dirty_regions(m));
    if (rr.seconds > 0 && rr.bytes > 0) rate = double(rr.bytes) / rr.seconds;
    m.rep.rounds.push_back(rr);
    m.say(fmt::format("round {}: {} in {:.2f} s; {} regions changed meanwhile", round,
                      format_size(rr.bytes), rr.seconds, rr.dirty_after));
    if (rr.dirty_after >= prev) break;  // not converging: stop and hold
    prev = rr.dirty_after;
  }
  return ok();
}

// Holds the disk, copies the last changes, flushes the target, switches (or not).
Result<void> cutover(Run& m, Copier& copier) {
  const auto tp = Clock::now();
  TRY(m.ctl.call(msg::HoldRequest{uint64_t(m.o.hold_limit.count())}, hold_timeout_s(m.o)));
  auto last = copy_changes(m, copier, unsigned(m.rep.rounds.size()), 0);
  const uint64_t last_bytes = last ? *last : 0;  // read before `last` is moved from
  Result<void> done = ok();
  if (!last) {
    done = std::move(last).error();
  } else if (auto flushed = m.target->flush(); !flushed) {
    done = std::move(flushed);
  } else if (m.o.finish == MigrateOptions::Finish::Switch) {
    m.target.reset();  // our connections go; the server opens its own
    if (auto switched = m.ctl.call(msg::SwitchRequest{m.o.target, m.connections});
        !switched)
      done = std::move(switched).error();
  }
  m.rep.pause_ms = TRY(end_cutover(m.ctl, m.o, tp, std::move(done)));
  m.rep.cutover_bytes = last_bytes;
  total_up(m.rep, m.t_start);
  (void)m.env.remove(m.state_path);
  m.say(fmt::format("cutover: {} copied while the disk was held for {:.1f} ms",
                    format_size(last_bytes), m.rep.pause_ms));
  return ok();
}

}  // namespace

Result<MigrateReport> migrate(Env& env, const MigrateOptions& o) {
  Run m{env, o, [&o](const std::string& s) {
          if (o.progress) o.progress(s);
        }};
  TRY(connect(m));
  Copier copier(*m.image, *m.target);
  const State st = TRY(begin(m));
  RoundReport r0 = TRY(full_copy(m, copier, st));
  if (!m.live) {
    m.rep.rounds.push_back(r0);
    m.rep.bytes_total = r0.bytes;
    m.rep.seconds = since(m.t_start);
    return m.rep;
  }
  r0.dirty_after = TRY(dirty_regions(m));
  m.rep.rounds.push_back(r0);
  m.say(fmt::format("round 0: {} in {:.1f} s; {} regions changed meanwhile", format_size(r0.bytes),
                    r0.seconds, r0.dirty_after));
  if (o.active) {
    m.target.reset();  // the server opens its own connections to the target
    auto r =
        migrate_active(m.ctl, o, m.region_size, m.connections, m.t_start, std::move(m.rep), m.say);
    if (r) (void)env.remove(m.state_path);
    return r;
  }
  TRY(rounds(m, copier));
  TRY(cutover(m, copier));
  return m.rep;
}

}  // namespace imgstream::migrate
