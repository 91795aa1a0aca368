// Fuzzes the control sockets' line handling (src/io/control.h) and both handlers behind
// it: a streamer's (stream/streamer.h: status, pause, resume, rate) and a served disk's
// migration commands (migrate/migration_control.h: info, begin, take, confirm, hold ...).
// Input: lines split at '\n' (at most kLinesMax); each line goes, as a client would send
// it, through control_reply() to the streamer and then to the migration handler. The
// streamer is made once (an image in an in-memory Env whose path holds an invalid UTF-8
// byte, so that every status carries one); the served disk is made fresh for each input,
// with a few regions written. Each line is also decoded as a request of either socket
// (control/stream_messages.h, control/migration_messages.h), and the whole input parsed
// as JSON (a control reply a client reads) and decoded as every reply type and taken
// apart with the typed readers.
// Invariants: nothing throws (a handler exception would show as "internal error" in the
// reply); every reply is one line holding a JSON object of valid UTF-8 whose "error", if
// any, is a string (or null, in a status); lines that are not UTF-8 or hold control characters
// never reach a handler; a status has the same fields as a store's status read from disk; taken
// runs are inside the disk, in order, apart, and no more than asked; the tracker's counts stay
// within the disk; a request or reply that decodes encodes to one that decodes to the same
// value (one definition of each message, on both sides).
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "base/env_memory.h"
#include "base/log.h"
#include "fuzz_check.h"
#include "control/migration_messages.h"
#include "control/stream_messages.h"
#include "io/control.h"
#include "migrate/dirty_tracking_device.h"
#include "migrate/migration_control.h"
#include "nbd/testing.h"
#include "stream/streamer.h"

using namespace imgstream;
using nlohmann::json;

namespace {

constexpr size_t kLinesMax = 64;
constexpr uint64_t kDiskBytes = 1u << 20;
constexpr uint64_t kImageBytes = 4u << 20;

std::set<std::string> keys(const json& j) {
  std::set<std::string> k;
  for (auto it = j.begin(); it != j.end(); ++it) k.insert(it.key());
  return k;
}

struct StreamerUnderTest {
  MemEnv env;
  std::unique_ptr<stream::Streamer> streamer;
  std::set<std::string> stored_keys;

  StreamerUnderTest() {
    set_log_level(LogLevel::Off);
    const std::string image = "/image\xff.raw";
    auto f = env.open(image, OpenMode::CreateOrOpen);
    FUZZ_CHECK(f && (*f)->truncate(kImageBytes));
    std::vector<std::byte> b(65536, std::byte{0x5a});
    FUZZ_CHECK(write_all_at(**f, 0, b));
    stream::StreamerOptions o;
    o.source = image;
    o.store_dir = "/store";
    o.region_size = 65536;
    auto s = stream::Streamer::open(env, o);  // not started: no threads, no socket
    FUZZ_CHECK(s);
    streamer = std::move(*s);
    auto stored = stream::stored_status(env, "/store");
    FUZZ_CHECK(stored);
    stored_keys = keys(stored->to_json());
  }
};

struct DiskUnderTest {
  MemEnv env;
  nbd::testing::MemoryDevice disk{kDiskBytes};
  std::unique_ptr<migrate::DirtyTracker> tracker;
  std::unique_ptr<migrate::DirtyTrackingDevice> tracked;
  std::unique_ptr<migrate::MirrorDevice> mirror;
  std::unique_ptr<migrate::HoldDevice> hold;
  std::unique_ptr<migrate::Migration> m;

  DiskUnderTest() {
    auto t = migrate::DirtyTracker::open(env, "/disk.track", kDiskBytes);
    FUZZ_CHECK(t);
    tracker = std::move(*t);
    tracked = std::make_unique<migrate::DirtyTrackingDevice>(disk, *tracker);
    mirror = std::make_unique<migrate::MirrorDevice>(*tracked, *tracker);
    hold = std::make_unique<migrate::HoldDevice>(*mirror);
    m.reset(new migrate::Migration{"/disk.img", "/disk.track", *tracker, *mirror, *hold});
    // No network: a target is never there.
    m->open_target = [](const std::string&, unsigned,
                        std::chrono::milliseconds) -> Result<std::unique_ptr<migrate::NbdTarget>> {
      return Error::io("no target");
    };
    std::vector<std::byte> b(8192, std::byte{1});
    for (uint64_t off : {0u, 65536u, 700000u})
      FUZZ_CHECK(tracked->write(off, b, Durability::Buffered));
  }
};

// The checks every reply passes; returns it parsed.
json check_reply(const std::string& reply) {
  FUZZ_CHECK(!reply.empty() && reply.back() == '\n');
  FUZZ_CHECK(reply.find('\n') == reply.size() - 1);
  FUZZ_CHECK(valid_utf8(reply));
  json j = json::parse(reply, nullptr, false);
  FUZZ_CHECK(!j.is_discarded() && j.is_object());
  if (j.contains("error")) {  // a status has "error": null while the stream is well
    FUZZ_CHECK(j["error"].is_string() || j["error"].is_null());
    if (j["error"].is_string())
      FUZZ_CHECK(j["error"].get_ref<const std::string&>().find("internal error") ==
                 std::string::npos);
  }
  return j;
}

void check_runs(const json& r, const std::string& line, uint64_t regions) {
  auto runs = get_u64_pairs(r, "runs");
  FUZZ_CHECK(runs.has_value());
  const auto w = command_words(line);
  FUZZ_CHECK(w.size() >= 3);
  const uint64_t max = parse_u64_word(w[2], "MAX").value();
  uint64_t total = 0, end = 0;
  for (auto [first, count] : *runs) {
    FUZZ_CHECK(count > 0 && first >= end && first + count <= regions);
    end = first + count;
    total += count;
  }
  FUZZ_CHECK(total <= max);
}

// A line as a request of either socket: what decodes survives its encoding.
void decode_as_requests(const std::string& line) {
  if (auto r = control::decode_stream_request(line)) {
    auto again = control::decode_stream_request(control::encode(*r));
    FUZZ_CHECK(again && control::encode(*again) == control::encode(*r));
  }
  namespace mig = control::migration;
  if (auto r = mig::decode_request(line)) {
    auto again = mig::decode_request(mig::encode(*r));
    FUZZ_CHECK(again && *again == *r);
  }
}

void feed(StreamerUnderTest& st, DiskUnderTest& d, const std::string& raw, bool complete) {
  std::string line = raw.substr(0, raw.find('\n'));
  if (!line.empty() && line.back() == '\r') line.pop_back();
  const bool clean = valid_utf8(line) && std::none_of(line.begin(), line.end(), [](char c) {
                       return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
                     });
  decode_as_requests(line);
  bool reached = false;
  auto via = [&](const std::function<json(const std::string&)>& h) {
    reached = false;
    return check_reply(control_reply(
        [&](const std::string& l) {
          reached = true;
          FUZZ_CHECK(l == line);
          return h(l);
        },
        raw, complete));
  };
  const json s = via([&](const std::string& l) { return st.streamer->handle_command(l); });
  FUZZ_CHECK(!reached || clean);
  if (reached && line == "status") FUZZ_CHECK(keys(s) == st.stored_keys);
  const json r = via([&](const std::string& l) { return migrate::migration_command(l, *d.m); });
  const uint64_t regions = d.tracker->header().regions();
  if (reached && r.contains("runs")) check_runs(r, line, regions);
  FUZZ_CHECK(d.tracker->dirty_count() <= regions && d.tracker->pending_count() <= regions);
}

// A reply type's decoder on `j`: what decodes encodes to what decodes to the same.
template <class Reply>
void decode_as(const json& j) {
  auto r = Reply::from_json(j);
  if (!r) return;
  auto again = Reply::from_json(json::parse(dump_json(r->to_json()), nullptr, false));
  FUZZ_CHECK(again && *again == *r);
}

// The input as a reply a client reads: the typed decoders and readers never throw.
void read_as_reply(const uint8_t* data, size_t size) {
  const json j = json::parse(reinterpret_cast<const char*>(data),
                             reinterpret_cast<const char*>(data) + size, nullptr, false);
  (void)dump_json(j);
  decode_as<control::StreamStatus>(j);
  decode_as<control::migration::InfoReply>(j);
  decode_as<control::migration::TakeReply>(j);
  decode_as<control::migration::ResumeReply>(j);
  (void)control::Ok::from_json(j);
  (void)control::reply_error(j);
  for (const char* k : {"runs", "dirty", "image", "error", "switched", "state", "eta_s"}) {
    (void)get_u64(j, k);
    (void)get_bool(j, k);
    (void)get_double(j, k);
    (void)get_string(j, k);
    (void)get_u64_pairs(j, k);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static StreamerUnderTest streamer;
  DiskUnderTest disk;
  const std::string in(reinterpret_cast<const char*>(data), size);
  size_t pos = 0;
  for (size_t n = 0; n < kLinesMax && pos < in.size(); ++n) {
    const size_t nl = in.find('\n', pos);
    // A last line without a newline: the client ended its stream, unless it was cut.
    const bool complete = nl != std::string::npos || in.size() - pos < kCommandBytesMax;
    const size_t end = nl == std::string::npos ? in.size() : nl + 1;
    feed(streamer, disk, in.substr(pos, std::min(end - pos, kCommandBytesMax)), complete);
    pos = end;
  }
  // Whatever the lines did, the disk is let go (a hold would stop its writes).
  disk.hold->release();
  read_as_reply(data, size);
  return 0;
}
