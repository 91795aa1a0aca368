// Migrator: `imgstream migrate`. Copies a disk to any NBD server while a machine keeps
// using it (the disk is served by `imgstream serve --track --control`), then the changes
// in rounds, then holds the machine's I/O for the last ones (the cutover).
//
//   round 0    every allocated region of the image (holes are zeroed on the target),
//              in segments of about half a second's copying each (4 to 256 MiB); before
//              a segment is read, the changes the tracker names inside it are taken (the
//              copy carries them: a region written ahead of the copy is copied once, not
//              again in round 1); every checkpoint_seconds the target is flushed and the
//              progress written to TRACK.migration, so a migrate killed here continues
//              there
//   round n    the regions changed since: taken from the tracker (two-phase: they stay
//              named in the tracking file until the target has them, flushed)
//   cutover    when the changed set is small (converge_bytes), stops shrinking, or
//              max_rounds is reached: hold (new requests wait, those in flight drain),
//              copy what is left, flush the target, release; the pause is measured
//
// Active mode (--active) replaces the rounds: after round 0 the server mirrors every
// write to the target before acknowledging it and copies the remaining changes itself
// (migrate/mirror_device.h), so a machine that writes faster than the link is slowed to
// the link's pace instead of outrunning the copy; the cutover waits for that copier.
//
// The data is read from the image file itself (the server names it), so the copy never
// queues behind the machine's requests and can go on while they are held.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/env.h"
#include "base/limits.h"
#include "base/result.h"

namespace imgstream::migrate {

// One WRITE to the target. Servers take payloads up to about 1-2 MiB on their fast path
// (imgstream serve: from its receive buffer, on the connection's thread; a larger one is
// copied to a buffer of its own and handed to a pool thread). With 4 MiB pieces round 0
// of bench/migrate.sh took 6-9 s under load, with 1 MiB pieces 3.2-3.4 s.
inline constexpr uint64_t kCopyPieceBytes = limits::kCopyPieceBytes;
inline constexpr uint64_t kConvergeMinBytes = limits::kConvergeMinBytes;
// Round 0's segments: sized to take about kBaselineSegmentSeconds at the pace measured, so
// that a checkpoint (taken between segments) comes on time on a slow link as on a fast one.
inline constexpr uint64_t kBaselineSegmentBytesMin = limits::kBaselineSegmentBytesMin;
inline constexpr uint64_t kBaselineSegmentBytesMax = limits::kBaselineSegmentBytesMax;
inline constexpr double kBaselineSegmentSeconds = 0.5;
inline constexpr double kCheckpointSecondsDefault = 2.0;  // round 0 makes its progress durable
inline constexpr size_t kTakeRegionsMax = limits::kTakeRegionsMax;
// A continued migration waits this long before it copies (see migrate()).
inline constexpr std::chrono::seconds kResumeGrace{3};

// Where a round stands, for a progress line: round 0 counts the image's allocated bytes
// (an estimate on a disk in use: the machine may allocate more meanwhile), a later round
// the changed bytes it started with.
struct MigrateProgress {
  unsigned round = 0;
  uint64_t bytes_done = 0;
  uint64_t bytes_total = 0;  // >= bytes_done; 0 when unknown (the cutover's last changes)
};

struct MigrateOptions {
  std::string control;  // the server's control socket (live), or empty
  std::string image;    // offline: the image to copy (no server)
  std::string target;   // NBD URI
  unsigned connections = 4;
  std::chrono::milliseconds connect_timeout{30'000};  // per attempt to reach the target
  unsigned max_rounds = 10;
  // Round 0 writes a checkpoint (a point a killed migrate continues from) after a segment
  // once this many seconds have passed since the last; 0: after every segment.
  double checkpoint_seconds = kCheckpointSecondsDefault;
  uint64_t converge_bytes = 0;  // 0: what copies in ~100 ms at the last round's pace, >= 4 MiB
  std::chrono::milliseconds hold_limit{10'000};
  bool active = false;  // live only: mirror writes after round 0 (see above)
  // Active mode gives up when the server's copier makes no progress for this long.
  std::chrono::milliseconds stall_limit{60'000};
  // After the cutover: the served disk switches to the target (the machine goes on
  // there), or stays on the source (resume), or stays held (for a test to compare).
  enum class Finish { Switch, Resume, Hold } finish = Finish::Switch;
  // Progress lines (one per event); may be null.
  std::function<void(const std::string&)> progress;
  // Called after each segment of round 0 and each batch of a later round; may be null.
  std::function<void(const MigrateProgress&)> on_progress;
};

struct RoundReport {
  uint64_t bytes = 0;
  double seconds = 0;
  uint64_t dirty_after = 0;  // regions changed when the round ended
};

struct MigrateReport {
  std::vector<RoundReport> rounds;  // [0] is the full copy
  uint64_t bytes_total = 0;
  uint64_t allocated_bytes = 0;
  uint64_t cutover_bytes = 0;
  bool active = false;
  uint64_t mirrored_bytes = 0;  // active: written to the target with the machine's writes
  double pause_ms = 0;
  double seconds = 0;
  bool resumed = false;  // continued a migration stopped before
  nlohmann::json to_json() const;
};

Result<MigrateReport> migrate(Env& env, const MigrateOptions& o);

}  // namespace imgstream::migrate
