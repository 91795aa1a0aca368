// The control commands of a disk served under migration (`serve --track --control`,
// migrate/migrator.h), one line each, one JSON object back:
//
//   info                  the image, its size, the tracker's geometry and counts, the
//                         mirror's, whether the disk was switched (and to where)
//   begin fresh|resume    a new migration (every bit cleared: the full copy covers them)
//                         or one continued (regions a dead migrate had taken: dirty again)
//   take FROM MAX [END]   up to MAX changed regions in [FROM, END), as runs; they are pending
//   confirm | release     pending regions copied (dropped) | not copied (dirty again)
//   active URI [CONNS]    active mode: writes are mirrored to URI, a copier copies the rest
//   drain [MS]            (active) wait until the copier has copied every change, flush URI
//   passive               active mode off
//   hold [MS]             new requests wait, those in flight drain; for at most MS ms
//   resume                requests go on; says whether the hold had expired meanwhile
//   switch URI [CONNS]    (held) from now on the disk is the NBD export at URI: the
//                         machine goes on, on the migration's target
//
// A line of another shape (unknown command, a word too many, a bad number) gets
// {"error": ...} and changes nothing. Once switched, the disk is no longer the source of
// anything: begin, take, active and a second switch are refused.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "migrate/dirty_tracker.h"
#include "migrate/hold_device.h"
#include "migrate/mirror_device.h"
#include "migrate/nbd_target.h"
#include "migrate/remote_device.h"

namespace imgstream::migrate {

inline constexpr uint64_t kControlHoldMsMax = 600'000;
inline constexpr uint64_t kControlHoldMsDefault = 10'000;
inline constexpr uint64_t kControlTakeMax = 1u << 20;
inline constexpr unsigned kControlConnectionsMax = 64;
inline constexpr unsigned kControlConnectionsDefault = 4;
// A switch happens with the machine held: a dead target must fail fast.
inline constexpr std::chrono::seconds kSwitchConnectTimeout{5};

struct Migration {
  using OpenTarget = std::function<Result<std::unique_ptr<NbdTarget>>(
      const std::string& uri, unsigned connections, std::chrono::milliseconds timeout)>;

  std::string image, track;  // the image's absolute path; the tracking file
  DirtyTracker& tracker;
  MirrorDevice& mirror;
  HoldDevice& hold;
  // How targets are reached (NbdTarget::open; tests and the fuzz target replace it).
  OpenTarget open_target = [](const std::string& uri, unsigned connections,
                              std::chrono::milliseconds timeout) {
    return NbdTarget::open(uri, connections, timeout);
  };
  std::unique_ptr<RemoteDevice> switched;  // after a cutover
  std::string switched_to;
};

// Runs one command line. Never throws; every failure is {"error": "..."}.
nlohmann::json migration_command(const std::string& line, Migration& m);

}  // namespace imgstream::migrate
