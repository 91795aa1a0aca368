// A control socket: a unix socket on which a running imgstream process answers one-line
// commands with one line of JSON (`imgstream status`, `ctl`, `migrate` talk to it).
// One command per connection; each connection is bounded (a line of at most
// kCommandBytesMax, 2 s to send it).
//
// Nothing a client sends can take the process down: a line that is too long, not UTF-8
// or holds control characters gets an error reply without reaching the handler, replies
// are dumped with invalid UTF-8 replaced (a stored path may hold any bytes), and the
// replies a client reads are taken apart with the non-throwing readers below.
//
// Lock contract: ControlServer answers on one thread of its own (thread_), one connection
// at a time, so the handler is never called concurrently with itself; it must be safe
// against the threads of whatever it reads (the streamer, the migration). The destructor
// stops and joins that thread. control_call() may be called from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/limits.h"
#include "base/result.h"
#include "base/unique_fd.h"
#include "io/socket.h"

namespace imgstream {

inline constexpr size_t kCommandBytesMax = limits::kControlCommandBytesMax;
inline constexpr size_t kReplyBytesMax = limits::kControlReplyBytesMax;

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

// The reply line (newline included) to one connection's bytes `raw`: the command is the
// text up to the first newline (a trailing CR dropped); `complete` says whether the client
// ended it (a newline, or the end of its stream) rather than being cut at
// kCommandBytesMax. Commands that are not valid UTF-8, hold control characters or are
// too long get {"error": ...} without reaching the handler. Never throws.
std::string control_reply(const ControlServer::Handler& h, std::string_view raw, bool complete);

// nlohmann::json::dump that never throws: invalid UTF-8 in strings becomes U+FFFD.
std::string dump_json(const nlohmann::json& j);

// Whether `s` is valid UTF-8 (no overlong forms, surrogates or code points past U+10FFFF).
bool valid_utf8(std::string_view s);

// The words of a command line (split at spaces), and its numbers, strictly: a bad number
// is an error naming it, never 0.
std::vector<std::string_view> command_words(std::string_view line);
Result<uint64_t> parse_u64_word(std::string_view word, std::string_view what);

// Typed fields of a JSON object from another process (a control reply, a state file):
// never throw; a missing field or one of another type is an Error naming the field.
Result<uint64_t> get_u64(const nlohmann::json& j, std::string_view key);
Result<bool> get_bool(const nlohmann::json& j, std::string_view key);
Result<double> get_double(const nlohmann::json& j, std::string_view key);  // any number
Result<std::string> get_string(const nlohmann::json& j, std::string_view key);
// [[a, b], ...] of unsigned integers.
Result<std::vector<std::pair<uint64_t, uint64_t>>> get_u64_pairs(const nlohmann::json& j,
                                                                 std::string_view key);
// Optional fields: the value when present and of the right type, else `fallback`.
uint64_t u64_or(const nlohmann::json& j, std::string_view key, uint64_t fallback);
bool bool_or(const nlohmann::json& j, std::string_view key, bool fallback);
double double_or(const nlohmann::json& j, std::string_view key, double fallback);
std::string string_or(const nlohmann::json& j, std::string_view key, std::string fallback);

}  // namespace imgstream
