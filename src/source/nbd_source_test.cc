// NbdSource against real nbdkit servers (file plugin; error, delay, blocksize-policy and
// multi-conn filters), killed and restarted to make the faults real.
#include "source/nbd_source.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>

#include "base/stop.h"
#include "base/unique_fd.h"
#include "source/nbdkit_testing.h"

namespace imgstream::source {
namespace {

using namespace std::chrono_literals;
using testing::Completions;
using testing::eventually;
using testing::kWaitMax;
using testing::Nbdkit;
using Clock = std::chrono::steady_clock;

// Larger than one 32 MiB request, and of an odd size, so that the last piece is short.
constexpr uint64_t kImageBytes = (40u << 20) + 12345;
constexpr uint64_t kOtherImageBytes = 1u << 20;
constexpr uint64_t kSparseBytes = 8u << 20;

class NbdSourceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing::make_temp_dir());
    image_ = new std::vector<std::byte>(testing::pattern_bytes(kImageBytes, 1));
    testing::write_file(*dir_ + "/image", *image_);
    testing::write_file(*dir_ + "/other", testing::pattern_bytes(kOtherImageBytes, 2));
    testing::write_sparse_file(*dir_ + "/sparse", kSparseBytes,
                               {{1u << 20, 1u << 20}, {5u << 20, 64u << 10}});
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
    delete image_;
  }

  void SetUp() override {
    static std::atomic<int> n{0};
    socket_ = *dir_ + "/sock" + std::to_string(n++);
    uri_ = "nbd+unix:///?socket=" + socket_;
  }

  // Serves `file` (in the suite's directory) through the given filters and parameters.
  void serve(const std::string& file, std::vector<std::string> filters = {},
             std::vector<std::string> params = {}) {
    std::vector<std::string> args = std::move(filters);
    args.push_back("file");
    args.push_back(*dir_ + "/" + file);
    args.insert(args.end(), params.begin(), params.end());
    auto r = server_.start(socket_, args);
    ASSERT_TRUE(r) << r.error().message;
  }

  std::unique_ptr<NbdSource> open(NbdSourceOptions o = {}) {
    auto r = NbdSource::open(uri_, o);
    EXPECT_TRUE(r) << r.error().message;
    return r ? std::move(r).value() : nullptr;
  }

  static std::span<const std::byte> expected(uint64_t offset, uint64_t length) {
    return std::span<const std::byte>(*image_).subspan(offset, length);
  }

  // Starts `count` reads of random ranges; their buffers are in `bufs`.
  struct Reads {
    std::vector<std::pair<uint64_t, std::vector<std::byte>>> bufs;
    Completions done;
  };
  static void start_reads(Source& s, Reads& reads, size_t count, uint64_t length_max,
                          uint64_t seed) {
    std::mt19937_64 rng(seed);
    reads.bufs.resize(count);
    for (size_t i = 0; i < count; ++i) {
      uint64_t len = 1 + rng() % length_max;
      uint64_t off = rng() % (kImageBytes - len);
      reads.bufs[i] = {off, std::vector<std::byte>(len)};
    }
    for (size_t i = 0; i < count; ++i)
      s.read_async(reads.bufs[i].first, reads.bufs[i].second, reads.done.callback(i));
  }
  static void check_reads(Reads& reads) {
    ASSERT_TRUE(reads.done.wait()) << "reads did not complete";
    for (size_t i = 0; i < reads.bufs.size(); ++i) {
      const auto& r = reads.done.result(i);
      ASSERT_TRUE(r) << r.error().message;
      auto& [off, buf] = reads.bufs[i];
      ASSERT_TRUE(std::ranges::equal(buf, expected(off, buf.size()))) << "read at " << off;
    }
  }

  static std::string* dir_;
  static std::vector<std::byte>* image_;
  std::string socket_;
  std::string uri_;
  Nbdkit server_;
};

std::string* NbdSourceTest::dir_ = nullptr;
std::vector<std::byte>* NbdSourceTest::image_ = nullptr;

TEST_F(NbdSourceTest, ReadsMatchTheImage) {
  serve("image");
  auto src = open();
  ASSERT_TRUE(src);
  EXPECT_EQ(src->size(), kImageBytes);
  EXPECT_EQ(src->uri(), uri_);

  std::vector<std::byte> buf(4096);
  ASSERT_TRUE(src->read(kImageBytes - buf.size(), buf));
  EXPECT_TRUE(std::ranges::equal(buf, expected(kImageBytes - buf.size(), buf.size())));

  Reads reads;
  start_reads(*src, reads, 300, 256 << 10, 7);
  check_reads(reads);
  uint64_t total = buf.size();
  for (auto& [off, b] : reads.bufs) total += b.size();
  EXPECT_EQ(src->bytes_read(), total);
  EXPECT_EQ(src->retries(), 0u);
  EXPECT_EQ(src->reconnects(), 0u);
}

TEST_F(NbdSourceTest, ReadLargerThanOneRequestIsSplit) {
  serve("image");
  auto src = open();
  ASSERT_TRUE(src);
  // The whole image in one read: 32 MiB + the rest.
  std::vector<std::byte> buf(kImageBytes);
  auto r = src->read(0, buf);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_TRUE(std::ranges::equal(buf, *image_));
}

TEST_F(NbdSourceTest, ReadIsSplitAtTheServersMaximum) {
  // The server advertises 1 MiB and fails anything larger: every piece must fit.
  serve("image", {"--filter=blocksize-policy"},
        {"blocksize-maximum=1M", "blocksize-error-policy=error"});
  auto src = open();
  ASSERT_TRUE(src);
  std::vector<std::byte> buf((5u << 20) + 777);
  auto r = src->read(12345, buf);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_TRUE(std::ranges::equal(buf, expected(12345, buf.size())));
  EXPECT_EQ(src->retries(), 0u);
}

TEST_F(NbdSourceTest, DoneMayReadAgain) {
  serve("image");
  auto src = open();
  ASSERT_TRUE(src);
  // Each completion starts the next read from inside done(), as Source allows.
  constexpr int kChain = 50;
  std::vector<std::byte> buf(64 << 10);
  std::atomic<int> left{kChain};
  std::atomic<bool> failed{false};
  Completions all;
  auto last = all.callback(0);
  std::function<void(Result<void>)> next = [&](Result<void> r) {
    if (!r) failed = true;
    if (--left == 0) return last(ok());
    src->read_async(static_cast<uint64_t>(left) * buf.size(), buf, next);
  };
  src->read_async(0, buf, next);
  ASSERT_TRUE(all.wait());
  EXPECT_FALSE(failed);
}

TEST_F(NbdSourceTest, ReadPastTheEndFailsAtOnce) {
  serve("image");
  auto src = open();
  ASSERT_TRUE(src);
  std::vector<std::byte> buf(4096);
  auto r = src->read(kImageBytes - 100, buf);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EINVAL);
  EXPECT_NE(r.error().message.find(uri_), std::string::npos) << r.error().message;
  EXPECT_EQ(src->retries(), 0u);
  // Nothing retried in the background either: a good read still works.
  EXPECT_TRUE(src->read(0, buf));
}

TEST_F(NbdSourceTest, BlockStatusOnASparseFile) {
  serve("sparse");
  auto src = open();
  ASSERT_TRUE(src);
  // Walk the whole image and record, per MiB, whether it is data.
  std::vector<Extent> all;
  for (uint64_t at = 0; at < kSparseBytes;) {
    std::vector<Extent> out;
    auto r = src->block_status(at, kSparseBytes - at, out);
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_FALSE(out.empty());
    for (auto& e : out) {
      ASSERT_GT(e.length, 0u);
      at += e.length;
      all.push_back(e);
    }
    ASSERT_LE(at, kSparseBytes);
  }
  auto flags_at = [&](uint64_t offset) {
    uint64_t at = 0;
    for (auto& e : all) {
      if (offset < at + e.length) return e.flags;
      at += e.length;
    }
    return ~0u;
  };
  EXPECT_EQ(flags_at(0), kStateHole | kStateZero);
  EXPECT_EQ(flags_at((1u << 20) + 4096), 0u);
  EXPECT_EQ(flags_at(3u << 20), kStateHole | kStateZero);
  EXPECT_EQ(flags_at(5u << 20), 0u);
  EXPECT_EQ(flags_at(7u << 20), kStateHole | kStateZero);

  // Clipped to the range asked: half a MiB of hole, then half a MiB of data.
  std::vector<Extent> out;
  ASSERT_TRUE(src->block_status(512u << 10, 1u << 20, out));
  uint64_t sum = 0;
  for (auto& e : out) sum += e.length;
  EXPECT_LE(sum, 1u << 20);
  ASSERT_GE(out.size(), 1u);
  EXPECT_EQ(out[0].length, 512u << 10);
  EXPECT_EQ(out[0].flags, kStateHole | kStateZero);

  std::vector<Extent> past;
  EXPECT_FALSE(src->block_status(kSparseBytes, 1, past));
}

TEST_F(NbdSourceTest, BlockStatusWithoutBaseAllocationIsData) {
  // Without structured replies there are no meta contexts at all.
  server_.kill();
  std::vector<std::string> args = {"--no-sr", "file", *dir_ + "/sparse"};
  ASSERT_TRUE(server_.start(socket_, args));
  auto src = open();
  ASSERT_TRUE(src);
  std::vector<Extent> out;
  ASSERT_TRUE(src->block_status(0, kSparseBytes, out));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].length, kSparseBytes);
  EXPECT_EQ(out[0].flags, 0u);
  std::vector<std::byte> buf(4096);
  EXPECT_TRUE(src->read(1u << 20, buf));
}

TEST_F(NbdSourceTest, ServerErrorsAreRetried) {
  serve("image", {"--filter=error"}, {"error=EIO", "error-pread-rate=30%"});
  auto src = open();
  ASSERT_TRUE(src);
  Reads reads;
  start_reads(*src, reads, 200, 64 << 10, 11);
  check_reads(reads);
  EXPECT_GT(src->retries(), 0u);
}

TEST_F(NbdSourceTest, RequestTimeoutForcesReconnects) {
  // A server that answers reads only after 10 s: every read outlives request_timeout.
  // One thread (-t 1): nbdkit 1.32 with several threads can die of an assertion
  // (raw_send_socket: sock >= 0) when a client closes during the delay filter's sleep.
  serve("image", {"-t", "1", "--filter=delay"}, {"rdelay=10"});
  NbdSourceOptions o;
  o.request_timeout = 200ms;
  o.io_timeout = 15s;
  auto src = open(o);
  ASSERT_TRUE(src);
  Reads reads;
  start_reads(*src, reads, 16, 128 << 10, 13);
  ASSERT_TRUE(eventually([&] { return src->reconnects() >= 2; })) << src->reconnects();
  EXPECT_EQ(reads.done.done(), 0u);
  // A healthy server takes over on the same socket: the reads complete.
  serve("image");
  check_reads(reads);
  EXPECT_GE(src->retries(), 16u);
}

TEST_F(NbdSourceTest, ReadsInFlightSurviveAServerRestart) {
  serve("image", {"--filter=delay"}, {"rdelay=300ms"});
  NbdSourceOptions o;
  o.io_timeout = 15s;
  auto src = open(o);
  ASSERT_TRUE(src);
  Reads reads;
  start_reads(*src, reads, 32, 256 << 10, 17);
  std::this_thread::sleep_for(100ms);  // the reads are on the wire, waiting in the delay
  server_.kill();
  std::this_thread::sleep_for(1s);
  EXPECT_EQ(reads.done.done(), 0u);
  serve("image");
  check_reads(reads);
  EXPECT_GE(src->reconnects(), 1u);
  EXPECT_GE(src->retries(), 32u);
}

TEST_F(NbdSourceTest, ServerDownLongerThanIoTimeoutFailsWithEio) {
  serve("image");
  NbdSourceOptions o;
  o.io_timeout = 1s;
  o.request_timeout = 500ms;
  auto src = open(o);
  ASSERT_TRUE(src);
  std::vector<std::byte> buf(4096);
  ASSERT_TRUE(src->read(0, buf));
  server_.kill();
  auto start = Clock::now();
  auto r = src->read(8192, buf);
  auto elapsed = Clock::now() - start;
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EIO);
  EXPECT_NE(r.error().message.find(uri_), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("read at 8192"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("gave up after 1 s"), std::string::npos) << r.error().message;
  EXPECT_GE(elapsed, 1s);  // never before io_timeout
  EXPECT_LT(elapsed, 10s);
}

TEST_F(NbdSourceTest, ADifferentImageAfterReconnectIsPermanent) {
  serve("image");
  NbdSourceOptions o;
  o.io_timeout = 15s;
  auto src = open(o);
  ASSERT_TRUE(src);
  std::vector<std::byte> buf(4096);
  ASSERT_TRUE(src->read(0, buf));
  server_.kill();
  serve("other");
  auto start = Clock::now();
  auto r = src->read(0, buf);
  ASSERT_FALSE(r);
  EXPECT_LT(Clock::now() - start, 10s);  // not after io_timeout: at the reconnect
  EXPECT_EQ(r.error().code, ESTALE);
  EXPECT_NE(r.error().message.find("different image"), std::string::npos) << r.error().message;
  ASSERT_TRUE(src->fatal_error().has_value());
  // From now on every read fails at once.
  start = Clock::now();
  EXPECT_FALSE(src->read(4096, buf));
  EXPECT_LT(Clock::now() - start, 1s);
}

TEST_F(NbdSourceTest, CloseFailsPendingReadsWithEshutdown) {
  serve("image");
  NbdSourceOptions o;
  o.io_timeout = 15s;
  auto src = open(o);
  ASSERT_TRUE(src);
  server_.kill();
  Reads reads;
  start_reads(*src, reads, 8, 4096, 19);
  std::this_thread::sleep_for(100ms);
  src->close();
  ASSERT_TRUE(reads.done.wait(5s));
  for (size_t i = 0; i < 8; ++i) {
    ASSERT_FALSE(reads.done.result(i));
    EXPECT_EQ(reads.done.result(i).error().code, ESHUTDOWN);
  }
  std::vector<std::byte> buf(4096);
  auto r = src->read(0, buf);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ESHUTDOWN);
}

// open() waiting for a handshake that does not come returns at once on a stop request.
TEST_F(NbdSourceTest, StopRequestEndsAnOpenWaitingForAHandshake) {
  // A unix socket that accepts (the kernel's backlog) and never speaks.
  UniqueFd l(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(l.valid());
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_.c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(::bind(l.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(l.get(), 4), 0);
  std::thread stopper([] {
    std::this_thread::sleep_for(300ms);
    request_process_stop();
  });
  const auto start = Clock::now();
  auto r = NbdSource::open(uri_);
  const auto took = Clock::now() - start;
  stopper.join();
  reset_stop_for_testing();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EINTR) << r.error().message;
  EXPECT_LT(took, 2s);
}

TEST_F(NbdSourceTest, OpenFailsAtOnceWithoutAServer) {
  auto start = Clock::now();
  auto r = NbdSource::open(uri_);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENOENT);
  EXPECT_NE(r.error().message.find(uri_), std::string::npos) << r.error().message;
  EXPECT_LT(Clock::now() - start, 5s);

  NbdSourceOptions bad;
  bad.max_in_flight = 0;
  EXPECT_EQ(NbdSource::open(uri_, bad).error().code, EINVAL);
}

TEST_F(NbdSourceTest, MultiConnSpreadsReads) {
  serve("image", {"--filter=multi-conn"}, {"multi-conn-mode=unsafe"});
  NbdSourceOptions o;
  o.connections = 4;
  o.max_in_flight = 8;
  auto src = open(o);
  ASSERT_TRUE(src);
  ASSERT_TRUE(eventually([&] { return src->connections_ready() == 4; }))
      << src->connections_ready();
  Reads reads;
  start_reads(*src, reads, 200, 128 << 10, 23);
  check_reads(reads);
}

}  // namespace
}  // namespace imgstream::source
