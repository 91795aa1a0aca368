// The messages of a streamer's control socket, STORE/ctl.sock (docs/control-protocol.md):
//
//   status          -> the status object (StreamStatus, DESIGN.md, README.md's status)
//   pause | resume  -> {"ok": true}    background hydration stops | goes on
//   rate BYTES      -> {"ok": true}    the hydration's rate limit in bytes/s (K/M/G
//                                      suffixes taken; 0: no limit)
//
// A line of another shape is {"error": ...} and changes nothing. The server is
// stream::Streamer (its ControlServer); the client is request_status() / request().
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "base/result.h"
#include "control/messages.h"

namespace imgstream::control {

inline constexpr const char* kStreamSocketName = "ctl.sock";  // in the store directory

struct StatusRequest {};
struct PauseRequest {};
struct ResumeRequest {};
struct RateRequest {
  uint64_t bytes_per_s = 0;  // 0: no limit
};
using StreamRequest = std::variant<StatusRequest, PauseRequest, ResumeRequest, RateRequest>;

std::string encode(const StreamRequest& r);  // the line, without its newline
Result<StreamRequest> decode_stream_request(std::string_view line);

// The status object: the same fields whether it comes from the running streamer or from
// the store on disk (then as of the last commit). A value not known is null (an empty
// optional), never left out.
struct StreamStatus {
  std::string state;         // what happens now: "stopped" when nothing streams an incomplete store
  std::string stored_state;  // the state as last committed
  bool daemon_running = false;
  uint64_t image_size = 0, region_size = 0, regions_total = 0, regions_present = 0;
  double percent = 0;
  uint64_t bytes_fetched_demand = 0, bytes_fetched_background = 0, bytes_prefetched = 0;
  uint64_t prefetch_bytes_read = 0, bytes_seeded = 0;
  std::optional<double> prefetch_precision;  // prefetch_bytes_read / bytes_prefetched
  uint64_t reads_total = 0, reads_local = 0, reads_waited = 0, reads_failed = 0;
  double wait_seconds = 0;
  std::optional<double> hit_ratio;  // reads_local / reads_total
  std::string source, store;        // the source's URI; the store's absolute path
  std::optional<std::string> error;
  std::optional<uint64_t> rate_limit;  // live only: bytes/s, 0 for none
  double rate_bytes_per_s = 0;
  std::optional<double> eta_s, retry_in_s;
  std::optional<std::string> hint;  // what the user can do about the state

  nlohmann::json to_json() const;
  // A status object; an error reply or an object without every field is an Error.
  static Result<StreamStatus> from_json(const nlohmann::json& j);
  bool operator==(const StreamStatus&) const = default;
};

// The client. Both return ECONNREFUSED / ENOENT when no streamer runs on store `dir`,
// ETIMEDOUT when one does but does not answer in time, EBADMSG when the reply is not
// the one asked for (request_status: an error reply is EBADMSG too, with its message),
// and (request) EREMOTEIO with the streamer's message when it refused.
Result<StreamStatus> request_status(const std::string& dir);
Result<void> request(const std::string& dir, const StreamRequest& r);

}  // namespace imgstream::control
