#include "migrate/migration_control.h"

#include <algorithm>
#include <string_view>
#include <variant>
#include <vector>

#include "base/log.h"
#include "control/migration_messages.h"
#include "io/control.h"

namespace imgstream::migrate {

namespace {

using nlohmann::json;
namespace msg = control::migration;

Result<msg::InfoReply> handle(const msg::InfoRequest&, Migration& m) {
  const DirtyTracker& t = m.tracker;
  const auto st = m.mirror.stats();
  msg::InfoReply r;
  r.image = m.image;
  r.track = m.track;
  r.size = t.header().image_size;
  r.region_size = t.header().region_size;
  r.dirty = t.dirty_count();
  r.pending = t.pending_count();
  r.unflushed = t.unflushed_count();
  r.held = m.hold.held();
  r.active = m.mirror.active();
  r.mirrored_bytes = st.mirrored_bytes;
  r.copied_bytes = st.copied_bytes;
  r.mirror_failures = st.mirror_failures;
  r.copy_failures = st.copy_failures;
  r.switched = m.switched != nullptr;
  r.switched_to = m.switched_to;
  return r;
}

Result<control::Ok> handle(const msg::BeginRequest& b, Migration& m) {
  m.mirror.deactivate();  // a dead migrate's active mode: its copier is no one's now
  m.tracker.release();
  if (b.mode == msg::BeginRequest::Mode::Fresh)
    while (!m.tracker.take(0, SIZE_MAX).empty()) m.tracker.confirm();
  return control::Ok{};
}

Result<msg::TakeReply> handle(const msg::TakeRequest& t, Migration& m) {
  msg::TakeReply r;
  const uint64_t max = std::min<uint64_t>(t.max, msg::kTakeMax);
  for (uint64_t region : m.tracker.take(t.from, max, t.end.value_or(UINT64_MAX))) {
    if (!r.runs.empty() && r.runs.back().first + r.runs.back().second == region)
      ++r.runs.back().second;
    else
      r.runs.emplace_back(region, 1);
  }
  return r;
}

Result<control::Ok> handle(const msg::ConfirmRequest&, Migration& m) {
  m.tracker.confirm();
  TRY(m.tracker.flush());
  return control::Ok{};
}

Result<control::Ok> handle(const msg::ReleaseRequest&, Migration& m) {
  m.tracker.release();
  return control::Ok{};
}

Result<control::Ok> handle(const msg::ActiveRequest& a, Migration& m) {
  // One connection for the machine's writes, the others copy.
  const auto conns = unsigned(std::max<uint64_t>(2, a.connections));
  auto target = TRY(m.open_target(a.uri, conns, kConnectTimeoutDefault));
  if (!target->note().empty()) LOG_WARN("{}", target->note());
  TRY(m.mirror.activate(std::move(target)));
  return control::Ok{};
}

Result<control::Ok> handle(const msg::DrainRequest& d, Migration& m) {
  TRY(m.mirror.drain(d.limit()));
  return control::Ok{};
}

Result<control::Ok> handle(const msg::PassiveRequest&, Migration& m) {
  m.mirror.deactivate();
  return control::Ok{};
}

Result<control::Ok> handle(const msg::HoldRequest& h, Migration& m) {
  m.hold.hold(h.limit());
  return control::Ok{};
}

Result<msg::ResumeReply> handle(const msg::ResumeRequest&, Migration& m) {
  const bool expired = !m.hold.held();
  m.hold.release();
  return msg::ResumeReply{expired};
}

Result<control::Ok> handle(const msg::SwitchRequest& s, Migration& m) {
  if (!m.hold.held()) return Error::invalid("switch needs the disk held");
  const auto conns = unsigned(std::max<uint64_t>(1, s.connections));
  auto target = TRY(m.open_target(s.uri, conns, kSwitchConnectTimeout));
  if (!target->note().empty()) LOG_WARN("{}", target->note());
  m.mirror.deactivate();  // the disk is no longer the source of anything
  m.switched = std::make_unique<RemoteDevice>(std::move(target), m.tracker.header().image_size);
  m.switched_to = s.uri;
  m.hold.switch_to(*m.switched);
  LOG_INFO("the disk is now {}: requests go there", s.uri);
  return control::Ok{};
}

// Whether the line asks for what a switched disk no longer does (checked before the
// line is decoded, so that even a malformed one says why).
bool migrating(std::string_view line) {
  const auto w = command_words(line);
  const std::string_view cmd = w.empty() ? std::string_view() : w[0];
  return cmd == "begin" || cmd == "take" || cmd == "active" || cmd == "switch";
}

Result<json> run(const std::string& line, Migration& m) {
  if (m.switched && migrating(line))
    return Error{EALREADY, "the disk was switched to " + m.switched_to +
                               " by a completed migration: it runs there now"};
  const msg::Request request = TRY(msg::decode_request(line));
  return std::visit([&](const auto& r) -> Result<json> { return TRY(handle(r, m)).to_json(); },
                    request);
}

}  // namespace

nlohmann::json migration_command(const std::string& line, Migration& m) {
  auto r = run(line, m);
  if (!r) return control::error_reply(r.error().message);
  return std::move(*r);
}

}  // namespace imgstream::migrate
