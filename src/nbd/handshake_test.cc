// nbd::negotiate() driven from memory: the client's bytes are a buffer, the server's
// answers are parsed back into option replies.
#include "nbd/handshake.h"

#include <gtest/gtest.h>

#include "nbd/protocol.h"
#include "nbd/testing.h"

namespace imgstream::nbd {
namespace {

using testing::append;
using testing::append_u32;
using testing::append_u64;
using testing::Bytes;
using testing::client_flags;
using testing::info_go_data;
using testing::kGreetingBytes;
using testing::MemoryDevice;
using testing::MemoryStream;
using testing::meta_context_data;
using testing::option;
using testing::OptReply;

constexpr uint64_t kDiskBytes = 1 << 20;
constexpr uint64_t kRoBytes = 2 << 20;
constexpr uint64_t kAlignedBytes = 3 << 20;
constexpr const char* kDirty = "imgstream:dirty";

DeviceCaps aligned_caps() {
  DeviceCaps c = testing::writable_caps();
  c.block_size_min = 512;
  c.block_size_preferred = 64 * 1024;
  c.block_size_max = 1 << 20;
  return c;
}

Bytes concat(std::initializer_list<Bytes> parts) {
  Bytes b;
  for (const Bytes& p : parts) append(b, p);
  return b;
}

uint16_t info_type(const OptReply& r) {
  return get_u16(r.data.data());
}

class Handshake : public ::testing::Test {
 protected:
  Handshake() {
    exports_.push_back(Export{"disk", "the disk", &disk_, false});
    exports_.push_back(Export{"ro", "", &ro_, true});
    exports_.push_back(Export{"aligned", "", &aligned_, false});
  }

  // What negotiate() did with `input`.
  struct Outcome {
    bool ok = false;                // negotiate() returned a value
    std::optional<Negotiated> neg;  // ... which is this
    int error = 0;                  // otherwise its errno
    Bytes greeting;                 // the first 18 bytes of output
    std::vector<OptReply> replies;  // the option replies that followed
    Bytes rest;                     // output that is not an option reply
  };

  Outcome run(const Bytes& input, size_t write_limit = SIZE_MAX) {
    MemoryStream s(input);
    s.write_limit = write_limit;
    auto r = negotiate(s, exports_);
    Outcome o;
    o.ok = r.has_value();
    if (o.ok) {
      o.neg = *r;
    } else {
      o.error = r.error().code;
    }
    const size_t g = std::min(s.output.size(), kGreetingBytes);
    o.greeting.assign(s.output.begin(), s.output.begin() + static_cast<ptrdiff_t>(g));
    o.replies = *testing::parse_option_replies(std::span(s.output).subspan(g), &o.rest);
    return o;
  }

  // Runs `options` after the usual client flags and expects the handshake to finish.
  Outcome go(const Bytes& options) {
    Outcome o = run(concat({client_flags(), options}));
    EXPECT_TRUE(o.ok) << "errno " << o.error;
    EXPECT_TRUE(o.rest.empty());
    return o;
  }

  MemoryDevice disk_{kDiskBytes, testing::writable_caps(), {kBaseAllocation, kDirty}};
  MemoryDevice ro_{kRoBytes};
  MemoryDevice aligned_{kAlignedBytes, aligned_caps()};
  std::vector<Export> exports_;
};

// ---- Greeting and framing ---------------------------------------------------------------

TEST_F(Handshake, GreetingIsFixedNewstyleWithNoZeroes) {
  Outcome o = run({});
  EXPECT_FALSE(o.ok);
  ASSERT_EQ(o.greeting.size(), kGreetingBytes);
  EXPECT_EQ(testing::to_string(std::span(o.greeting).first(16)), "NBDMAGICIHAVEOPT");
  EXPECT_EQ(get_u16(&o.greeting[16]), kFlagFixedNewstyle | kFlagNoZeroes);
  EXPECT_TRUE(o.replies.empty());
}

TEST_F(Handshake, UnknownClientFlagsAreAnError) {
  Outcome o = run(concat({client_flags(1u << 5), option(kOptAbort)}));
  EXPECT_FALSE(o.ok);
  EXPECT_EQ(o.error, EINVAL);
  EXPECT_TRUE(o.replies.empty());
}

TEST_F(Handshake, BadOptionMagicIsAnError) {
  Bytes opt = option(kOptList);
  opt[0] = std::byte{'X'};
  Outcome o = run(concat({client_flags(), opt}));
  EXPECT_FALSE(o.ok);
  EXPECT_EQ(o.error, EINVAL);
  EXPECT_TRUE(o.replies.empty());
}

TEST_F(Handshake, Abort) {
  Outcome o = run(concat({client_flags(), option(kOptAbort)}));
  ASSERT_TRUE(o.ok);
  EXPECT_FALSE(o.neg.has_value());
  ASSERT_EQ(o.replies.size(), 1u);
  EXPECT_EQ(o.replies[0].option, kOptAbort);
  EXPECT_EQ(o.replies[0].type, kRepAck);
}

TEST_F(Handshake, AbortWhenTheClientAlreadyLeftIsStillClean) {
  Outcome o = run(concat({client_flags(), option(kOptAbort)}), kGreetingBytes);
  ASSERT_TRUE(o.ok);
  EXPECT_FALSE(o.neg.has_value());
}

TEST_F(Handshake, UnknownOptionIsUnsupportedAndTheHandshakeGoesOn) {
  Bytes data = testing::info_go_data("x");
  Outcome o =
      go(concat({option(42, data), option(kOptStartTls), option(kOptGo, info_go_data(""))}));
  ASSERT_GE(o.replies.size(), 2u);
  EXPECT_EQ(o.replies[0].option, 42u);
  EXPECT_EQ(o.replies[0].type, kRepErrUnsup);
  EXPECT_EQ(o.replies[1].option, kOptStartTls);
  EXPECT_EQ(o.replies[1].type, kRepErrPolicy);
  ASSERT_TRUE(o.neg.has_value());
  EXPECT_EQ(o.neg->exp, &exports_[0]);
}

TEST_F(Handshake, OptionDataAtTheLimitIsReadAndLargerIsAnError) {
  Bytes big(kOptionBytesMax);
  Outcome o = go(concat({option(99, big), option(kOptAbort)}));
  ASSERT_EQ(o.replies.size(), 2u);
  EXPECT_EQ(o.replies[0].type, kRepErrUnsup);

  // One byte more: refused before the server tries to read (or allocate) it.
  Bytes header;
  append_u64(header, kIHaveOpt);
  append_u32(header, kOptGo);
  append_u32(header, kOptionBytesMax + 1);
  o = run(concat({client_flags(), header}));
  EXPECT_FALSE(o.ok);
  EXPECT_EQ(o.error, EINVAL);
  o = run(concat({client_flags(), option(kOptList), header}));
  EXPECT_FALSE(o.ok);
  EXPECT_EQ(o.replies.size(), exports_.size() + 1);  // LIST was answered first
}

TEST_F(Handshake, TooManyOptionsIsAnError) {
  Bytes in = client_flags();
  for (uint32_t i = 0; i < kOptionsPerConnectionMax; ++i) append(in, option(kOptStructuredReply));
  append(in, option(kOptAbort));
  Outcome o = run(in);
  EXPECT_FALSE(o.ok);
  EXPECT_EQ(o.replies.size(), kOptionsPerConnectionMax);  // the ABORT was never read
}

// ---- NBD_OPT_LIST --------------------------------------------------------------------

TEST_F(Handshake, ListNamesEveryExport) {
  Outcome o = go(concat({option(kOptList), option(kOptAbort)}));
  ASSERT_EQ(o.replies.size(), 5u);
  for (size_t i = 0; i < 3; ++i) {
    const OptReply& r = o.replies[i];
    EXPECT_EQ(r.option, kOptList);
    EXPECT_EQ(r.type, kRepServer);
    ASSERT_GE(r.data.size(), 4u);
    const uint32_t len = get_u32(r.data.data());
    ASSERT_LE(len, r.data.size() - 4);
    EXPECT_EQ(testing::to_string(std::span(r.data).subspan(4, len)), exports_[i].name);
    EXPECT_EQ(testing::to_string(std::span(r.data).subspan(4 + len)), exports_[i].description);
  }
  EXPECT_EQ(o.replies[3].type, kRepAck);
  EXPECT_EQ(o.replies[4].option, kOptAbort);
}

TEST_F(Handshake, ListWithDataIsInvalid) {
  Outcome o = go(concat({option(kOptList, Bytes(3)), option(kOptAbort)}));
  ASSERT_EQ(o.replies.size(), 2u);
  EXPECT_EQ(o.replies[0].option, kOptList);
  EXPECT_EQ(o.replies[0].type, kRepErrInvalid);
}

// ---- NBD_OPT_INFO and NBD_OPT_GO ------------------------------------------------------

TEST_F(Handshake, GoWithoutInfoRequests) {
  Outcome o = go(option(kOptGo, info_go_data("")));
  ASSERT_EQ(o.replies.size(), 3u);
  for (const OptReply& r : o.replies) EXPECT_EQ(r.option, kOptGo);
  ASSERT_EQ(o.replies[0].type, kRepInfo);
  ASSERT_EQ(o.replies[0].data.size(), 12u);
  EXPECT_EQ(info_type(o.replies[0]), kInfoExport);
  EXPECT_EQ(get_u64(&o.replies[0].data[2]), kDiskBytes);
  const uint16_t flags = get_u16(&o.replies[0].data[10]);
  EXPECT_EQ(flags, kFlagHasFlags | kFlagSendFlush | kFlagSendFua | kFlagSendTrim |
                       kFlagSendWriteZeroes | kFlagSendFastZero | kFlagSendCache |
                       kFlagCanMultiConn);
  // Block sizes are sent even when not asked for.
  ASSERT_EQ(o.replies[1].type, kRepInfo);
  EXPECT_EQ(info_type(o.replies[1]), kInfoBlockSize);
  EXPECT_EQ(o.replies[2].type, kRepAck);

  ASSERT_TRUE(o.neg.has_value());
  EXPECT_EQ(o.neg->exp, &exports_[0]);  // "" is the first export
  EXPECT_FALSE(o.neg->structured_replies);
  EXPECT_EQ(o.neg->transmission_flags, flags);
  EXPECT_TRUE(o.neg->contexts.empty());
}

TEST_F(Handshake, InfoAnswersAndTheHandshakeGoesOn) {
  Outcome o = go(concat(
      {option(kOptInfo, info_go_data("ro", {kInfoName, kInfoDescription, kInfoBlockSize, 77})),
       option(kOptInfo, info_go_data("disk", {kInfoDescription})),
       option(kOptGo, info_go_data("aligned"))}));
  // INFO ro: EXPORT, BLOCK_SIZE, NAME, (no DESCRIPTION: it is empty), ACK.
  ASSERT_EQ(o.replies.size(), 4u + 4u + 3u);
  EXPECT_EQ(info_type(o.replies[0]), kInfoExport);
  EXPECT_EQ(get_u64(&o.replies[0].data[2]), kRoBytes);
  const uint16_t ro_flags = get_u16(&o.replies[0].data[10]);
  EXPECT_EQ(ro_flags,
            kFlagHasFlags | kFlagReadOnly | kFlagSendFlush | kFlagSendCache | kFlagCanMultiConn);
  EXPECT_EQ(info_type(o.replies[1]), kInfoBlockSize);
  EXPECT_EQ(info_type(o.replies[2]), kInfoName);
  EXPECT_EQ(testing::to_string(std::span(o.replies[2].data).subspan(2)), "ro");
  EXPECT_EQ(o.replies[3].type, kRepAck);
  EXPECT_EQ(o.replies[3].option, kOptInfo);
  // INFO disk with DESCRIPTION.
  EXPECT_EQ(info_type(o.replies[4]), kInfoExport);
  EXPECT_EQ(get_u64(&o.replies[4].data[2]), kDiskBytes);
  EXPECT_EQ(info_type(o.replies[6]), kInfoDescription);
  EXPECT_EQ(testing::to_string(std::span(o.replies[6].data).subspan(2)), "the disk");
  EXPECT_EQ(o.replies[7].type, kRepAck);
  // GO aligned.
  EXPECT_EQ(get_u64(&o.replies[8].data[2]), kAlignedBytes);
  ASSERT_EQ(info_type(o.replies[9]), kInfoBlockSize);
  ASSERT_EQ(o.replies[9].data.size(), 14u);
  EXPECT_EQ(get_u32(&o.replies[9].data[2]), 512u);
  EXPECT_EQ(get_u32(&o.replies[9].data[6]), 64u * 1024);
  EXPECT_EQ(get_u32(&o.replies[9].data[10]), 1u << 20);
  EXPECT_EQ(o.replies[10].type, kRepAck);
  ASSERT_TRUE(o.neg.has_value());
  EXPECT_EQ(o.neg->exp, &exports_[2]);
}

TEST_F(Handshake, GoReadOnlyExport) {
  Outcome o = go(option(kOptGo, info_go_data("ro")));
  ASSERT_TRUE(o.neg.has_value());
  EXPECT_EQ(o.neg->exp, &exports_[1]);
  EXPECT_TRUE(o.neg->transmission_flags & kFlagReadOnly);
  EXPECT_FALSE(o.neg->transmission_flags & (kFlagSendFua | kFlagSendTrim | kFlagSendWriteZeroes));
  EXPECT_EQ(o.neg->transmission_flags, transmission_flags(exports_[1], false));
}

TEST_F(Handshake, UnknownExportIsErrUnknownAndTheHandshakeGoesOn) {
  Outcome o =
      go(concat({option(kOptGo, info_go_data("nope")), option(kOptInfo, info_go_data("nope")),
                 option(kOptGo, info_go_data("ro"))}));
  ASSERT_GE(o.replies.size(), 2u);
  EXPECT_EQ(o.replies[0].option, kOptGo);
  EXPECT_EQ(o.replies[0].type, kRepErrUnknown);
  EXPECT_EQ(o.replies[1].option, kOptInfo);
  EXPECT_EQ(o.replies[1].type, kRepErrUnknown);
  ASSERT_TRUE(o.neg.has_value());
  EXPECT_EQ(o.neg->exp, &exports_[1]);
}

TEST_F(Handshake, MalformedInfoGoIsInvalid) {
  std::vector<Bytes> bad;
  bad.push_back({});  // no name length
  Bytes b;
  append_u32(b, 10);
  bad.push_back(b);  // name cut short
  b = info_go_data("disk", {kInfoName});
  b.pop_back();
  bad.push_back(b);  // info list cut short
  b = info_go_data("disk", {kInfoName});
  b.push_back(std::byte{0});
  bad.push_back(b);  // trailing byte
  b = info_go_data("disk");
  put_u32(b.data(), 0xffffffff);
  bad.push_back(b);  // name length beyond the data
  b.clear();
  append_u32(b, kStringBytesMax + 1);
  append(b, Bytes(kStringBytesMax + 1 + 2));
  bad.push_back(b);  // name longer than the protocol allows
  for (uint32_t opt : {kOptInfo, kOptGo}) {
    for (const Bytes& data : bad) {
      Outcome o = go(concat({option(opt, data), option(kOptAbort)}));
      ASSERT_EQ(o.replies.size(), 2u);
      EXPECT_EQ(o.replies[0].option, opt);
      EXPECT_EQ(o.replies[0].type, kRepErrInvalid);
      EXPECT_FALSE(o.neg.has_value());
    }
  }
}

// ---- NBD_OPT_EXPORT_NAME --------------------------------------------------------------

TEST_F(Handshake, ExportNameWithNoZeroes) {
  Bytes name;
  testing::append_str(name, "ro");
  Outcome o = run(concat({client_flags(), option(kOptExportName, name)}));
  ASSERT_TRUE(o.ok);
  ASSERT_TRUE(o.neg.has_value());
  EXPECT_EQ(o.neg->exp, &exports_[1]);
  EXPECT_TRUE(o.replies.empty());
  ASSERT_EQ(o.rest.size(), 10u);
  EXPECT_EQ(get_u64(&o.rest[0]), kRoBytes);
  EXPECT_EQ(get_u16(&o.rest[8]), o.neg->transmission_flags);
  EXPECT_TRUE(o.neg->transmission_flags & kFlagReadOnly);
}

TEST_F(Handshake, ExportNameWithoutNoZeroesPads124Zeroes) {
  Outcome o = run(concat({client_flags(kClientFlagFixedNewstyle), option(kOptExportName)}));
  ASSERT_TRUE(o.ok);
  ASSERT_TRUE(o.neg.has_value());
  EXPECT_EQ(o.neg->exp, &exports_[0]);  // "" is the default export
  ASSERT_EQ(o.rest.size(), 10u + 124u);
  EXPECT_EQ(get_u64(&o.rest[0]), kDiskBytes);
  for (size_t i = 10; i < o.rest.size(); ++i) ASSERT_EQ(o.rest[i], std::byte{0}) << i;
}

TEST_F(Handshake, ExportNameOfAnUnknownExportClosesTheConnection) {
  Bytes name;
  testing::append_str(name, "nope");
  Outcome o = run(concat({client_flags(), option(kOptExportName, name), option(kOptAbort)}));
  EXPECT_FALSE(o.ok);
  EXPECT_EQ(o.error, EINVAL);
  EXPECT_TRUE(o.replies.empty());
  EXPECT_TRUE(o.rest.empty());
}

TEST_F(Handshake, ExportNameAfterStructuredReplyAdvertisesDf) {
  Outcome o = run(concat({client_flags(), option(kOptStructuredReply), option(kOptExportName)}));
  ASSERT_TRUE(o.ok && o.neg.has_value());
  EXPECT_TRUE(o.neg->structured_replies);
  EXPECT_TRUE(o.neg->transmission_flags & kFlagSendDf);
  ASSERT_EQ(o.rest.size(), 10u);
  EXPECT_EQ(get_u16(&o.rest[8]), o.neg->transmission_flags);
}

// ---- NBD_OPT_STRUCTURED_REPLY ---------------------------------------------------------

TEST_F(Handshake, StructuredReply) {
  Outcome o = go(concat({option(kOptStructuredReply), option(kOptGo, info_go_data("disk"))}));
  ASSERT_EQ(o.replies.size(), 4u);
  EXPECT_EQ(o.replies[0].option, kOptStructuredReply);
  EXPECT_EQ(o.replies[0].type, kRepAck);
  const uint16_t flags = get_u16(&o.replies[1].data[10]);
  EXPECT_TRUE(flags & kFlagSendDf);
  ASSERT_TRUE(o.neg.has_value());
  EXPECT_TRUE(o.neg->structured_replies);
  EXPECT_EQ(o.neg->transmission_flags, flags);
}

TEST_F(Handshake, StructuredReplyWithDataIsInvalid) {
  Outcome o = go(concat({option(kOptStructuredReply, Bytes(1)), option(kOptGo, info_go_data(""))}));
  EXPECT_EQ(o.replies[0].type, kRepErrInvalid);
  ASSERT_TRUE(o.neg.has_value());
  EXPECT_FALSE(o.neg->structured_replies);
  EXPECT_FALSE(o.neg->transmission_flags & kFlagSendDf);
}

// ---- Metadata contexts --------------------------------------------------------------

std::vector<std::string> context_names(const std::vector<OptReply>& replies, uint32_t opt,
                                       std::vector<uint32_t>* ids = nullptr) {
  std::vector<std::string> names;
  for (const OptReply& r : replies) {
    if (r.option != opt || r.type != kRepMetaContext) continue;
    EXPECT_GE(r.data.size(), 4u);
    if (ids) ids->push_back(get_u32(r.data.data()));
    names.push_back(testing::to_string(std::span(r.data).subspan(4)));
  }
  return names;
}

TEST_F(Handshake, ListMetaContexts) {
  using V = std::vector<std::string>;
  auto list = [&](std::vector<std::string> queries) {
    Outcome o = go(concat({option(kOptStructuredReply),
                           option(kOptListMetaContext, meta_context_data("disk", queries)),
                           option(kOptAbort)}));
    EXPECT_EQ(o.replies.at(o.replies.size() - 2).type, kRepAck);
    return context_names(o.replies, kOptListMetaContext);
  };
  EXPECT_EQ(list({}), (V{kBaseAllocation, kDirty}));  // no query: everything
  EXPECT_EQ(list({"base:"}), (V{kBaseAllocation}));   // a namespace: all of it
  EXPECT_EQ(list({"imgstream:"}), (V{kDirty}));
  EXPECT_EQ(list({"base:allocation"}), (V{kBaseAllocation}));
  EXPECT_EQ(list({"qemu:dirty-bitmap:x", "nope:"}), V{});  // unknown: ignored
  EXPECT_EQ(list({"base"}), V{});
  EXPECT_EQ(list({"nope:", "base:allocation", "imgstream:dirty"}), (V{kBaseAllocation, kDirty}));
}

TEST_F(Handshake, ListMetaContextsNeedsNoSelectionAndChangesNone) {
  Outcome o = go(concat({option(kOptStructuredReply),
                         option(kOptSetMetaContext, meta_context_data("disk", {kBaseAllocation})),
                         option(kOptListMetaContext, meta_context_data("disk", {})),
                         option(kOptGo, info_go_data("disk"))}));
  ASSERT_TRUE(o.neg.has_value());
  EXPECT_EQ(o.neg->contexts, std::vector<size_t>{0});
}

TEST_F(Handshake, SetMetaContextSelectsExactNames) {
  Outcome o =
      go(concat({option(kOptStructuredReply),
                 option(kOptSetMetaContext, meta_context_data("disk", {"unknown:thing", kDirty,
                                                                       "base:", kBaseAllocation})),
                 option(kOptGo, info_go_data("disk"))}));
  std::vector<uint32_t> ids;
  EXPECT_EQ(context_names(o.replies, kOptSetMetaContext, &ids),
            (std::vector<std::string>{kBaseAllocation, kDirty}));
  EXPECT_EQ(ids, (std::vector<uint32_t>{0, 1}));
  ASSERT_TRUE(o.neg.has_value());
  // Wire id i names device->meta_contexts()[contexts[i]].
  EXPECT_EQ(o.neg->contexts, (std::vector<size_t>{0, 1}));

  o = go(concat({option(kOptStructuredReply),
                 option(kOptSetMetaContext, meta_context_data("disk", {kDirty})),
                 option(kOptGo, info_go_data("disk"))}));
  ids.clear();
  EXPECT_EQ(context_names(o.replies, kOptSetMetaContext, &ids), std::vector<std::string>{kDirty});
  EXPECT_EQ(ids, std::vector<uint32_t>{0});
  ASSERT_TRUE(o.neg.has_value());
  EXPECT_EQ(o.neg->contexts, std::vector<size_t>{1});
}

TEST_F(Handshake, SetMetaContextWithoutStructuredRepliesIsInvalid) {
  Outcome o = go(concat({option(kOptSetMetaContext, meta_context_data("disk", {kBaseAllocation})),
                         option(kOptListMetaContext, meta_context_data("disk", {})),
                         option(kOptGo, info_go_data("disk"))}));
  EXPECT_EQ(o.replies[0].type, kRepErrInvalid);
  EXPECT_EQ(o.replies[1].type, kRepErrInvalid);
  ASSERT_TRUE(o.neg.has_value());
  EXPECT_TRUE(o.neg->contexts.empty());
}

TEST_F(Handshake, ContextsCountOnlyForTheExportTheyWereSetFor) {
  auto contexts_after = [&](const char* set_for, const char* go_to) {
    Outcome o =
        go(concat({option(kOptStructuredReply),
                   option(kOptSetMetaContext, meta_context_data(set_for, {kBaseAllocation})),
                   option(kOptGo, info_go_data(go_to))}));
    EXPECT_TRUE(o.neg.has_value());
    return o.neg ? o.neg->contexts : std::vector<size_t>{99};
  };
  EXPECT_EQ(contexts_after("disk", "disk"), std::vector<size_t>{0});
  EXPECT_EQ(contexts_after("", "disk"), std::vector<size_t>{0});  // "" is "disk"
  EXPECT_EQ(contexts_after("disk", ""), std::vector<size_t>{0});
  EXPECT_TRUE(contexts_after("ro", "disk").empty());
  EXPECT_TRUE(contexts_after("disk", "ro").empty());
  EXPECT_EQ(contexts_after("ro", "ro"), std::vector<size_t>{0});

  // The same through NBD_OPT_EXPORT_NAME.
  Bytes name;
  testing::append_str(name, "ro");
  Outcome o = run(concat({client_flags(), option(kOptStructuredReply),
                          option(kOptSetMetaContext, meta_context_data("disk", {kBaseAllocation})),
                          option(kOptExportName, name)}));
  ASSERT_TRUE(o.ok && o.neg.has_value());
  EXPECT_TRUE(o.neg->contexts.empty());
}

TEST_F(Handshake, AFailedSetClearsTheSelection) {
  Bytes trailing = meta_context_data("disk", {kBaseAllocation});
  trailing.push_back(std::byte{0});
  Outcome o =
      go(concat({option(kOptStructuredReply),
                 option(kOptSetMetaContext, meta_context_data("disk", {kBaseAllocation})),
                 option(kOptSetMetaContext, trailing), option(kOptGo, info_go_data("disk"))}));
  EXPECT_EQ(o.replies[3].option, kOptSetMetaContext);
  EXPECT_EQ(o.replies[3].type, kRepErrInvalid);
  ASSERT_TRUE(o.neg.has_value());
  EXPECT_TRUE(o.neg->contexts.empty());

  // A SET that matches nothing also replaces the selection.
  o = go(concat({option(kOptStructuredReply),
                 option(kOptSetMetaContext, meta_context_data("disk", {kBaseAllocation})),
                 option(kOptSetMetaContext, meta_context_data("disk", {"nope:x"})),
                 option(kOptGo, info_go_data("disk"))}));
  ASSERT_TRUE(o.neg.has_value());
  EXPECT_TRUE(o.neg->contexts.empty());
}

TEST_F(Handshake, EmptyQueriesAndNamesAreWellFormed) {
  // A zero-length string as the last bytes of an option: nothing to read, nothing to match.
  Outcome o = go(
      concat({option(kOptStructuredReply), option(kOptListMetaContext, meta_context_data("", {""})),
              option(kOptSetMetaContext, meta_context_data("disk", {kDirty, ""})),
              option(kOptGo, info_go_data("disk"))}));
  ASSERT_EQ(o.replies[1].option, kOptListMetaContext);
  EXPECT_EQ(o.replies[1].type, kRepAck);
  EXPECT_EQ(context_names(o.replies, kOptSetMetaContext), std::vector<std::string>{kDirty});
  ASSERT_TRUE(o.neg.has_value());
  EXPECT_EQ(o.neg->contexts, std::vector<size_t>{1});
}

TEST_F(Handshake, MalformedMetaContextRequests) {
  struct Case {
    Bytes data;
    uint32_t want;
  };
  std::vector<Case> cases;
  cases.push_back({{}, kRepErrInvalid});
  Bytes b = meta_context_data("disk", {kBaseAllocation});
  b.resize(b.size() - 1);
  cases.push_back({b, kRepErrInvalid});  // query cut short
  b = meta_context_data("disk", {});
  put_u32(&b[8], 1);
  cases.push_back({b, kRepErrInvalid});  // one query announced, none sent
  b = meta_context_data("disk", {});
  put_u32(&b[8], kMetaQueriesMax + 1);
  cases.push_back({b, kRepErrTooBig});
  b = meta_context_data("disk", {});
  put_u32(&b[8], 0xffffffff);
  cases.push_back({b, kRepErrTooBig});
  b = meta_context_data("disk", {"x"});
  put_u32(&b[12], kStringBytesMax + 1);
  append(b, Bytes(kStringBytesMax + 1));
  cases.push_back({b, kRepErrInvalid});  // query longer than the protocol allows
  cases.push_back({meta_context_data("nope", {kBaseAllocation}), kRepErrUnknown});
  for (uint32_t opt : {kOptListMetaContext, kOptSetMetaContext}) {
    for (const Case& c : cases) {
      Outcome o = go(concat({option(kOptStructuredReply), option(opt, c.data), option(kOptAbort)}));
      ASSERT_EQ(o.replies.size(), 3u);
      EXPECT_EQ(o.replies[1].option, opt);
      EXPECT_EQ(o.replies[1].type, c.want);
    }
  }
}

// ---- Robustness -------------------------------------------------------------------------

// A client that does a bit of everything before GO.
Bytes full_script() {
  return concat({client_flags(), option(kOptList), option(kOptStructuredReply),
                 option(kOptListMetaContext, meta_context_data("disk", {"base:"})),
                 option(kOptSetMetaContext, meta_context_data("disk", {kBaseAllocation})),
                 option(kOptInfo, info_go_data("ro", {kInfoName})), option(77),
                 option(kOptGo, info_go_data("disk", {kInfoBlockSize}))});
}

TEST_F(Handshake, FullScriptSucceeds) {
  Outcome o = run(full_script());
  ASSERT_TRUE(o.ok);
  EXPECT_TRUE(o.rest.empty());
  ASSERT_TRUE(o.neg.has_value());
  EXPECT_EQ(o.neg->exp, &exports_[0]);
  EXPECT_TRUE(o.neg->structured_replies);
  EXPECT_EQ(o.neg->contexts, std::vector<size_t>{0});
}

TEST_F(Handshake, EarlyEndOfStreamAtEveryByteIsAnError) {
  const Bytes in = full_script();
  for (size_t n = 0; n < in.size(); ++n) {
    Outcome o = run(Bytes(in.begin(), in.begin() + static_cast<ptrdiff_t>(n)));
    ASSERT_FALSE(o.ok) << "cut at " << n;
    EXPECT_EQ(o.error, ECONNRESET);
    EXPECT_TRUE(o.rest.empty()) << "cut at " << n;  // only whole replies were sent
  }
}

TEST_F(Handshake, WriteFailureAtEveryByteIsAnError) {
  const Bytes in = full_script();
  MemoryStream full(in);
  ASSERT_TRUE(negotiate(full, exports_));
  for (size_t n = 0; n < full.output.size(); ++n) {
    Outcome o = run(in, n);
    ASSERT_FALSE(o.ok) << "cut at " << n;
    EXPECT_EQ(o.error, EPIPE);
  }
}

TEST_F(Handshake, EveryByteFlippedIsHandledWithoutCrashing) {
  const Bytes in = full_script();
  for (size_t i = 0; i < in.size(); ++i) {
    for (uint8_t mask : {0x01, 0x80, 0xff}) {
      Bytes b = in;
      b[i] ^= std::byte{mask};
      Outcome o = run(b);
      if (o.ok && o.neg) {
        // Whatever was agreed must be self-consistent.
        ASSERT_NE(o.neg->exp, nullptr);
        EXPECT_EQ(o.neg->transmission_flags,
                  transmission_flags(*o.neg->exp, o.neg->structured_replies));
        if (!o.neg->contexts.empty()) {
          EXPECT_TRUE(o.neg->structured_replies);
        }
        for (size_t c : o.neg->contexts) {
          EXPECT_LT(c, o.neg->exp->device->meta_contexts().size());
        }
      }
    }
  }
}

}  // namespace
}  // namespace imgstream::nbd
