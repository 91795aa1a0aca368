#include "migrate/migration_control.h"

#include <fmt/format.h>

#include <algorithm>
#include <string_view>
#include <vector>

#include "base/log.h"
#include "io/control.h"

namespace imgstream::migrate {

namespace {

using nlohmann::json;
using Words = std::vector<std::string_view>;

json error_reply(const std::string& message) {
  return json{{"error", message}};
}

// Words [min_args, max_args] after the command, or an error naming its usage.
Result<void> arity(const Words& w, size_t min_args, size_t max_args, const char* usage) {
  if (w.size() - 1 < min_args || w.size() - 1 > max_args)
    return Error::invalid(fmt::format("usage: {}", usage));
  return ok();
}

// The optional number at w[i], bounded by max_value; `fallback` when absent.
Result<uint64_t> number_at(const Words& w, size_t i, const char* what, uint64_t fallback,
                           uint64_t max_value) {
  if (i >= w.size()) return fallback;
  const uint64_t v = TRY(parse_u64_word(w[i], what));
  if (v > max_value) return Error::invalid(fmt::format("{} {} is over {}", what, v, max_value));
  return v;
}

Result<json> info(Migration& m) {
  const DirtyTracker& t = m.tracker;
  const auto st = m.mirror.stats();
  return json{{"image", m.image},
              {"track", m.track},
              {"size", t.header().image_size},
              {"region_size", t.header().region_size},
              {"dirty", t.dirty_count()},
              {"pending", t.pending_count()},
              {"unflushed", t.unflushed_count()},
              {"held", m.hold.held()},
              {"active", m.mirror.active()},
              {"mirrored_bytes", st.mirrored_bytes},
              {"copied_bytes", st.copied_bytes},
              {"mirror_failures", st.mirror_failures},
              {"copy_failures", st.copy_failures},
              {"switched", m.switched != nullptr},
              {"switched_to", m.switched_to}};
}

Result<json> take(const Words& w, DirtyTracker& t) {
  TRY(arity(w, 2, 3, "take FROM MAX [END]"));
  const uint64_t from = TRY(number_at(w, 1, "FROM", 0, UINT64_MAX));
  const uint64_t max = TRY(number_at(w, 2, "MAX", 0, UINT64_MAX));
  const uint64_t end = TRY(number_at(w, 3, "END", UINT64_MAX, UINT64_MAX));
  std::vector<std::pair<uint64_t, uint64_t>> runs;  // (first, count)
  for (uint64_t r : t.take(from, std::min<uint64_t>(max, kControlTakeMax), end)) {
    if (!runs.empty() && runs.back().first + runs.back().second == r)
      ++runs.back().second;
    else
      runs.emplace_back(r, 1);
  }
  return json{{"ok", true}, {"runs", runs}};
}

Result<json> activate(const Words& w, Migration& m) {
  TRY(arity(w, 1, 2, "active URI [CONNS]"));
  uint64_t conns =
      TRY(number_at(w, 2, "CONNS", kControlConnectionsDefault, kControlConnectionsMax));
  conns = std::max<uint64_t>(2, conns);  // one for the machine's writes, the others copy
  auto target = TRY(m.open_target(std::string(w[1]), unsigned(conns), kConnectTimeoutDefault));
  if (!target->note().empty()) LOG_WARN("{}", target->note());
  TRY(m.mirror.activate(std::move(target)));
  return json{{"ok", true}};
}

Result<json> switch_to(const Words& w, Migration& m) {
  TRY(arity(w, 1, 2, "switch URI [CONNS]"));
  const uint64_t conns =
      TRY(number_at(w, 2, "CONNS", kControlConnectionsDefault, kControlConnectionsMax));
  if (!m.hold.held()) return Error::invalid("switch needs the disk held");
  const std::string uri(w[1]);
  auto target =
      TRY(m.open_target(uri, unsigned(std::max<uint64_t>(1, conns)), kSwitchConnectTimeout));
  if (!target->note().empty()) LOG_WARN("{}", target->note());
  m.mirror.deactivate();  // the disk is no longer the source of anything
  m.switched = std::make_unique<RemoteDevice>(std::move(target), m.tracker.header().image_size);
  m.switched_to = uri;
  m.hold.switch_to(*m.switched);
  LOG_INFO("the disk is now {}: requests go there", uri);
  return json{{"ok", true}};
}

Result<json> run(const Words& w, Migration& m) {
  const std::string_view cmd = w.empty() ? std::string_view() : w[0];
  const bool migrating = cmd == "begin" || cmd == "take" || cmd == "active" || cmd == "switch";
  if (migrating && m.switched)
    return Error{EALREADY, "the disk was switched to " + m.switched_to +
                               " by a completed migration: it runs there now"};
  const json done{{"ok", true}};
  if (cmd == "info") {
    TRY(arity(w, 0, 0, "info"));
    return info(m);
  }
  if (cmd == "begin") {
    TRY(arity(w, 1, 1, "begin fresh|resume"));
    if (w[1] != "fresh" && w[1] != "resume") return Error::invalid("usage: begin fresh|resume");
    m.mirror.deactivate();  // a dead migrate's active mode: its copier is no one's now
    m.tracker.release();
    if (w[1] == "fresh")
      while (!m.tracker.take(0, SIZE_MAX).empty()) m.tracker.confirm();
    return done;
  }
  if (cmd == "take") return take(w, m.tracker);
  if (cmd == "confirm") {
    TRY(arity(w, 0, 0, "confirm"));
    m.tracker.confirm();
    TRY(m.tracker.flush());
    return done;
  }
  if (cmd == "release") {
    TRY(arity(w, 0, 0, "release"));
    m.tracker.release();
    return done;
  }
  if (cmd == "active") return activate(w, m);
  if (cmd == "drain") {
    TRY(arity(w, 0, 1, "drain [MS]"));
    const uint64_t ms = TRY(number_at(w, 1, "MS", kControlHoldMsDefault, kControlHoldMsMax));
    TRY(m.mirror.drain(std::chrono::milliseconds(ms)));
    return done;
  }
  if (cmd == "passive") {
    TRY(arity(w, 0, 0, "passive"));
    m.mirror.deactivate();
    return done;
  }
  if (cmd == "hold") {
    TRY(arity(w, 0, 1, "hold [MS]"));
    const uint64_t ms = TRY(number_at(w, 1, "MS", kControlHoldMsDefault, kControlHoldMsMax));
    m.hold.hold(std::chrono::milliseconds(ms));
    return done;
  }
  if (cmd == "switch") return switch_to(w, m);
  if (cmd == "resume") {
    TRY(arity(w, 0, 0, "resume"));
    const bool expired = !m.hold.held();
    m.hold.release();
    return json{{"ok", true}, {"expired", expired}};
  }
  return Error::invalid("unknown command '" + std::string(cmd) + "'");
}

}  // namespace

nlohmann::json migration_command(const std::string& line, Migration& m) {
  auto r = run(command_words(line), m);
  if (!r) return error_reply(r.error().message);
  return std::move(*r);
}

}  // namespace imgstream::migrate
