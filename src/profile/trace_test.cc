#include "profile/trace.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <thread>

#include "base/endian.h"
#include "base/env_memory.h"
#include "device/forwarding_device.h"
#include "nbd/testing.h"
#include "profile/tracing_device.h"

namespace imgstream::profile {
namespace {

constexpr uint64_t kImageSize = uint64_t{1} << 30;

std::vector<std::byte> file_bytes(Env& env, const std::string& path) {
  auto f = env.open(path, OpenMode::ReadOnly);
  EXPECT_TRUE(f);
  std::vector<std::byte> b((*f)->size().value());
  EXPECT_TRUE(read_exact_at(**f, 0, b));
  return b;
}

void put_file(Env& env, const std::string& path, std::span<const std::byte> b) {
  auto f = env.open(path, OpenMode::CreateOrOpen);
  ASSERT_TRUE(f);
  ASSERT_TRUE((*f)->truncate(0));
  ASSERT_TRUE(write_all_at(**f, 0, b));
}

// Writes `n` records per thread from `threads` threads; record i of thread t has offset
// (t * n + i) * 4096 so that every record is distinct.
void write_trace(Env& env, const std::string& path, int threads, int n) {
  auto w = TraceWriter::create(env, path, TraceHeader{.image_size = kImageSize});
  ASSERT_TRUE(w) << w.error().message;
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < n; ++i) {
        const uint64_t off = (uint64_t(t) * n + i) * 4096;
        (*w)->record(TraceRecord{(*w)->now_ns(), off, 4096, uint32_t(i & 1)});
      }
    });
  }
  for (auto& t : ts) t.join();
  ASSERT_TRUE((*w)->close());
  EXPECT_EQ((*w)->dropped(), 0u);
}

TEST(Trace, RoundTripManyThreads) {
  MemEnv env;
  constexpr int kThreads = 8, kPerThread = 20000;
  write_trace(env, "/t", kThreads, kPerThread);
  auto t = read_trace(env, "/t");
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_FALSE(t->torn_tail);
  EXPECT_EQ(t->header.image_size, kImageSize);
  EXPECT_EQ(t->header.region_size, 0u);
  EXPECT_GT(t->header.start_time_ns, 0u);
  ASSERT_EQ(t->records.size(), size_t{kThreads} * kPerThread);
  std::vector<TraceRecord> rs = t->records;
  std::sort(rs.begin(), rs.end(), [](auto& a, auto& b) { return a.offset < b.offset; });
  for (size_t i = 0; i < rs.size(); ++i) {
    ASSERT_EQ(rs[i].offset, i * 4096);
    ASSERT_EQ(rs[i].length, 4096u);
    ASSERT_EQ(rs[i].flags, (i % kPerThread) & 1);
  }
}

TEST(Trace, EmptyTrace) {
  MemEnv env;
  write_trace(env, "/t", 0, 0);
  auto t = read_trace(env, "/t");
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_TRUE(t->records.empty());
  EXPECT_FALSE(t->torn_tail);
}

TEST(Trace, TruncatedTailKeepsTheRest) {
  MemEnv env;
  // Built by hand: the writer's block boundaries depend on timing.
  auto bytes = encode_trace_header(TraceHeader{.image_size = kImageSize});
  std::vector<TraceRecord> rs(kTraceBlockRecordsMax, TraceRecord{1, 4096, 4096, 1});
  for (int i = 0; i < 3; ++i) {
    auto blk = encode_trace_block(rs);
    bytes.insert(bytes.end(), blk.begin(), blk.end());
  }
  put_file(env, "/t", bytes);
  ASSERT_TRUE(read_trace(env, "/t"));
  EXPECT_EQ(read_trace(env, "/t")->records.size(), 3 * kTraceBlockRecordsMax);
  const size_t block = kTraceBlockHeaderBytes + kTraceBlockRecordsMax * kTraceRecordBytes;
  ASSERT_EQ(bytes.size(), kTraceHeaderBytes + 3 * block);
  for (size_t cut : {size_t{1}, size_t{kTraceRecordBytes}, block - 1}) {
    put_file(env, "/cut", std::span(bytes).first(bytes.size() - cut));
    auto t = read_trace(env, "/cut");
    ASSERT_TRUE(t) << t.error().message;
    EXPECT_TRUE(t->torn_tail);
    EXPECT_EQ(t->records.size(), 2 * kTraceBlockRecordsMax);
  }
  // A last block of garbage (torn write) is dropped too.
  auto torn = bytes;
  torn[torn.size() - 5] ^= std::byte{0x40};
  put_file(env, "/torn", torn);
  auto t = read_trace(env, "/torn");
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_TRUE(t->torn_tail);
  EXPECT_EQ(t->records.size(), 2 * kTraceBlockRecordsMax);
}

TEST(Trace, CorruptHeaderIsAnError) {
  MemEnv env;
  write_trace(env, "/t", 1, 10);
  auto bytes = file_bytes(env, "/t");
  for (size_t at : {size_t{0}, size_t{17}, size_t{40}, kTraceHeaderBytes - 1}) {
    auto b = bytes;
    b[at] ^= std::byte{1};
    put_file(env, "/bad", b);
    auto t = read_trace(env, "/bad");
    ASSERT_FALSE(t) << "flipped byte " << at;
    EXPECT_NE(t.error().message.find("/bad"), std::string::npos) << t.error().message;
  }
  put_file(env, "/short", std::span(bytes).first(10));
  auto t = read_trace(env, "/short");
  ASSERT_FALSE(t);
  EXPECT_NE(t.error().message.find("/short"), std::string::npos);
  EXPECT_FALSE(read_trace(env, "/missing"));
}

TEST(Trace, CorruptBlockBeforeTheLastIsAnError) {
  MemEnv env;
  write_trace(env, "/t", 1, 2 * kTraceBlockRecordsMax);
  auto bytes = file_bytes(env, "/t");
  auto b = bytes;
  b[kTraceHeaderBytes + kTraceBlockHeaderBytes + 100] ^= std::byte{1};
  put_file(env, "/bad", b);
  auto t = read_trace(env, "/bad");
  ASSERT_FALSE(t);
  EXPECT_NE(t.error().message.find("CRC"), std::string::npos) << t.error().message;
  EXPECT_NE(t.error().message.find("/bad"), std::string::npos) << t.error().message;
}

TEST(Trace, InvalidRecordIsAnError) {
  TraceHeader h{.image_size = 8192};
  auto bytes = encode_trace_header(h);
  for (TraceRecord r :
       {TraceRecord{0, 4096, 8192, 0}, TraceRecord{0, 0, 0, 0}, TraceRecord{0, 0, 512, 2}}) {
    auto b = bytes;
    auto blk = encode_trace_block(std::span(&r, 1));
    b.insert(b.end(), blk.begin(), blk.end());
    b.insert(b.end(), blk.begin(), blk.end());  // not last: no torn-tail excuse either way
    auto t = parse_trace(b, "x");
    EXPECT_FALSE(t);
  }
}

TEST(TracingDevice, RecordsReadsWithLocalFlag) {
  MemEnv env;
  nbd::testing::MemoryDevice inner(1 << 20);
  auto w = TraceWriter::create(
      env, "/t",
      TraceHeader{.image_size = inner.size(), .region_size = 65536, .flags = kTraceFlagStreaming});
  ASSERT_TRUE(w);
  // Local: the first half of the image, as the device below says (BlockDevice::is_local).
  struct HalfLocal final : ForwardingDevice {
    using ForwardingDevice::ForwardingDevice;
    bool is_local(uint64_t off, uint64_t len) const override { return off + len <= (1 << 19); }
  } half(inner);
  TracingDevice dev(half, **w);
  std::vector<std::byte> buf(4096);
  ASSERT_TRUE(dev.read(0, buf));
  ASSERT_TRUE(dev.read_nowait(8192, buf));
  inner.set_nowait(false);
  // A declined read_nowait is not recorded; its retry through read() is.
  auto r = dev.read_nowait(600000, buf);
  ASSERT_FALSE(r);
  EXPECT_TRUE(r.error().is_would_block());
  ASSERT_TRUE(dev.read(600000, buf));
  ASSERT_TRUE(dev.read(1 << 19 | 1 << 18, std::span(buf).first(512 * 3)));
  // Writes go through and are not recorded.
  ASSERT_TRUE(dev.write(0, buf, Durability::Buffered));
  ASSERT_TRUE((*w)->close());

  auto t = read_trace(env, "/t");
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_EQ(t->header.flags, kTraceFlagStreaming);
  EXPECT_EQ(t->header.region_size, 65536u);
  ASSERT_EQ(t->records.size(), 4u);
  EXPECT_EQ(t->records[0].offset, 0u);
  EXPECT_EQ(t->records[0].flags, kRecordLocal);
  EXPECT_EQ(t->records[1].offset, 8192u);
  EXPECT_EQ(t->records[1].flags, kRecordLocal);
  EXPECT_EQ(t->records[2].offset, 600000u);
  EXPECT_EQ(t->records[2].flags, 0u);
  EXPECT_EQ(t->records[3].offset, (1u << 19) | (1u << 18));
  EXPECT_EQ(t->records[3].length, 1536u);
  EXPECT_EQ(t->records[3].flags, 0u);
  for (size_t i = 1; i < t->records.size(); ++i)
    EXPECT_GE(t->records[i].time_ns, t->records[i - 1].time_ns);
}

TEST(TracingDevice, FailedReadIsNotRecorded) {
  MemEnv env;
  nbd::testing::MemoryDevice inner(1 << 20);
  auto w = TraceWriter::create(env, "/t", TraceHeader{.image_size = inner.size()});
  ASSERT_TRUE(w);
  TracingDevice dev(inner, **w);
  inner.fail_from(4096);
  std::vector<std::byte> buf(4096);
  EXPECT_FALSE(dev.read(8192, buf));
  EXPECT_TRUE(dev.read(0, buf));
  ASSERT_TRUE((*w)->close());
  auto t = read_trace(env, "/t");
  ASSERT_TRUE(t);
  ASSERT_EQ(t->records.size(), 1u);
  EXPECT_EQ(t->records[0].flags, kRecordLocal);
}

}  // namespace
}  // namespace imgstream::profile
