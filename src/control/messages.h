// The control protocol's shared pieces (docs/control-protocol.md): a request is one line
// of words, a reply one JSON object. Both sockets (a streamer's STORE/ctl.sock,
// control/stream_messages.h, and serve --control's, control/migration_messages.h) define
// each message once, as a struct with its encoder and its decoder; the server decodes
// requests and encodes replies with them, the client the other way round, so that
// neither builds or takes apart a line or an object by hand.
//
// Decoders take untrusted input (a line from any local process, a reply from whatever
// listens on a socket) and never throw: every failure is an Error naming the field or
// the usage. Transport (bounded lines, UTF-8 checks, timeouts) is io/control.h's.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace imgstream::control {

// {"ok": true}: the reply of a request that answers nothing else.
struct Ok {
  nlohmann::json to_json() const;
  static Result<Ok> from_json(const nlohmann::json& j);
};

// {"error": MESSAGE}: the reply to a request that failed (and changed nothing, unless
// its message says otherwise).
nlohmann::json error_reply(std::string_view message);

// The error a reply carries, when it is an error reply: its message (a non-string
// "error" is dumped as JSON so that nothing is lost). Empty when the reply is no error,
// or its "error" is null (a status says so when the stream is well).
std::optional<std::string> reply_error(const nlohmann::json& j);

// The words of a request line, and the checks every request decoder makes of them.
using Words = std::vector<std::string_view>;
// Words [min_args, max_args] after the command word, or "usage: USAGE".
Result<void> arity(const Words& w, size_t min_args, size_t max_args, std::string_view usage);
// The number at w[i], at most max_value; `fallback` when there are fewer words.
Result<uint64_t> number_at(const Words& w, size_t i, std::string_view what, uint64_t fallback,
                           uint64_t max_value);

}  // namespace imgstream::control
