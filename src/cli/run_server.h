// Runs an NBD server the way every serving command does: print the URIs, stop cleanly on
// SIGINT / SIGTERM, and in captive mode (--run CMD, as nbdkit's) run CMD with $uri set
// and stop when it exits, returning its exit status.
#pragma once

#include <functional>
#include <string>

#include "nbd/server.h"

namespace imgstream::cli {

// The address captive mode listens on when the user gave none: a unix socket in a fresh
// private directory (removed again by remove_private_socket).
Result<Address> private_socket();
void remove_private_socket(const Address& a);

// Serves until a stop signal (cli/stop_signals.h: the first one stops it gracefully) or, with a command, until the command exits. Returns the
// process exit status. `on_stop` runs once the stop is asked for, while the server still
// lets its clients' requests finish: what would keep them waiting (a source that does not
// answer) is let go there.
int run_server(nbd::Server& server, const std::string& export_name, const std::string& run_cmd,
               const std::function<void()>& on_stop = {});

}  // namespace imgstream::cli
