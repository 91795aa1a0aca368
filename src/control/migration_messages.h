// The messages of a disk served under migration, `serve --track --control PATH`
// (docs/control-protocol.md). One line each, one JSON object back:
//
//   info                  -> InfoReply: the image, its size, the tracker's geometry and
//                            counts, the mirror's, whether the disk was switched (and where)
//   begin fresh|resume    -> ok: a new migration (every bit cleared: the full copy covers
//                            them) or one continued (regions a dead migrate took: dirty again)
//   take FROM MAX [END]   -> TakeReply: up to MAX changed regions in [FROM, END), as runs;
//                            they are pending
//   confirm | release     -> ok: pending regions copied (dropped) | not copied (dirty again)
//   active URI [CONNS]    -> ok: writes are mirrored to URI, a copier copies the rest
//   drain [MS]            -> ok: (active) the copier has copied every change, URI flushed
//   passive               -> ok: active mode off
//   hold [MS]             -> ok: new requests wait, those in flight drained; for at most MS
//   resume                -> ResumeReply: requests go on; whether the hold had expired
//   switch URI [CONNS]    -> ok: (held) from now on the disk is the NBD export at URI
//
// Each request is a struct with its command word (kName), its line (encode) and its
// decoder, and names its reply type; the server is migrate::migration_command(), the
// client migration::Client. URIs are one word: they hold no space.
#pragma once

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "base/limits.h"
#include "base/result.h"
#include "control/messages.h"

namespace imgstream::control::migration {

inline constexpr uint64_t kHoldMsMax = limits::kHoldMsMax;
inline constexpr uint64_t kHoldMsDefault = 10'000;
inline constexpr uint64_t kTakeMax = limits::kTakeMax;
inline constexpr uint64_t kConnectionsMax = limits::kMigrateConnectionsMax;
inline constexpr uint64_t kConnectionsDefault = 4;

// --- replies ----------------------------------------------------------------------

struct InfoReply {
  std::string image, track;  // the image's absolute path; the tracking file
  uint64_t size = 0, region_size = 0;
  uint64_t dirty = 0, pending = 0, unflushed = 0;  // regions
  bool held = false, active = false;
  uint64_t mirrored_bytes = 0, copied_bytes = 0, mirror_failures = 0, copy_failures = 0;
  bool switched = false;
  std::string switched_to;  // empty unless switched

  nlohmann::json to_json() const;
  static Result<InfoReply> from_json(const nlohmann::json& j);  // every field, typed
  bool operator==(const InfoReply&) const = default;
};

using Runs = std::vector<std::pair<uint64_t, uint64_t>>;  // (first region, count)

struct TakeReply {
  Runs runs;  // in order, apart; empty when nothing is left from FROM on
  nlohmann::json to_json() const;
  static Result<TakeReply> from_json(const nlohmann::json& j);
  bool operator==(const TakeReply&) const = default;
};

struct ResumeReply {
  bool expired = false;  // the hold had lapsed before resume: the machine wrote meanwhile
  nlohmann::json to_json() const;
  static Result<ResumeReply> from_json(const nlohmann::json& j);
  bool operator==(const ResumeReply&) const = default;
};

// --- requests ---------------------------------------------------------------------

// A request without arguments.
template <const char* Name, class R>
struct Bare {
  using Reply = R;
  static constexpr std::string_view kName = Name;
  std::string encode() const { return std::string(kName); }
  static Result<Bare> decode(const Words& w);
  bool operator==(const Bare&) const = default;
};

inline constexpr char kInfo[] = "info", kConfirm[] = "confirm", kRelease[] = "release",
                      kPassive[] = "passive", kResume[] = "resume";
using InfoRequest = Bare<kInfo, InfoReply>;
using ConfirmRequest = Bare<kConfirm, Ok>;
using ReleaseRequest = Bare<kRelease, Ok>;
using PassiveRequest = Bare<kPassive, Ok>;
using ResumeRequest = Bare<kResume, ResumeReply>;

struct BeginRequest {
  using Reply = Ok;
  static constexpr std::string_view kName = "begin";
  enum class Mode { Fresh, Resume } mode = Mode::Fresh;
  std::string encode() const;
  static Result<BeginRequest> decode(const Words& w);
  bool operator==(const BeginRequest&) const = default;
};

struct TakeRequest {
  using Reply = TakeReply;
  static constexpr std::string_view kName = "take";
  uint64_t from = 0, max = 0;   // regions: the first to look at, how many to take at most
  std::optional<uint64_t> end;  // none: to the end of the disk
  std::string encode() const;
  static Result<TakeRequest> decode(const Words& w);
  bool operator==(const TakeRequest&) const = default;
};

// A request naming a target: active and switch.
template <const char* Name>
struct ToTarget {
  using Reply = Ok;
  static constexpr std::string_view kName = Name;
  std::string uri;
  uint64_t connections = kConnectionsDefault;  // at most kConnectionsMax
  std::string encode() const;
  static Result<ToTarget> decode(const Words& w);
  bool operator==(const ToTarget&) const = default;
};
inline constexpr char kActive[] = "active", kSwitch[] = "switch";
using ActiveRequest = ToTarget<kActive>;
using SwitchRequest = ToTarget<kSwitch>;

// A request with a time limit: drain and hold.
template <const char* Name>
struct Timed {
  using Reply = Ok;
  static constexpr std::string_view kName = Name;
  uint64_t ms = kHoldMsDefault;  // at most kHoldMsMax
  std::chrono::milliseconds limit() const { return std::chrono::milliseconds(ms); }
  std::string encode() const;
  static Result<Timed> decode(const Words& w);
  bool operator==(const Timed&) const = default;
};
inline constexpr char kDrain[] = "drain", kHold[] = "hold";
using DrainRequest = Timed<kDrain>;
using HoldRequest = Timed<kHold>;

using Request = std::variant<InfoRequest, BeginRequest, TakeRequest, ConfirmRequest, ReleaseRequest,
                             ActiveRequest, DrainRequest, PassiveRequest, HoldRequest,
                             ResumeRequest, SwitchRequest>;

std::string encode(const Request& r);  // the line, without its newline
// An unknown command, a word too many or too few, a bad or too large number: an Error
// whose message is the reply's (usage: ..., unknown command '...').
Result<Request> decode_request(std::string_view line);

// --- the client -------------------------------------------------------------------

class Client {
 public:
  explicit Client(std::string path) : path_(std::move(path)) {}

  // Sends `r`, waits up to timeout_s for the reply and decodes it as r's reply type.
  // ECONNREFUSED / ENOENT when no server answers at the path; the server's message
  // when it refused; an Error naming the field when the reply is malformed.
  template <class R>
  Result<typename R::Reply> call(const R& r, int timeout_s = 30) const {
    const nlohmann::json j = TRY(call_line(r.encode(), timeout_s));
    return TRY_CTX(R::Reply::from_json(j), "reply to '" + std::string(R::kName) + "'");
  }

  const std::string& path() const { return path_; }

 private:
  Result<nlohmann::json> call_line(const std::string& line, int timeout_s) const;

  std::string path_;
};

}  // namespace imgstream::control::migration
