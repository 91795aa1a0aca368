#include "control/migration_messages.h"

#include <fmt/format.h>

#include <cerrno>

#include "io/control.h"

namespace imgstream::control::migration {

using nlohmann::json;

// --- replies ----------------------------------------------------------------------

json InfoReply::to_json() const {
  return json{{"image", image},
              {"track", track},
              {"size", size},
              {"region_size", region_size},
              {"dirty", dirty},
              {"pending", pending},
              {"unflushed", unflushed},
              {"held", held},
              {"active", active},
              {"mirrored_bytes", mirrored_bytes},
              {"copied_bytes", copied_bytes},
              {"mirror_failures", mirror_failures},
              {"copy_failures", copy_failures},
              {"switched", switched},
              {"switched_to", switched_to}};
}

Result<InfoReply> InfoReply::from_json(const json& j) {
  InfoReply r;
  r.image = TRY(get_string(j, "image"));
  r.track = TRY(get_string(j, "track"));
  r.size = TRY(get_u64(j, "size"));
  r.region_size = TRY(get_u64(j, "region_size"));
  r.dirty = TRY(get_u64(j, "dirty"));
  r.pending = TRY(get_u64(j, "pending"));
  r.unflushed = TRY(get_u64(j, "unflushed"));
  r.held = TRY(get_bool(j, "held"));
  r.active = TRY(get_bool(j, "active"));
  r.mirrored_bytes = TRY(get_u64(j, "mirrored_bytes"));
  r.copied_bytes = TRY(get_u64(j, "copied_bytes"));
  r.mirror_failures = TRY(get_u64(j, "mirror_failures"));
  r.copy_failures = TRY(get_u64(j, "copy_failures"));
  r.switched = TRY(get_bool(j, "switched"));
  r.switched_to = TRY(get_string(j, "switched_to"));
  return r;
}

json TakeReply::to_json() const {
  return json{{"ok", true}, {"runs", runs}};
}

Result<TakeReply> TakeReply::from_json(const json& j) {
  TRY(Ok::from_json(j));
  return TakeReply{TRY(get_u64_pairs(j, "runs"))};
}

json ResumeReply::to_json() const {
  return json{{"ok", true}, {"expired", expired}};
}

Result<ResumeReply> ResumeReply::from_json(const json& j) {
  TRY(Ok::from_json(j));
  return ResumeReply{TRY(get_bool(j, "expired"))};
}

// --- requests ---------------------------------------------------------------------

template <const char* Name, class R>
Result<Bare<Name, R>> Bare<Name, R>::decode(const Words& w) {
  TRY(arity(w, 0, 0, kName));
  return Bare{};
}
template struct Bare<kInfo, InfoReply>;
template struct Bare<kConfirm, Ok>;
template struct Bare<kRelease, Ok>;
template struct Bare<kPassive, Ok>;
template struct Bare<kResume, ResumeReply>;

std::string BeginRequest::encode() const {
  return mode == Mode::Fresh ? "begin fresh" : "begin resume";
}

Result<BeginRequest> BeginRequest::decode(const Words& w) {
  constexpr std::string_view kUsage = "begin fresh|resume";
  TRY(arity(w, 1, 1, kUsage));
  if (w[1] == "fresh") return BeginRequest{Mode::Fresh};
  if (w[1] == "resume") return BeginRequest{Mode::Resume};
  return Error::invalid(fmt::format("usage: {}", kUsage));
}

std::string TakeRequest::encode() const {
  return end ? fmt::format("take {} {} {}", from, max, *end) : fmt::format("take {} {}", from, max);
}

Result<TakeRequest> TakeRequest::decode(const Words& w) {
  TRY(arity(w, 2, 3, "take FROM MAX [END]"));
  TakeRequest r;
  r.from = TRY(number_at(w, 1, "FROM", 0, UINT64_MAX));
  r.max = TRY(number_at(w, 2, "MAX", 0, UINT64_MAX));
  if (w.size() > 3) r.end = TRY(number_at(w, 3, "END", UINT64_MAX, UINT64_MAX));
  return r;
}

template <const char* Name>
std::string ToTarget<Name>::encode() const {
  return fmt::format("{} {} {}", kName, uri, connections);
}

template <const char* Name>
Result<ToTarget<Name>> ToTarget<Name>::decode(const Words& w) {
  TRY(arity(w, 1, 2, fmt::format("{} URI [CONNS]", kName)));
  ToTarget r;
  r.uri = std::string(w[1]);
  r.connections = TRY(number_at(w, 2, "CONNS", kConnectionsDefault, kConnectionsMax));
  return r;
}
template struct ToTarget<kActive>;
template struct ToTarget<kSwitch>;

template <const char* Name>
std::string Timed<Name>::encode() const {
  return fmt::format("{} {}", kName, ms);
}

template <const char* Name>
Result<Timed<Name>> Timed<Name>::decode(const Words& w) {
  TRY(arity(w, 0, 1, fmt::format("{} [MS]", kName)));
  return Timed{TRY(number_at(w, 1, "MS", kHoldMsDefault, kHoldMsMax))};
}
template struct Timed<kDrain>;
template struct Timed<kHold>;

std::string encode(const Request& r) {
  return std::visit([](const auto& m) { return m.encode(); }, r);
}

namespace {

// The alternative of Request whose command word is w[0], decoded.
template <size_t I = 0>
Result<Request> decode_as(const Words& w) {
  if constexpr (I == std::variant_size_v<Request>) {
    return Error::invalid("unknown command '" + std::string(w.empty() ? std::string_view() : w[0]) +
                          "'");
  } else {
    using R = std::variant_alternative_t<I, Request>;
    if (!w.empty() && w[0] == R::kName) return Request(TRY(R::decode(w)));
    return decode_as<I + 1>(w);
  }
}

}  // namespace

Result<Request> decode_request(std::string_view line) {
  return decode_as(command_words(line));
}

// --- the client -------------------------------------------------------------------

Result<json> Client::call_line(const std::string& line, int timeout_s) const {
  auto r = control_call(path_, line, timeout_s);
  if (!r && (r.error().code == ECONNREFUSED || r.error().code == ENOENT))
    return Error{r.error().code,
                 "no imgstream serve --control answers at " + path_ + " (" + r.error().message +
                     "); a migration stopped with its server continues when both run again"};
  json j = TRY_CTX(std::move(r), "control socket " + path_);
  if (auto e = reply_error(j)) return Error::io(path_ + ": " + line + ": " + *e);
  return j;
}

}  // namespace imgstream::control::migration
