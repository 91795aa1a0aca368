// The addresses a serving command (serve, stream) listens on, parsed and bound before it
// opens or creates anything else (issue 12: a bad --listen, an address in use or a socket
// path over 108 bytes was found only after a store directory had been made).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "base/result.h"
#include "io/socket.h"

namespace imgstream::cli {

// The parsed --listen values (EINVAL with a message naming the bad one: a usage error).
Result<std::vector<Address>> parse_listen_args(const std::vector<std::string>& listen);

// Bound listening sockets, for nbd::ServerOptions::bound. With no --listen: the default
// address, or in captive mode (--run) a unix socket in a private directory, which goes
// again with this object (after the listeners, which remove their socket files).
class BoundListen {
 public:
  BoundListen() = default;
  BoundListen(const BoundListen&) = delete;
  BoundListen& operator=(const BoundListen&) = delete;
  ~BoundListen();

  // Binds `addrs` (or the default / a private socket when empty); errors name the address.
  Result<void> bind(std::vector<Address> addrs, bool captive);

  std::vector<Address> addresses;   // as bound (a TCP port 0 replaced by the chosen one)
  std::vector<Listener> listeners;  // moved into the server's options

 private:
  std::optional<Address> private_;
};

}  // namespace imgstream::cli
