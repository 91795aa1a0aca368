// The server of the control socket of a disk served under migration (`serve --track
// --control`, migrate/migrator.h is its client): the commands, their replies and their
// checks are control/migration_messages.h's (docs/control-protocol.md); this runs them.
// A line of another shape gets {"error": ...} and changes nothing. Once switched, the
// disk is no longer the source of anything: begin, take, active and a second switch are
// refused.
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
