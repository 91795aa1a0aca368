// The control protocol's messages: each round-trips through its encoder and decoder, a
// malformed line or reply is an Error (never a throw), and the server's replies are the
// bytes they always were (docs/control-protocol.md).
#include <gtest/gtest.h>

#include "control/migration_messages.h"
#include "control/stream_messages.h"
#include "io/control.h"

namespace imgstream::control {
namespace {

using nlohmann::json;
namespace mig = migration;

json parse(const std::string& s) {
  return json::parse(s, nullptr, false);
}

TEST(StreamMessages, RequestsRoundTrip) {
  for (const StreamRequest& r :
       {StreamRequest(StatusRequest{}), StreamRequest(PauseRequest{}),
        StreamRequest(ResumeRequest{}), StreamRequest(RateRequest{52428800})}) {
    auto d = decode_stream_request(encode(r));
    ASSERT_TRUE(d) << encode(r);
    EXPECT_EQ(d->index(), r.index());
    EXPECT_EQ(encode(*d), encode(r));
  }
  EXPECT_EQ(encode(RateRequest{0}), "rate 0");
  // A rate may carry a suffix (what `imgstream ctl DIR rate 50M` sent before).
  auto r = decode_stream_request("rate 50M");
  ASSERT_TRUE(r);
  EXPECT_EQ(std::get<RateRequest>(*r).bytes_per_s, 50u << 20);
}

TEST(StreamMessages, MalformedRequestsAreErrors) {
  for (const char* bad :
       {"", "frob", "status now", "pause 1", "rate", "rate x", "rate 1 2", "rate -5", "Status"})
    EXPECT_FALSE(decode_stream_request(bad)) << bad;
  EXPECT_EQ(decode_stream_request("frob").error().message, "unknown command 'frob'");
  EXPECT_EQ(decode_stream_request("pause 1").error().message,
            "usage: status | pause | resume | rate BYTES_PER_S");
}

StreamStatus sample_status() {
  StreamStatus s;
  s.state = "streaming";
  s.stored_state = "streaming";
  s.daemon_running = true;
  s.image_size = 1u << 30;
  s.region_size = 1u << 20;
  s.regions_total = 1024;
  s.regions_present = 10;
  s.percent = 100.0 * 10 / 1024;
  s.bytes_fetched_demand = 123;
  s.prefetch_precision = 0.25;
  s.reads_total = 7;
  s.hit_ratio = 0.5;
  s.source = "nbd://x";
  s.store = "/s";
  s.rate_limit = 0;
  s.rate_bytes_per_s = 1.5e6;
  s.hint = "paused: ...";
  return s;
}

TEST(StreamMessages, StatusRoundTripsAndNullsStayNull) {
  const StreamStatus s = sample_status();
  const json j = s.to_json();
  EXPECT_TRUE(j["error"].is_null());
  EXPECT_TRUE(j["eta_s"].is_null());
  EXPECT_EQ(j.size(), 28u);  // every field, known or not
  auto back = StreamStatus::from_json(parse(dump_json(j)));
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(*back, s);
  EXPECT_EQ(dump_json(back->to_json()), dump_json(j));  // `status --json` prints these bytes
}

TEST(StreamMessages, MalformedStatusIsAnError) {
  json j = sample_status().to_json();
  auto without = j;
  without.erase("reads_total");
  EXPECT_FALSE(StreamStatus::from_json(without));
  auto wrong = j;
  wrong["daemon_running"] = "yes";
  EXPECT_FALSE(StreamStatus::from_json(wrong));
  wrong = j;
  wrong["image_size"] = -1;
  EXPECT_FALSE(StreamStatus::from_json(wrong));
  auto e = StreamStatus::from_json(parse(R"({"error":"usage: ..."})"));
  ASSERT_FALSE(e);
  EXPECT_EQ(e.error().code, EBADMSG);
  EXPECT_EQ(e.error().message, "usage: ...");
  for (const char* bad : {"[]", "1", "null", "\"state\"", R"({"state":1})"})
    EXPECT_FALSE(StreamStatus::from_json(parse(bad))) << bad;
}

TEST(MigrationMessages, RequestsRoundTripAndKeepTheirLines) {
  const std::vector<std::pair<mig::Request, std::string>> cases = {
      {mig::InfoRequest{}, "info"},
      {mig::BeginRequest{mig::BeginRequest::Mode::Fresh}, "begin fresh"},
      {mig::BeginRequest{mig::BeginRequest::Mode::Resume}, "begin resume"},
      {mig::TakeRequest{3, 4096, {}}, "take 3 4096"},
      {mig::TakeRequest{0, 5, 17}, "take 0 5 17"},
      {mig::ConfirmRequest{}, "confirm"},
      {mig::ReleaseRequest{}, "release"},
      {mig::ActiveRequest{"nbd://h:1/x", 4}, "active nbd://h:1/x 4"},
      {mig::DrainRequest{10000}, "drain 10000"},
      {mig::PassiveRequest{}, "passive"},
      {mig::HoldRequest{250}, "hold 250"},
      {mig::ResumeRequest{}, "resume"},
      {mig::SwitchRequest{"nbd+unix:///?socket=/t", 2}, "switch nbd+unix:///?socket=/t 2"},
  };
  for (const auto& [r, line] : cases) {
    EXPECT_EQ(mig::encode(r), line);
    auto d = mig::decode_request(line);
    ASSERT_TRUE(d) << line << ": " << d.error().message;
    EXPECT_EQ(*d, r) << line;
  }
}

TEST(MigrationMessages, DefaultsAndBounds) {
  auto h = mig::decode_request("hold");
  ASSERT_TRUE(h);
  EXPECT_EQ(std::get<mig::HoldRequest>(*h).ms, mig::kHoldMsDefault);
  auto a = mig::decode_request("active nbd://x");
  ASSERT_TRUE(a);
  EXPECT_EQ(std::get<mig::ActiveRequest>(*a).connections, mig::kConnectionsDefault);
  EXPECT_EQ(mig::decode_request("hold 600001").error().message, "MS 600001 is over 600000");
  EXPECT_EQ(mig::decode_request("switch x 65").error().message, "CONNS 65 is over 64");
  EXPECT_EQ(mig::decode_request("take 1").error().message, "usage: take FROM MAX [END]");
  EXPECT_EQ(mig::decode_request("frob 1").error().message, "unknown command 'frob'");
  EXPECT_EQ(mig::decode_request("").error().message, "unknown command ''");
  for (const char* bad : {"take x 5", "take 0 -1", "take 0 5 1 2", "take 0 1e3", "hold 5s",
                          "drain abc", "begin", "begin later", "info now", "confirm 1", "active",
                          "switch", "take 0 99999999999999999999", "INFO", "resume now"})
    EXPECT_FALSE(mig::decode_request(bad)) << bad;
}

TEST(MigrationMessages, RepliesRoundTripWithTheirBytes) {
  mig::InfoReply i;
  i.image = "/img";
  i.track = "/t";
  i.size = 1u << 20;
  i.region_size = 65536;
  i.dirty = 3;
  i.held = true;
  i.switched_to = "";
  const std::string wire = dump_json(i.to_json());
  EXPECT_EQ(wire, R"({"active":false,"copied_bytes":0,"copy_failures":0,"dirty":3,"held":true,)"
                  R"("image":"/img","mirror_failures":0,"mirrored_bytes":0,"pending":0,)"
                  R"("region_size":65536,"size":1048576,"switched":false,"switched_to":"",)"
                  R"("track":"/t","unflushed":0})");
  auto back = mig::InfoReply::from_json(parse(wire));
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, i);

  const mig::TakeReply t{{{1, 2}, {16, 2}}};
  EXPECT_EQ(dump_json(t.to_json()), R"({"ok":true,"runs":[[1,2],[16,2]]})");
  EXPECT_EQ(*mig::TakeReply::from_json(t.to_json()), t);
  EXPECT_EQ(dump_json(mig::ResumeReply{true}.to_json()), R"({"expired":true,"ok":true})");
  EXPECT_TRUE(mig::ResumeReply::from_json(parse(R"({"ok":true,"expired":true})"))->expired);
  EXPECT_EQ(dump_json(Ok{}.to_json()), R"({"ok":true})");
  EXPECT_EQ(dump_json(error_reply("x")), R"({"error":"x"})");
}

TEST(MigrationMessages, MalformedRepliesAreErrors) {
  for (const char* bad :
       {R"({"ok":true,"runs":[[1]]})", R"({"ok":true,"runs":[[1,-2]]})", R"({"ok":true,"runs":{}})",
        R"({"runs":[]})", R"({"ok":false,"runs":[]})", "[]", "null"})
    EXPECT_FALSE(mig::TakeReply::from_json(parse(bad))) << bad;
  for (const char* bad : {R"({"ok":true,"expired":"no"})", R"({"ok":true})", R"({"expired":1})"})
    EXPECT_FALSE(mig::ResumeReply::from_json(parse(bad))) << bad;
  json info = mig::InfoReply{}.to_json();
  info["held"] = 1;
  EXPECT_FALSE(mig::InfoReply::from_json(info));
  info.erase("held");
  EXPECT_FALSE(mig::InfoReply::from_json(info));
  EXPECT_FALSE(mig::InfoReply::from_json(parse("[1,2]")));
  EXPECT_EQ(reply_error(parse(R"({"error":"no"})")).value_or(""), "no");
  EXPECT_EQ(reply_error(parse(R"({"error":{"a":1}})")).value_or(""), R"({"a":1})");
  EXPECT_FALSE(reply_error(parse(R"({"error":null})")));
  EXPECT_FALSE(reply_error(parse("[]")));
}

TEST(MigrationMessages, ClientSaysWhenNothingListens) {
  const mig::Client c("/nonexistent/imgstream-test.ctl");
  auto r = c.call(mig::InfoRequest{});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENOENT);
  EXPECT_NE(r.error().message.find("no imgstream serve --control answers"), std::string::npos);
}

}  // namespace
}  // namespace imgstream::control
