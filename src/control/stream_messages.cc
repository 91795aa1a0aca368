#include "control/stream_messages.h"

#include <cerrno>

#include "base/units.h"
#include "io/control.h"

namespace imgstream::control {

using nlohmann::json;

namespace {

constexpr const char* kStreamUsage = "status | pause | resume | rate BYTES_PER_S";

struct Encoder {
  std::string operator()(const StatusRequest&) const { return "status"; }
  std::string operator()(const PauseRequest&) const { return "pause"; }
  std::string operator()(const ResumeRequest&) const { return "resume"; }
  std::string operator()(const RateRequest& r) const {
    return "rate " + std::to_string(r.bytes_per_s);
  }
};

json nullable(const std::optional<double>& v) {
  return v ? json(*v) : json(nullptr);
}
json nullable(const std::optional<uint64_t>& v) {
  return v ? json(*v) : json(nullptr);
}
json nullable(const std::optional<std::string>& v) {
  return v ? json(*v) : json(nullptr);
}

// A field that is null or of its type: present and null is an empty optional; missing,
// or of another type, an Error.
template <class T, class Get>
Result<std::optional<T>> nullable_field(const json& j, std::string_view key, Get get) {
  if (auto it = j.find(std::string(key)); it != j.end() && it->is_null()) return std::optional<T>();
  return std::optional<T>(TRY(get(j, key)));
}

}  // namespace

std::string encode(const StreamRequest& r) {
  return std::visit(Encoder{}, r);
}

Result<StreamRequest> decode_stream_request(std::string_view line) {
  const Words w = command_words(line);
  const std::string_view cmd = w.empty() ? std::string_view() : w[0];
  if (cmd != "status" && cmd != "pause" && cmd != "resume" && cmd != "rate")
    return Error::invalid("unknown command '" + std::string(cmd) + "'");
  if (cmd == "rate") {
    TRY(arity(w, 1, 1, kStreamUsage));
    return StreamRequest(RateRequest{TRY(parse_size(w[1]))});
  }
  TRY(arity(w, 0, 0, kStreamUsage));
  if (cmd == "status") return StreamRequest(StatusRequest{});
  if (cmd == "pause") return StreamRequest(PauseRequest{});
  return StreamRequest(ResumeRequest{});
}

json StreamStatus::to_json() const {
  return json{{"state", state},
              {"stored_state", stored_state},
              {"daemon_running", daemon_running},
              {"image_size", image_size},
              {"region_size", region_size},
              {"regions_total", regions_total},
              {"regions_present", regions_present},
              {"percent", percent},
              {"bytes_fetched_demand", bytes_fetched_demand},
              {"bytes_fetched_background", bytes_fetched_background},
              {"bytes_prefetched", bytes_prefetched},
              {"prefetch_bytes_read", prefetch_bytes_read},
              {"bytes_seeded", bytes_seeded},
              {"prefetch_precision", nullable(prefetch_precision)},
              {"reads_total", reads_total},
              {"reads_local", reads_local},
              {"reads_waited", reads_waited},
              {"reads_failed", reads_failed},
              {"wait_seconds", wait_seconds},
              {"hit_ratio", nullable(hit_ratio)},
              {"source", source},
              {"store", store},
              {"error", nullable(error)},
              {"rate_limit", nullable(rate_limit)},
              {"rate_bytes_per_s", rate_bytes_per_s},
              {"eta_s", nullable(eta_s)},
              {"retry_in_s", nullable(retry_in_s)},
              {"hint", nullable(hint)}};
}

Result<StreamStatus> StreamStatus::from_json(const json& j) {
  // An error reply has no state; its message is the error.
  if (!j.is_object() || !j.contains("state"))
    return Error{EBADMSG, reply_error(j).value_or("the reply is no status")};
  StreamStatus s;
  s.state = TRY(get_string(j, "state"));
  s.stored_state = TRY(get_string(j, "stored_state"));
  s.daemon_running = TRY(get_bool(j, "daemon_running"));
  s.image_size = TRY(get_u64(j, "image_size"));
  s.region_size = TRY(get_u64(j, "region_size"));
  s.regions_total = TRY(get_u64(j, "regions_total"));
  s.regions_present = TRY(get_u64(j, "regions_present"));
  s.percent = TRY(get_double(j, "percent"));
  s.bytes_fetched_demand = TRY(get_u64(j, "bytes_fetched_demand"));
  s.bytes_fetched_background = TRY(get_u64(j, "bytes_fetched_background"));
  s.bytes_prefetched = TRY(get_u64(j, "bytes_prefetched"));
  s.prefetch_bytes_read = TRY(get_u64(j, "prefetch_bytes_read"));
  s.bytes_seeded = TRY(get_u64(j, "bytes_seeded"));
  s.prefetch_precision = TRY(nullable_field<double>(j, "prefetch_precision", get_double));
  s.reads_total = TRY(get_u64(j, "reads_total"));
  s.reads_local = TRY(get_u64(j, "reads_local"));
  s.reads_waited = TRY(get_u64(j, "reads_waited"));
  s.reads_failed = TRY(get_u64(j, "reads_failed"));
  s.wait_seconds = TRY(get_double(j, "wait_seconds"));
  s.hit_ratio = TRY(nullable_field<double>(j, "hit_ratio", get_double));
  s.source = TRY(get_string(j, "source"));
  s.store = TRY(get_string(j, "store"));
  s.error = TRY(nullable_field<std::string>(j, "error", get_string));
  s.rate_limit = TRY(nullable_field<uint64_t>(j, "rate_limit", get_u64));
  s.rate_bytes_per_s = TRY(get_double(j, "rate_bytes_per_s"));
  s.eta_s = TRY(nullable_field<double>(j, "eta_s", get_double));
  s.retry_in_s = TRY(nullable_field<double>(j, "retry_in_s", get_double));
  s.hint = TRY(nullable_field<std::string>(j, "hint", get_string));
  return s;
}

namespace {

std::string socket_of(const std::string& dir) {
  return dir + "/" + kStreamSocketName;
}

}  // namespace

Result<StreamStatus> request_status(const std::string& dir) {
  const json j = TRY(control_call(socket_of(dir), encode(StatusRequest{})));
  return TRY_CTX(StreamStatus::from_json(j), "reply to 'status'");
}

Result<void> request(const std::string& dir, const StreamRequest& r) {
  const std::string line = encode(r);
  const json j = TRY(control_call(socket_of(dir), line));
  if (auto e = reply_error(j)) return Error{EREMOTEIO, *e};
  if (auto okay = Ok::from_json(j); !okay)
    return Error{EBADMSG, "reply to '" + line + "': " + okay.error().message};
  return ok();
}

}  // namespace imgstream::control
