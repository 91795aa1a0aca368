#include "control/messages.h"

#include <fmt/format.h>

#include "io/control.h"

namespace imgstream::control {

using nlohmann::json;

json Ok::to_json() const {
  return json{{"ok", true}};
}

Result<Ok> Ok::from_json(const json& j) {
  // An older server's or a future one's {"ok": true, ...more}: the extra fields are not ours.
  if (!TRY(get_bool(j, "ok"))) return Error::io("field 'ok' is false");
  return Ok{};
}

json error_reply(std::string_view message) {
  return json{{"error", std::string(message)}};
}

std::optional<std::string> reply_error(const json& j) {
  if (!j.is_object()) return std::nullopt;
  auto it = j.find("error");
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (const auto* s = it->get_ptr<const json::string_t*>()) return *s;
  return dump_json(*it);
}

Result<void> arity(const Words& w, size_t min_args, size_t max_args, std::string_view usage) {
  const size_t args = w.empty() ? 0 : w.size() - 1;
  if (args < min_args || args > max_args) return Error::invalid(fmt::format("usage: {}", usage));
  return ok();
}

Result<uint64_t> number_at(const Words& w, size_t i, std::string_view what, uint64_t fallback,
                           uint64_t max_value) {
  if (i >= w.size()) return fallback;
  const uint64_t v = TRY(parse_u64_word(w[i], what));
  if (v > max_value) return Error::invalid(fmt::format("{} {} is over {}", what, v, max_value));
  return v;
}

}  // namespace imgstream::control
