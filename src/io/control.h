// A control socket: a unix socket on which a running imgstream process answers one-line
// commands with one line of JSON (`imgstream status`, `ctl`, `migrate` talk to it).
// One command per connection; each connection is bounded (a short line, 2 s to send it).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "base/result.h"
#include "base/unique_fd.h"
#include "io/socket.h"

namespace imgstream {

class ControlServer {
 public:
  using Handler = std::function<nlohmann::json(const std::string& line)>;
  // Listens on `path` (replacing a stale socket, never another file or a live socket:
  // io/socket.h) and answers on a thread of its own.
  static Result<std::unique_ptr<ControlServer>> start(const std::string& path, Handler h);
  ~ControlServer();  // stops the thread and removes the socket file it bound

 private:
  ControlServer() = default;
  void loop();

  std::string path_;
  Handler handler_;
  Listener fd_;    // removes the socket file it bound, and only that one
  UniqueFd wake_;  // eventfd that ends loop()
  std::thread thread_;
};

// Sends one command to the control socket at `path` and returns its JSON reply.
// ECONNREFUSED / ENOENT when nothing listens there.
Result<nlohmann::json> control_call(const std::string& path, const std::string& command,
                                    int timeout_s = 5);

}  // namespace imgstream
