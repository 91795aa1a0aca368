// In-process integration tests of nbd::Server: a FileDevice on a temporary file, served on
// a unix socket, driven by raw sockets (to break the protocol on purpose) and by libnbd.
// Nothing here asserts on time: every wait is bounded by a generous timeout, and a
// watchdog aborts a test that hangs.
#include "nbd/server.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <libnbd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <set>
#include <thread>

#include "base/log.h"
#include "device/file_device.h"
#include "device/forwarding_device.h"
#include "nbd/protocol.h"
#include "nbd/testing.h"

namespace imgstream::nbd {
namespace {

using testing::append;
using testing::Bytes;

constexpr uint64_t kImageBytes = 16 << 20;
constexpr auto kWait = std::chrono::seconds(60);
constexpr int kIoTimeoutSeconds = 60;
constexpr int kTestSecondsMax = 300;

// Aborts the process when a test runs for longer than it ever should (a hang is a bug,
// but it must fail the run, not stall it).
class Watchdog {
 public:
  explicit Watchdog(int seconds)
      : thread_([this, seconds] {
          std::unique_lock lock(mu_);
          if (!cv_.wait_for(lock, std::chrono::seconds(seconds), [&] { return done_; })) {
            std::fprintf(stderr, "watchdog: test still running after %d s: aborting\n", seconds);
            std::abort();
          }
        }) {}
  ~Watchdog() {
    {
      std::lock_guard lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

// Holds threads until opened; counts them.
class Gate {
 public:
  void pass() {
    std::unique_lock lock(mu_);
    ++waiting_;
    cv_.notify_all();
    cv_.wait_for(lock, kWait, [&] { return open_; });
  }
  bool wait_for_waiting(size_t n) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, kWait, [&] { return waiting_ >= n; });
  }
  size_t waiting() {
    std::lock_guard lock(mu_);
    return waiting_;
  }
  void open() {
    std::lock_guard lock(mu_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  size_t waiting_ = 0;
  bool open_ = false;
};

// Forwards to the FileDevice, with knobs: decline the nowait paths (so that requests take
// the thread pool), hold reads of one offset at a gate, fail reads of another with EIO.
class TestDevice final : public ForwardingDevice {
 public:
  explicit TestDevice(BlockDevice& inner) : ForwardingDevice(inner) {}

  std::atomic<bool> nowait{true};
  std::atomic<uint64_t> gated_offset{UINT64_MAX};
  std::atomic<uint64_t> failing_offset{UINT64_MAX};
  std::atomic<uint64_t> reads{0};
  Gate gate;

  Result<void> read(uint64_t offset, std::span<std::byte> buf) override {
    ++reads;
    if (offset == failing_offset) return Error{EIO, "injected"};
    if (offset == gated_offset) gate.pass();
    return inner_.read(offset, buf);
  }
  Result<void> read_nowait(uint64_t offset, std::span<std::byte> buf) override {
    if (!nowait || offset == gated_offset) return Error::would_block();
    ++reads;
    if (offset == failing_offset) return Error{EIO, "injected"};
    return inner_.read_nowait(offset, buf);
  }
  Result<void> write_nowait(uint64_t offset, std::span<const std::byte> d, Durability du) override {
    if (!nowait) return Error::would_block();
    return inner_.write_nowait(offset, d, du);
  }
};

// The image's initial contents: never a zero byte, different in every 4 KiB block.
std::byte pattern_byte(uint64_t i) {
  return std::byte(static_cast<uint8_t>((i * 131 + (i >> 12) * 7) % 255 + 1));
}
Bytes pattern(uint64_t offset, size_t length) {
  Bytes b(length);
  for (size_t i = 0; i < length; ++i) b[i] = pattern_byte(offset + i);
  return b;
}
Bytes filled(size_t length, uint8_t v) {
  return Bytes(length, std::byte{v});
}

// ---- A client on raw sockets ------------------------------------------------------------

struct RawReply {
  uint32_t magic = 0;
  uint32_t error = 0;  // simple replies
  uint16_t flags = 0;  // structured chunks
  uint16_t type = 0;
  uint64_t cookie = 0;
  Bytes data;  // the chunk's payload, or the read data after a simple reply
};

class RawClient {
 public:
  explicit RawClient(const Address& a) {
    auto fd = connect_to(a);
    EXPECT_TRUE(fd) << fd.error().message;
    if (!fd) return;
    fd_ = std::move(*fd);
    timeval tv{kIoTimeoutSeconds, 0};
    ::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd_.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }

  int fd() const { return fd_.get(); }
  void close() { fd_.reset(); }

  bool send(std::span<const std::byte> b) {
    for (size_t done = 0; done < b.size();) {
      ssize_t n = ::send(fd_.get(), b.data() + done, b.size() - done, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      done += static_cast<size_t>(n);
    }
    return true;
  }
  bool recv(std::span<std::byte> b) {
    for (size_t done = 0; done < b.size();) {
      ssize_t n = ::recv(fd_.get(), b.data() + done, b.size() - done, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      done += static_cast<size_t>(n);
    }
    return true;
  }
  std::optional<Bytes> recv_n(size_t n) {
    Bytes b(n);
    if (!recv(b)) return std::nullopt;
    return b;
  }

  // True when the server ended the connection (end of stream or reset; a timeout is not).
  // Drains whatever the server still sent.
  bool closed_by_server() {
    std::array<std::byte, 4096> buf;
    for (;;) {
      ssize_t n = ::recv(fd_.get(), buf.data(), buf.size(), 0);
      if (n > 0) continue;
      if (n == 0) return true;
      if (errno == EINTR) continue;
      return errno == ECONNRESET || errno == EPIPE;
    }
  }

  // The fixed newstyle handshake up to NBD_OPT_GO. The export's size and flags, or
  // nullopt when the server refused.
  struct Go {
    uint64_t size = 0;
    uint16_t flags = 0;
  };
  std::optional<Go> handshake(std::string_view name = "disk", bool structured = false,
                              bool meta = false) {
    auto greeting = recv_n(testing::kGreetingBytes);
    if (!greeting || get_u64(greeting->data()) != kNbdMagic) return std::nullopt;
    Bytes out = testing::client_flags();
    if (structured) append(out, testing::option(kOptStructuredReply));
    if (meta) {
      append(out, testing::option(kOptSetMetaContext,
                                  testing::meta_context_data(name, {kBaseAllocation})));
    }
    append(out, testing::option(kOptGo, testing::info_go_data(name)));
    if (!send(out)) return std::nullopt;
    Go go;
    for (;;) {
      auto h = recv_n(testing::kOptReplyHeaderBytes);
      if (!h || get_u64(h->data()) != kOptReplyMagic) return std::nullopt;
      const uint32_t opt = get_u32(&(*h)[8]), type = get_u32(&(*h)[12]);
      auto data = recv_n(get_u32(&(*h)[16]));
      if (!data) return std::nullopt;
      if (type & kRepErrBit) return std::nullopt;
      if (opt == kOptGo && type == kRepInfo && data->size() == 12 &&
          get_u16(data->data()) == kInfoExport) {
        go.size = get_u64(&(*data)[2]);
        go.flags = get_u16(&(*data)[10]);
      }
      if (opt == kOptGo && type == kRepAck) return go;
    }
  }

  bool request(uint16_t type, uint64_t cookie, uint64_t offset, uint32_t length, uint16_t flags = 0,
               std::span<const std::byte> payload = {}) {
    Bytes b(kRequestHeaderBytes);
    encode_request(Request{flags, type, cookie, offset, length},
                   std::span<std::byte, kRequestHeaderBytes>(b.data(), kRequestHeaderBytes));
    append(b, payload);
    return send(b);
  }

  // Reads one reply: a simple reply (followed by `read_bytes` of data when it reports
  // success and read_bytes > 0) or one structured chunk.
  std::optional<RawReply> reply(size_t read_bytes = 0) {
    auto m = recv_n(4);
    if (!m) return std::nullopt;
    RawReply r;
    r.magic = get_u32(m->data());
    if (r.magic == kSimpleReplyMagic) {
      auto rest = recv_n(12);
      if (!rest) return std::nullopt;
      r.error = get_u32(rest->data());
      r.cookie = get_u64(&(*rest)[4]);
      if (r.error == 0 && read_bytes > 0) {
        auto d = recv_n(read_bytes);
        if (!d) return std::nullopt;
        r.data = std::move(*d);
      }
      return r;
    }
    if (r.magic != kStructuredReplyMagic) return std::nullopt;
    auto rest = recv_n(16);
    if (!rest) return std::nullopt;
    r.flags = get_u16(rest->data());
    r.type = get_u16(&(*rest)[2]);
    r.cookie = get_u64(&(*rest)[4]);
    auto d = recv_n(get_u32(&(*rest)[12]));
    if (!d) return std::nullopt;
    r.data = std::move(*d);
    if (r.type == kChunkError && r.data.size() >= 4) r.error = get_u32(r.data.data());
    return r;
  }

 private:
  UniqueFd fd_;
};

// ---- libnbd -------------------------------------------------------------------------

class Nbd {
 public:
  Nbd() : h_(nbd_create()) {}
  ~Nbd() {
    if (h_) nbd_close(h_);
  }
  Nbd(const Nbd&) = delete;
  Nbd& operator=(const Nbd&) = delete;
  nbd_handle* get() const { return h_; }
  operator nbd_handle*() const { return h_; }  // NOLINT

 private:
  nbd_handle* h_;
};

struct NbdOptions {
  std::string name = "disk";
  bool structured = true;
  bool base_allocation = true;
};

// 0 when the call succeeded, otherwise the errno libnbd reports.
int nbd_errno(int rc) {
  return rc == -1 ? (nbd_get_errno() ? nbd_get_errno() : -1) : 0;
}

// Runs libnbd's state machine until `done` or the wait bound.
bool poll_until(nbd_handle* h, const std::function<bool()>& done) {
  const auto deadline = std::chrono::steady_clock::now() + kWait;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    if (nbd_poll(h, 100) == -1) return done();
  }
  return true;
}

struct ExtentList {
  std::vector<std::pair<uint32_t, uint32_t>> extents;  // (length, flags)
  std::string context;
};
int collect_extents(void* user, const char* context, uint64_t, uint32_t* entries, size_t n, int*) {
  auto* l = static_cast<ExtentList*>(user);
  l->context = context;
  for (size_t i = 0; i + 1 < n; i += 2) l->extents.emplace_back(entries[i], entries[i + 1]);
  return 0;
}

// ---- The fixture ----------------------------------------------------------------------

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_log_level_ = log_detail::g_level.load();
    set_log_level(LogLevel::Error);  // bad clients are expected here: keep the output quiet
    // NOLINTNEXTLINE(concurrency-mt-unsafe): imgstream never calls setenv (run_server.cc)
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/imgstream-server-test-XXXXXX";
    ASSERT_NE(::mkdtemp(templ.data()), nullptr);
    dir_ = templ;
    image_ = dir_ + "/disk.img";
    write_image();
    start();
  }

  void TearDown() override {
    stop();
    server_.reset();
    test_dev_.reset();
    dev_.reset();
    ::unlink(image_.c_str());
    ::rmdir(dir_.c_str());
    log_detail::g_level.store(saved_log_level_);
  }

  void write_image() {
    UniqueFd fd(::open(image_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    ASSERT_TRUE(fd.valid());
    const Bytes data = pattern(0, kImageBytes);
    ASSERT_EQ(::pwrite(fd.get(), data.data(), data.size(), 0), ssize_t(kImageBytes));
  }

  void start(unsigned worker_threads = 4, unsigned connections_max = kConnectionsMax,
             int handshake_seconds = kHandshakeSeconds) {
    auto dev = FileDevice::open(*Env::posix(), image_, Access::ReadWrite);
    ASSERT_TRUE(dev) << dev.error().message;
    dev_ = std::move(*dev);
    test_dev_ = std::make_unique<TestDevice>(*dev_);
    ServerOptions o;
    Address a;
    a.kind = Address::Kind::Unix;
    a.path = dir_ + "/nbd.sock";
    o.listen.push_back(a);
    o.exports.push_back(Export{"disk", "test image", test_dev_.get(), false});
    o.exports.push_back(Export{"ro", "", test_dev_.get(), true});
    o.worker_threads = worker_threads;
    o.connections_max = connections_max;
    o.handshake_seconds = handshake_seconds;
    auto s = Server::create(std::move(o));
    ASSERT_TRUE(s) << s.error().message;
    server_ = std::move(*s);
    address_ = server_->addresses().front();
    thread_ = std::thread([this] { run_result_ = server_->run(); });
  }

  void stop() {
    if (!thread_.joinable()) return;
    server_->request_stop();
    thread_.join();
    EXPECT_TRUE(run_result_) << run_result_.error().message;
  }

  void restart(unsigned worker_threads, unsigned connections_max, int handshake_seconds) {
    stop();
    server_.reset();
    test_dev_.reset();
    dev_.reset();
    start(worker_threads, connections_max, handshake_seconds);
  }

  std::unique_ptr<Nbd> connect_nbd(const NbdOptions& o = {}) {
    auto n = std::make_unique<Nbd>();
    EXPECT_NE(n->get(), nullptr);
    nbd_set_strict_mode(*n, 0);
    nbd_set_export_name(*n, o.name.c_str());
    nbd_set_request_structured_replies(*n, o.structured);
    if (o.base_allocation) nbd_add_meta_context(*n, LIBNBD_CONTEXT_BASE_ALLOCATION);
    EXPECT_NE(nbd_connect_unix(*n, address_.path.c_str()), -1) << nbd_get_error();
    return n;
  }

  std::unique_ptr<RawClient> connect_raw(std::string_view name = "disk", bool structured = false,
                                         bool meta = false) {
    auto c = std::make_unique<RawClient>(address_);
    auto go = c->handshake(name, structured, meta);
    EXPECT_TRUE(go.has_value());
    if (go) {
      EXPECT_EQ(go->size, kImageBytes);
    }
    return c;
  }

  // The image as the file system has it (through a descriptor of our own).
  Bytes file_bytes(uint64_t offset, size_t length) {
    UniqueFd fd(::open(image_.c_str(), O_RDONLY | O_CLOEXEC));
    Bytes b(length);
    EXPECT_EQ(::pread(fd.get(), b.data(), length, static_cast<off_t>(offset)), ssize_t(length));
    return b;
  }

  // The server still serves a new client correctly: reads what the file holds, writes
  // and reads back.
  void expect_serves() {
    auto n = connect_nbd();
    Bytes got(64 * 1024);
    const uint64_t at = 5 << 20;
    ASSERT_EQ(nbd_pread(*n, got.data(), got.size(), at, 0), 0) << nbd_get_error();
    EXPECT_EQ(got, file_bytes(at, got.size()));
    const Bytes w = filled(8192, 0x5a);
    const uint64_t scratch = kImageBytes - 8192;
    ASSERT_EQ(nbd_pwrite(*n, w.data(), w.size(), scratch, 0), 0) << nbd_get_error();
    Bytes back(w.size());
    ASSERT_EQ(nbd_pread(*n, back.data(), back.size(), scratch, 0), 0);
    EXPECT_EQ(back, w);
    EXPECT_EQ(nbd_shutdown(*n, 0), 0);
  }

  Watchdog watchdog_{kTestSecondsMax};
  std::string dir_, image_;
  std::unique_ptr<FileDevice> dev_;
  std::unique_ptr<TestDevice> test_dev_;
  std::unique_ptr<Server> server_;
  Address address_;
  std::thread thread_;
  Result<void> run_result_;
  int saved_log_level_ = 0;
};

// The same tests with the device's fast paths on (requests answered inline on the
// connection's event loop) and off (every request goes through the thread pool).
class ServerPaths : public ServerTest, public ::testing::WithParamInterface<bool> {
 protected:
  void SetUp() override {
    ServerTest::SetUp();
    if (test_dev_) test_dev_->nowait = GetParam();
  }
};
INSTANTIATE_TEST_SUITE_P(Inline, ServerPaths, ::testing::Values(true));
INSTANTIATE_TEST_SUITE_P(Pool, ServerPaths, ::testing::Values(false));

// ---- Plain service ------------------------------------------------------------------

TEST_P(ServerPaths, ReadsAndWritesWithLibnbd) {
  auto n = connect_nbd();
  EXPECT_EQ(nbd_get_size(*n), int64_t(kImageBytes));
  EXPECT_EQ(nbd_is_read_only(*n), 0);
  EXPECT_EQ(nbd_can_multi_conn(*n), 1);
  EXPECT_EQ(nbd_can_fua(*n), 1);
  EXPECT_EQ(nbd_can_df(*n), 1);
  EXPECT_EQ(nbd_get_structured_replies_negotiated(*n), 1);
  Bytes got(1 << 20);
  ASSERT_EQ(nbd_pread(*n, got.data(), got.size(), 3 << 20, 0), 0) << nbd_get_error();
  EXPECT_EQ(got, pattern(3 << 20, got.size()));
  const Bytes w = filled(12345, 0xa5);
  ASSERT_EQ(nbd_pwrite(*n, w.data(), w.size(), 777, 0), 0);
  Bytes back(w.size());
  ASSERT_EQ(nbd_pread(*n, back.data(), back.size(), 777, 0), 0);
  EXPECT_EQ(back, w);
  EXPECT_EQ(file_bytes(777, w.size()), w);
  // A read larger than a batch of replies.
  Bytes big(8 << 20);
  ASSERT_EQ(nbd_pread(*n, big.data(), big.size(), 4 << 20, 0), 0);
  EXPECT_EQ(big, file_bytes(4 << 20, big.size()));
}

TEST_P(ServerPaths, LargeWritesTakeTheirOwnBuffer) {
  auto n = connect_nbd();
  // Larger than the receive buffer (kInlinePayloadMax), at the protocol's maximum.
  for (size_t len : {size_t{kInlinePayloadMax} + 1, size_t{4} << 20, size_t{12} << 20}) {
    Bytes w(len);
    for (size_t i = 0; i < len; ++i) w[i] = std::byte(static_cast<uint8_t>(i * 7 + len));
    ASSERT_EQ(nbd_pwrite(*n, w.data(), w.size(), 1 << 20, LIBNBD_CMD_FLAG_FUA), 0)
        << nbd_get_error();
    EXPECT_EQ(file_bytes(1 << 20, len), w);
  }
  Bytes got(4096);
  ASSERT_EQ(nbd_pread(*n, got.data(), got.size(), 0, 0), 0);  // still in step
  EXPECT_EQ(got, pattern(0, got.size()));
}

// ---- Requests the server must refuse ----------------------------------------------------

TEST_P(ServerPaths, ReadsPastTheEndAreEinval) {
  for (bool structured : {false, true}) {
    auto n = connect_nbd({.structured = structured});
    Bytes buf(1024);
    EXPECT_EQ(nbd_errno(nbd_pread(*n, buf.data(), 1024, kImageBytes - 512, 0)), EINVAL);
    EXPECT_EQ(nbd_errno(nbd_pread(*n, buf.data(), 1, kImageBytes, 0)), EINVAL);
    EXPECT_EQ(nbd_errno(nbd_pread(*n, buf.data(), 512, (1ULL << 63) - 1, 0)), EINVAL);
    EXPECT_EQ(nbd_errno(nbd_cache(*n, 1024, kImageBytes - 512, 0)), EINVAL);
    EXPECT_EQ(nbd_errno(nbd_trim(*n, 1024, kImageBytes - 512, 0)), EINVAL);
    ASSERT_EQ(nbd_pread(*n, buf.data(), 512, kImageBytes - 512, 0), 0);
    EXPECT_EQ(Bytes(buf.begin(), buf.begin() + 512), pattern(kImageBytes - 512, 512));
  }
}

TEST_P(ServerPaths, WritesPastTheEndAreEnospc) {
  auto n = connect_nbd();
  const Bytes w = filled(1024, 0xee);
  EXPECT_EQ(nbd_errno(nbd_pwrite(*n, w.data(), w.size(), kImageBytes - 512, 0)), ENOSPC);
  EXPECT_EQ(nbd_errno(nbd_pwrite(*n, w.data(), w.size(), kImageBytes, LIBNBD_CMD_FLAG_FUA)),
            ENOSPC);
  EXPECT_EQ(nbd_errno(nbd_zero(*n, 1024, kImageBytes - 512, 0)), ENOSPC);
  EXPECT_EQ(file_bytes(kImageBytes - 512, 512), pattern(kImageBytes - 512, 512));
  struct stat st {};
  ASSERT_EQ(::stat(image_.c_str(), &st), 0);
  EXPECT_EQ(uint64_t(st.st_size), kImageBytes);
}

TEST_P(ServerPaths, UnknownCommandsAndFlagsAreEinval) {
  auto c = connect_raw();
  ASSERT_TRUE(c->request(9, 1, 0, 512));
  ASSERT_TRUE(c->request(0xffff, 2, 0, 0));
  ASSERT_TRUE(c->request(kCmdRead, 3, 0, 512, 1 << 9));      // unknown flag
  ASSERT_TRUE(c->request(kCmdRead, 4, 0, 512, kCmdFlagDf));  // DF needs structured replies
  ASSERT_TRUE(c->request(kCmdRead, 5, 0, 0));                // empty
  ASSERT_TRUE(c->request(kCmdFlush, 6, 0, 512));             // flush takes no range
  ASSERT_TRUE(c->request(kCmdBlockStatus, 7, 0, 512));       // no context selected
  for (uint64_t cookie = 1; cookie <= 7; ++cookie) {
    auto r = c->reply();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->magic, kSimpleReplyMagic);
    EXPECT_EQ(r->cookie, cookie);
    EXPECT_EQ(r->error, kEInval) << "cookie " << cookie;
  }
  // Still in step.
  ASSERT_TRUE(c->request(kCmdRead, 8, 4096, 4096));
  auto r = c->reply(4096);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->error, 0u);
  EXPECT_EQ(r->cookie, 8u);
  EXPECT_EQ(r->data, pattern(4096, 4096));
}

TEST_P(ServerPaths, BadRequestMagicClosesTheConnection) {
  auto c = connect_raw();
  // A good read and a bad header in one send: the read is answered, then the close.
  Bytes b(kRequestHeaderBytes);
  encode_request(Request{0, kCmdRead, 1, 0, 4096},
                 std::span<std::byte, kRequestHeaderBytes>(b.data(), kRequestHeaderBytes));
  Bytes bad = b;
  put_u32(bad.data(), 0xdeadbeef);
  append(b, bad);
  append(b, b);  // more requests after the bad one: never answered
  ASSERT_TRUE(c->send(b));
  auto r = c->reply(4096);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->cookie, 1u);
  EXPECT_EQ(r->data, pattern(0, 4096));
  EXPECT_TRUE(c->closed_by_server());
  expect_serves();
}

TEST_P(ServerPaths, OversizedReadsAreEinvalAndTheConnectionGoesOn) {
  auto n = connect_nbd();
  Bytes buf((32 << 20) + 4096);
  EXPECT_EQ(nbd_errno(nbd_pread(*n, buf.data(), buf.size(), 0, 0)), EINVAL);
  ASSERT_EQ(nbd_pread(*n, buf.data(), 4096, 8192, 0), 0);
  EXPECT_EQ(Bytes(buf.begin(), buf.begin() + 4096), pattern(8192, 4096));

  // Lengths libnbd will not send, with both kinds of reply.
  for (bool structured : {false, true}) {
    auto c = connect_raw("disk", structured);
    ASSERT_TRUE(c->request(kCmdRead, 1, 0, 0xffffffff));
    ASSERT_TRUE(c->request(kCmdRead, 2, 0, kPayloadMax + 1));
    ASSERT_TRUE(c->request(kCmdRead, 3, 0, 4096));
    // Replies may come in any order.
    std::set<uint64_t> seen;
    for (int i = 0; i < 3; ++i) {
      auto r = c->reply(4096);
      ASSERT_TRUE(r.has_value());
      EXPECT_TRUE(seen.insert(r->cookie).second);
      EXPECT_EQ(r->magic, structured ? kStructuredReplyMagic : kSimpleReplyMagic);
      if (r->cookie == 3) {
        EXPECT_EQ(r->error, 0u);
        ASSERT_GE(r->data.size(), 4096u);
        EXPECT_EQ(Bytes(r->data.end() - 4096, r->data.end()), pattern(0, 4096));
      } else {
        EXPECT_EQ(r->error, kEInval);
      }
    }
    EXPECT_EQ(seen, (std::set<uint64_t>{1, 2, 3}));
  }
}

TEST_P(ServerPaths, OversizedWritesAreEinvalAndStayInStep) {
  auto n = connect_nbd();
  const Bytes w = filled((32 << 20) + 4096, 0x11);
  EXPECT_EQ(nbd_errno(nbd_pwrite(*n, w.data(), w.size(), 0, 0)), EINVAL);
  Bytes buf(4096);
  ASSERT_EQ(nbd_pread(*n, buf.data(), buf.size(), 0, 0), 0);
  EXPECT_EQ(buf, pattern(0, 4096));

  // By hand: the payload follows the header and must be skipped, whatever its size.
  auto c = connect_raw();
  for (uint32_t len : {uint32_t{kPayloadMax} + 1, uint32_t{40} << 20}) {
    ASSERT_TRUE(c->request(kCmdWrite, len, 0, len, 0, filled(len, 0x22)));
    ASSERT_TRUE(c->request(kCmdRead, 1, 0, 4096));
    auto r = c->reply();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->cookie, len);
    EXPECT_EQ(r->error, kEInval);
    r = c->reply(4096);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->cookie, 1u);
    EXPECT_EQ(r->data, pattern(0, 4096));
  }
  EXPECT_EQ(file_bytes(0, 1 << 20), pattern(0, 1 << 20));
}

TEST_P(ServerPaths, ReadOnlyExportRefusesWritesWithEperm) {
  auto n = connect_nbd({.name = "ro"});
  EXPECT_EQ(nbd_is_read_only(*n), 1);
  EXPECT_EQ(nbd_can_trim(*n), 0);
  const Bytes w = filled(4096, 0x77);
  EXPECT_EQ(nbd_errno(nbd_pwrite(*n, w.data(), w.size(), 0, 0)), EPERM);
  const Bytes big = filled(4 << 20, 0x78);  // the large-write path
  EXPECT_EQ(nbd_errno(nbd_pwrite(*n, big.data(), big.size(), 0, 0)), EPERM);
  EXPECT_EQ(nbd_errno(nbd_trim(*n, 4096, 0, 0)), EPERM);
  EXPECT_EQ(nbd_errno(nbd_zero(*n, 4096, 0, 0)), EPERM);
  EXPECT_EQ(nbd_flush(*n, 0), 0);
  EXPECT_EQ(nbd_cache(*n, 4096, 0, 0), 0);
  Bytes got(4096);
  ASSERT_EQ(nbd_pread(*n, got.data(), got.size(), 0, 0), 0);
  EXPECT_EQ(got, pattern(0, 4096));
  EXPECT_EQ(file_bytes(0, 4 << 20), pattern(0, 4 << 20));
}

// ---- Clients that misbehave --------------------------------------------------------------

TEST_F(ServerTest, GarbageAndEarlyCloseDuringTheHandshake) {
  const Bytes good = [] {
    Bytes b = testing::client_flags();
    append(b, testing::option(kOptStructuredReply));
    append(b, testing::option(kOptGo, testing::info_go_data("disk")));
    return b;
  }();
  // Cut the handshake after every byte of the client's part.
  for (size_t cut = 0; cut < good.size(); ++cut) {
    RawClient c(address_);
    ASSERT_TRUE(c.recv_n(testing::kGreetingBytes).has_value());
    ASSERT_TRUE(c.send(std::span(good).first(cut)));
    ::shutdown(c.fd(), SHUT_WR);
    EXPECT_TRUE(c.closed_by_server()) << "cut at " << cut;
  }
  // Close before reading anything; garbage instead of flags; garbage options.
  { RawClient c(address_); }
  {
    RawClient c(address_);
    Bytes junk(4096);
    for (size_t i = 0; i < junk.size(); ++i) junk[i] = std::byte(static_cast<uint8_t>(i * 37 + 11));
    ASSERT_TRUE(c.send(junk));
    EXPECT_TRUE(c.closed_by_server());
  }
  {
    RawClient c(address_);
    Bytes b = testing::client_flags();
    append(b, filled(64, 0xff));
    ASSERT_TRUE(c.send(b));
    EXPECT_TRUE(c.closed_by_server());
  }
  {
    RawClient c(address_);  // an option that announces more data than the server takes
    Bytes b = testing::client_flags();
    testing::append_u64(b, kIHaveOpt);
    testing::append_u32(b, kOptGo);
    testing::append_u32(b, 0xffffffff);
    ASSERT_TRUE(c.send(b));
    EXPECT_TRUE(c.closed_by_server());
  }
  expect_serves();
}

TEST_F(ServerTest, AbortEndsTheHandshakeCleanly) {
  RawClient c(address_);
  ASSERT_TRUE(c.recv_n(testing::kGreetingBytes).has_value());
  Bytes b = testing::client_flags();
  append(b, testing::option(kOptAbort));
  ASSERT_TRUE(c.send(b));
  auto h = c.recv_n(testing::kOptReplyHeaderBytes);
  ASSERT_TRUE(h.has_value());
  EXPECT_EQ(get_u32(&(*h)[8]), kOptAbort);
  EXPECT_EQ(get_u32(&(*h)[12]), kRepAck);
  EXPECT_TRUE(c.closed_by_server());
}

int count_export(void* user, const char* name, const char*) {
  static_cast<std::vector<std::string>*>(user)->push_back(name);
  return 0;
}

TEST_F(ServerTest, LibnbdListsExportsAndAborts) {
  Nbd n;
  ASSERT_EQ(nbd_set_opt_mode(n, true), 0);
  ASSERT_EQ(nbd_connect_unix(n, address_.path.c_str()), 0) << nbd_get_error();
  std::vector<std::string> names;
  ASSERT_NE(nbd_opt_list(n, {count_export, &names, nullptr}), -1) << nbd_get_error();
  EXPECT_EQ(names, (std::vector<std::string>{"disk", "ro"}));
  ASSERT_EQ(nbd_set_export_name(n, "ro"), 0);
  ASSERT_EQ(nbd_opt_info(n), 0) << nbd_get_error();
  EXPECT_EQ(nbd_get_size(n), int64_t(kImageBytes));
  EXPECT_EQ(nbd_is_read_only(n), 1);
  ASSERT_EQ(nbd_set_export_name(n, "nope"), 0);
  EXPECT_EQ(nbd_opt_go(n), -1);  // unknown: the handshake goes on
  ASSERT_EQ(nbd_set_export_name(n, "disk"), 0);
  ASSERT_EQ(nbd_opt_go(n), 0) << nbd_get_error();
  EXPECT_EQ(nbd_is_read_only(n), 0);
  Nbd m;
  ASSERT_EQ(nbd_set_opt_mode(m, true), 0);
  ASSERT_EQ(nbd_connect_unix(m, address_.path.c_str()), 0) << nbd_get_error();
  EXPECT_EQ(nbd_opt_abort(m), 0) << nbd_get_error();
  expect_serves();
}

TEST_P(ServerPaths, DisconnectInTheMiddleOfAWritePayload) {
  for (uint32_t len : {uint32_t{64} << 10, uint32_t{1} << 20, uint32_t{8} << 20}) {
    auto c = connect_raw();
    const Bytes payload = filled(len, 0x33);
    ASSERT_TRUE(c->request(kCmdWrite, 1, 0, len, 0, std::span(payload).first(len / 2)));
    c->close();
    expect_serves();
  }
  EXPECT_EQ(file_bytes(0, 8 << 20), pattern(0, 8 << 20));
}

TEST_P(ServerPaths, ClientThatNeverReadsItsRepliesThenCloses) {
  auto c = connect_raw();
  // Send reads until neither socket buffer nor the server takes more.
  size_t sent = 0;
  Bytes req(kRequestHeaderBytes);
  constexpr size_t kPerSend = 1024;
  Bytes many(kPerSend * kRequestHeaderBytes);
  for (; sent < 200000; sent += kPerSend) {
    for (size_t i = 0; i < kPerSend; ++i) {
      const uint64_t k = sent + i;
      encode_request(Request{0, kCmdRead, k, (k % 64) * 4096, 256 * 1024},
                     std::span<std::byte, kRequestHeaderBytes>(
                         many.data() + i * kRequestHeaderBytes, kRequestHeaderBytes));
    }
    ssize_t n = ::send(c->fd(), many.data(), many.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == EAGAIN) break;
    ASSERT_GT(n, 0);
    if (size_t(n) < many.size()) break;
  }
  EXPECT_GT(sent, 100u);
  c->close();
  expect_serves();
  // And a client that writes without reading.
  c = connect_raw();
  const Bytes w = filled(64 * 1024, 0x44);
  size_t writes = 0;
  for (; writes < 1000; ++writes) {
    Bytes b(kRequestHeaderBytes);
    encode_request(Request{0, kCmdWrite, writes, (writes % 32) * w.size(), uint32_t(w.size())},
                   std::span<std::byte, kRequestHeaderBytes>(b.data(), kRequestHeaderBytes));
    append(b, w);
    ssize_t n = ::send(c->fd(), b.data(), b.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == EAGAIN) break;
    ASSERT_GT(n, 0);
    if (size_t(n) < b.size()) break;  // cut in the middle of a request
  }
  c->close();
  expect_serves();
}

// Clients that send large reads and never read a reply (a 4 KiB receive buffer) must not
// hold up anyone else: their replies wait on their own connections, not on the shared
// workers (issue 12, point 17). Each stalled connection also stops being read once it has
// kConnectionBytesMax of replies owed, so the server executes only so many of its reads.
TEST_F(ServerTest, ClientsThatDoNotReadTheirRepliesHoldUpNobody) {
  restart(4, kConnectionsMax, kHandshakeSeconds);  // fewer workers than stalled requests
  constexpr uint32_t kLen = 8 << 20;                // above the batch: the pool path
  constexpr int kStalled = 3, kRequests = 64;
  std::vector<std::unique_ptr<RawClient>> stalled;
  for (int i = 0; i < kStalled; ++i) {
    auto c = std::make_unique<RawClient>(address_);
    int small = 4096;
    ::setsockopt(c->fd(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    ASSERT_TRUE(c->handshake().has_value());
    for (int k = 0; k < kRequests; ++k) ASSERT_TRUE(c->request(kCmdRead, k, 0, kLen));
    stalled.push_back(std::move(c));
  }
  // Let the server take what it will of those requests.
  for (int i = 0; i < 100 && test_dev_->reads < uint64_t(kStalled) * 4; ++i) ::usleep(20'000);
  ::usleep(300'000);
  // Another client: flush (always the pool), reads and writes, all answered while the
  // stalled clients stay.
  std::atomic<bool> done{false};
  std::thread other([&] {
    auto n = connect_nbd();
    EXPECT_EQ(nbd_flush(*n, 0), 0) << nbd_get_error();
    Bytes got(4096);
    EXPECT_EQ(nbd_pread(*n, got.data(), got.size(), 4096, 0), 0) << nbd_get_error();
    EXPECT_EQ(got, pattern(4096, 4096));
    EXPECT_EQ(nbd_flush(*n, 0), 0) << nbd_get_error();
    nbd_shutdown(*n, 0);
    done = true;
  });
  for (int i = 0; i < 1000 && !done; ++i) ::usleep(10'000);  // 10 s: it takes milliseconds
  EXPECT_TRUE(done) << "a client was held up by clients that do not read their replies";
  if (!done) {
    for (auto& c : stalled) c->close();  // let it finish, so that the thread can be joined
  }
  other.join();
  // Bounded work per stalled connection: what kConnectionBytesMax allows (plus the one
  // that crossed it, and one 8 MiB reply in the socket buffers), not all 64 requests.
  const uint64_t per_conn_max = kConnectionBytesMax / kLen + 2;
  EXPECT_LE(test_dev_->reads.load(), uint64_t(kStalled) * per_conn_max + 4);
  for (auto& c : stalled) c->close();
  expect_serves();
}

// Replies from the pool and inline replies, to a reader slower than the server: each
// reply stays whole on the wire (a reply half sent is finished before any other bytes),
// whichever path each request took. The device's fast path is switched on and off while
// the requests run, so that both paths interleave at random.
TEST_F(ServerTest, RepliesStayWholeWhenPoolAndInlineRepliesInterleave) {
  RawClient c(address_);
  int small = 16 * 1024;
  ::setsockopt(c.fd(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  ASSERT_TRUE(c.handshake().has_value());
  std::atomic<bool> done{false};
  std::thread toggler([&] {
    for (unsigned i = 0; !done; ++i) {
      test_dev_->nowait = (i % 3) != 0;
      ::usleep(300);
    }
    test_dev_->nowait = true;
  });
  constexpr uint32_t kLen = 256 * 1024;
  constexpr int kRequests = 400, kDepth = 32;
  int sent = 0, got = 0;
  bool ok = true;
  while (got < kRequests && ok) {
    while (sent < kRequests && sent - got < kDepth) {
      const uint64_t off = (uint64_t(sent) * kLen) % (kImageBytes - kLen);
      ok = c.request(kCmdRead, sent, off, kLen);
      ++sent;
    }
    auto r = c.reply(kLen);
    ok = ok && r.has_value() && r->magic == kSimpleReplyMagic && r->error == 0 &&
         r->cookie < uint64_t(sent);
    if (!ok) break;
    const uint64_t off = (r->cookie * kLen) % (kImageBytes - kLen);
    ok = r->data == pattern(off, kLen);
    ++got;
    if (got % 16 == 0) ::usleep(1000);  // a slow reader: the socket fills
  }
  done = true;
  toggler.join();
  EXPECT_TRUE(ok) << "reply " << got << " of " << kRequests << " was not whole";
  EXPECT_EQ(got, kRequests);
}

// The handshake as a whole has a deadline: a client that sends a byte now and then is
// cut off when it passes, not kept for as long as it keeps trickling (point 20).
TEST_F(ServerTest, TheWholeHandshakeHasADeadline) {
  restart(4, kConnectionsMax, 1);
  RawClient c(address_);
  ASSERT_TRUE(c.recv_n(testing::kGreetingBytes).has_value());
  const Bytes flags = testing::client_flags();
  Bytes opt = testing::option(kOptGo, testing::info_go_data("disk"));
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(c.send(flags));
  bool cut = false;
  for (size_t i = 0; i < opt.size() && !cut; ++i) {
    if (!c.send(std::span(opt).subspan(i, 1))) cut = true;
    ::usleep(200'000);
    if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(5)) break;
  }
  EXPECT_TRUE(c.closed_by_server());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(6));
  expect_serves();
}

// A full server says so in the handshake, rather than closing the socket in silence
// (point 20); once a client leaves, the next one is served.
TEST_F(ServerTest, AFullServerRefusesWithAMessage) {
  restart(4, 2, kHandshakeSeconds);
  auto a = connect_nbd();
  auto b = connect_nbd();
  // A raw client sees the policy error and the reason.
  RawClient c(address_);
  ASSERT_TRUE(c.recv_n(testing::kGreetingBytes).has_value());
  Bytes out = testing::client_flags();
  append(out, testing::option(kOptGo, testing::info_go_data("disk")));
  ASSERT_TRUE(c.send(out));
  auto h = c.recv_n(testing::kOptReplyHeaderBytes);
  ASSERT_TRUE(h.has_value());
  EXPECT_EQ(get_u32(&(*h)[12]), uint32_t{kRepErrPolicy});
  auto msg = c.recv_n(get_u32(&(*h)[16]));
  ASSERT_TRUE(msg.has_value());
  const std::string why(reinterpret_cast<const char*>(msg->data()), msg->size());
  EXPECT_NE(why.find("server full"), std::string::npos) << why;
  // libnbd reports it as a refusal, not as a broken connection.
  {
    Nbd n;
    EXPECT_EQ(nbd_connect_unix(n, address_.path.c_str()), -1);
    EXPECT_NE(std::string(nbd_get_error()).find("policy"), std::string::npos) << nbd_get_error();
  }
  nbd_shutdown(*a, 0);
  a.reset();
  bool served = false;
  for (int i = 0; i < 50 && !served; ++i) {  // the server reaps a finished client within 1 s
    Nbd n;
    nbd_set_export_name(n, "disk");
    served = nbd_connect_unix(n, address_.path.c_str()) == 0;
    if (!served) ::usleep(100'000);
  }
  EXPECT_TRUE(served);
  nbd_shutdown(*b, 0);
}

TEST_P(ServerPaths, DisconnectRequestEndsTheConnectionAfterEarlierRequests) {
  auto c = connect_raw();
  Bytes b(2 * kRequestHeaderBytes);
  encode_request(Request{0, kCmdRead, 1, 0, 4096},
                 std::span<std::byte, kRequestHeaderBytes>(b.data(), kRequestHeaderBytes));
  encode_request(Request{0, kCmdDisc, 2, 0, 0},
                 std::span<std::byte, kRequestHeaderBytes>(b.data() + kRequestHeaderBytes,
                                                           kRequestHeaderBytes));
  ASSERT_TRUE(c->send(b));
  auto r = c->reply(4096);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->cookie, 1u);
  EXPECT_EQ(r->data, pattern(0, 4096));
  EXPECT_TRUE(c->closed_by_server());
}

// ---- Replies ------------------------------------------------------------------------

TEST_P(ServerPaths, SimpleReplies) {
  test_dev_->failing_offset = 8192;
  auto c = connect_raw("disk", false);
  ASSERT_TRUE(c->request(kCmdRead, 1, 4096, 4096));
  auto r = c->reply(4096);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->magic, kSimpleReplyMagic);
  EXPECT_EQ(r->error, 0u);
  EXPECT_EQ(r->data, pattern(4096, 4096));
  ASSERT_TRUE(c->request(kCmdRead, 2, 8192, 4096));  // the device fails: EIO
  r = c->reply(4096);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->magic, kSimpleReplyMagic);
  EXPECT_EQ(r->cookie, 2u);
  EXPECT_EQ(r->error, kEIo);
  ASSERT_TRUE(c->request(kCmdWrite, 3, 0, 512, 0, filled(512, 1)));
  r = c->reply();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->magic, kSimpleReplyMagic);
  EXPECT_EQ(r->error, 0u);
  EXPECT_EQ(r->cookie, 3u);
}

TEST_P(ServerPaths, StructuredReplies) {
  test_dev_->failing_offset = 8192;
  auto c = connect_raw("disk", true);
  ASSERT_TRUE(c->request(kCmdRead, 1, 4096, 4096, kCmdFlagDf));
  auto r = c->reply();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->magic, kStructuredReplyMagic);
  EXPECT_EQ(r->flags, kReplyFlagDone);
  EXPECT_EQ(r->type, kChunkOffsetData);
  EXPECT_EQ(r->cookie, 1u);
  ASSERT_EQ(r->data.size(), 8u + 4096);
  EXPECT_EQ(get_u64(r->data.data()), 4096u);
  EXPECT_EQ(Bytes(r->data.begin() + 8, r->data.end()), pattern(4096, 4096));
  struct Case {
    uint64_t cookie, offset;
    uint32_t want;
  };
  for (const Case& k : {Case{2, 8192, kEIo}, Case{3, kImageBytes, kEInval}}) {
    const uint64_t cookie = k.cookie;
    const uint32_t want = k.want;
    ASSERT_TRUE(c->request(kCmdRead, cookie, k.offset, 4096));
    r = c->reply();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->magic, kStructuredReplyMagic);
    EXPECT_EQ(r->flags, kReplyFlagDone);
    EXPECT_EQ(r->type, kChunkError);
    EXPECT_EQ(r->cookie, uint64_t(cookie));
    ASSERT_EQ(r->data.size(), 6u);
    EXPECT_EQ(get_u32(r->data.data()), want);
    EXPECT_EQ(get_u16(&r->data[4]), 0u);
  }
  // Replies without data may stay simple.
  ASSERT_TRUE(c->request(kCmdWrite, 4, 0, 512, 0, filled(512, 1)));
  r = c->reply();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->magic, kSimpleReplyMagic);
  EXPECT_EQ(r->error, 0u);
  // Block status without a selected context is refused with an error chunk.
  ASSERT_TRUE(c->request(kCmdBlockStatus, 5, 0, 4096));
  r = c->reply();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->type, kChunkError);
  EXPECT_EQ(r->error, kEInval);
}

TEST_P(ServerPaths, LibnbdReadsWithAndWithoutStructuredReplies) {
  for (bool structured : {false, true}) {
    auto n = connect_nbd({.structured = structured, .base_allocation = false});
    EXPECT_EQ(nbd_get_structured_replies_negotiated(*n), structured ? 1 : 0);
    Bytes got(256 * 1024);
    ASSERT_EQ(nbd_pread(*n, got.data(), got.size(), 12345, 0), 0) << nbd_get_error();
    EXPECT_EQ(got, pattern(12345, got.size()));
  }
}

// ---- Concurrency --------------------------------------------------------------------

int record_completion(void* user, int* error) {
  auto* v = static_cast<std::vector<std::pair<int, int>>*>(user);
  v->emplace_back(static_cast<int>(v->size()), *error);
  return 1;
}

TEST_P(ServerPaths, ManyRequestsInFlight) {
  auto n = connect_nbd();
  constexpr size_t kWrites = 64, kReads = 192, kBytes = 64 * 1024;
  const uint64_t write_base = 8 << 20;
  static_assert(kReads == 3 * kWrites);
  std::vector<Bytes> wbufs(kWrites), rbufs(kReads, Bytes(kBytes));
  std::vector<int64_t> cookies;
  for (size_t i = 0; i < kWrites + kReads; ++i) {
    int64_t cookie;
    if (i % 4 == 0) {
      const size_t w = i / 4;
      wbufs[w] = filled(kBytes, static_cast<uint8_t>(w + 1));
      cookie = nbd_aio_pwrite(*n, wbufs[w].data(), kBytes, write_base + w * kBytes,
                              NBD_NULL_COMPLETION, w % 2 ? LIBNBD_CMD_FLAG_FUA : 0);
    } else {
      const size_t r = i - i / 4 - 1;
      cookie = nbd_aio_pread(*n, rbufs[r].data(), kBytes, r * kBytes / 2, NBD_NULL_COMPLETION, 0);
    }
    ASSERT_GT(cookie, 0) << nbd_get_error();
    cookies.push_back(cookie);
  }
  ASSERT_TRUE(poll_until(*n, [&] { return nbd_aio_in_flight(*n) == 0; }));
  for (int64_t cookie : cookies) EXPECT_EQ(nbd_aio_command_completed(*n, cookie), 1);
  for (size_t r = 0; r < rbufs.size(); ++r) EXPECT_EQ(rbufs[r], pattern(r * kBytes / 2, kBytes));
  for (size_t w = 0; w < wbufs.size(); ++w) {
    EXPECT_EQ(file_bytes(write_base + w * kBytes, kBytes), wbufs[w]) << w;
  }
}

TEST_P(ServerPaths, RepliesMayOvertakeEachOther) {
  test_dev_->gated_offset = 0;
  auto n = connect_nbd();
  std::vector<std::pair<int, int>> order;  // (completion index, error)
  Bytes a(4096), b(4096);
  int64_t ca = nbd_aio_pread(*n, a.data(), a.size(), 0, {record_completion, &order, nullptr}, 0);
  ASSERT_GT(ca, 0);
  ASSERT_TRUE(poll_until(*n, [&] { return test_dev_->gate.waiting() >= 1; }));
  std::vector<std::pair<int, int>> order_b;
  int64_t cb =
      nbd_aio_pread(*n, b.data(), b.size(), 8192, {record_completion, &order_b, nullptr}, 0);
  ASSERT_GT(cb, 0);
  ASSERT_TRUE(poll_until(*n, [&] { return !order_b.empty(); }));
  EXPECT_TRUE(order.empty());  // A is still held at the gate: B overtook it
  test_dev_->gate.open();
  ASSERT_TRUE(poll_until(*n, [&] { return !order.empty(); }));
  EXPECT_EQ(order[0].second, 0);
  EXPECT_EQ(order_b[0].second, 0);
  EXPECT_EQ(a, pattern(0, 4096));
  EXPECT_EQ(b, pattern(8192, 4096));
}

TEST_F(ServerTest, MultiConnFlushOnAnotherConnection) {
  auto a = connect_nbd();
  auto b = connect_nbd();
  ASSERT_EQ(nbd_can_multi_conn(*a), 1);
  const Bytes w = filled(1 << 20, 0x66);
  ASSERT_EQ(nbd_pwrite(*a, w.data(), w.size(), 2 << 20, 0), 0);
  ASSERT_EQ(nbd_flush(*b, 0), 0);
  Bytes got(w.size());
  ASSERT_EQ(nbd_pread(*b, got.data(), got.size(), 2 << 20, 0), 0);
  EXPECT_EQ(got, w);
  ASSERT_EQ(nbd_pread(*a, got.data(), got.size(), 2 << 20, 0), 0);
  EXPECT_EQ(got, w);
  EXPECT_EQ(file_bytes(2 << 20, w.size()), w);
}

// ---- Commands and their effect on the file -------------------------------------------

bool file_system_punches_holes(const std::string& dir) {
  const std::string p = dir + "/probe";
  UniqueFd fd(::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  const Bytes b = filled(1 << 16, 1);
  bool ok = ::pwrite(fd.get(), b.data(), b.size(), 0) == ssize_t(b.size()) &&
            ::fallocate(fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 1 << 16) == 0 &&
            ::fallocate(fd.get(), FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 0, 4096) == 0;
  ::unlink(p.c_str());
  return ok;
}

// Whether [offset, offset + length) is one hole in the file.
bool is_hole(const std::string& path, uint64_t offset, uint64_t length) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  off_t data = ::lseek(fd.get(), static_cast<off_t>(offset), SEEK_DATA);
  return data < 0 ? errno == ENXIO : uint64_t(data) >= offset + length;
}

int64_t allocated_blocks(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? st.st_blocks : -1;
}

TEST_P(ServerPaths, FlushFuaTrimAndZeroesAreVisibleInTheFile) {
  if (!file_system_punches_holes(dir_)) GTEST_SKIP() << "no hole punching in " << dir_;
  {
    UniqueFd fd(::open(image_.c_str(), O_RDWR | O_CLOEXEC));
    ASSERT_EQ(::fsync(fd.get()), 0);  // allocated for real, so that block counts mean something
  }
  auto n = connect_nbd();
  ASSERT_EQ(nbd_can_trim(*n), 1);
  ASSERT_EQ(nbd_can_zero(*n), 1);
  ASSERT_EQ(nbd_can_fast_zero(*n), 1);
  constexpr uint64_t kMiB = 1 << 20;
  const Bytes zeros(kMiB);

  const Bytes w = filled(kMiB, 0x99);
  ASSERT_EQ(nbd_pwrite(*n, w.data(), w.size(), 0, LIBNBD_CMD_FLAG_FUA), 0);
  EXPECT_EQ(file_bytes(0, kMiB), w);
  ASSERT_EQ(nbd_flush(*n, 0), 0);

  ASSERT_EQ(nbd_trim(*n, kMiB, 2 * kMiB, 0), 0) << nbd_get_error();
  EXPECT_TRUE(is_hole(image_, 2 * kMiB, kMiB));
  EXPECT_EQ(file_bytes(2 * kMiB, kMiB), zeros);

  ASSERT_EQ(nbd_zero(*n, kMiB, 4 * kMiB, LIBNBD_CMD_FLAG_FUA), 0);  // may punch
  EXPECT_TRUE(is_hole(image_, 4 * kMiB, kMiB));
  EXPECT_EQ(file_bytes(4 * kMiB, kMiB), zeros);

  const int64_t before = allocated_blocks(image_);
  ASSERT_EQ(nbd_zero(*n, kMiB, 6 * kMiB, LIBNBD_CMD_FLAG_NO_HOLE), 0);
  EXPECT_GE(allocated_blocks(image_), before);  // stays allocated (not punched)
  EXPECT_EQ(file_bytes(6 * kMiB, kMiB), zeros);

  ASSERT_EQ(nbd_zero(*n, kMiB, 8 * kMiB, LIBNBD_CMD_FLAG_FAST_ZERO), 0) << nbd_get_error();
  EXPECT_EQ(file_bytes(8 * kMiB, kMiB), zeros);
  ASSERT_EQ(nbd_zero(*n, kMiB, 10 * kMiB, LIBNBD_CMD_FLAG_FAST_ZERO | LIBNBD_CMD_FLAG_NO_HOLE), 0);
  EXPECT_EQ(file_bytes(10 * kMiB, kMiB), zeros);

  // What was not touched is intact.
  EXPECT_EQ(file_bytes(kMiB, kMiB), pattern(kMiB, kMiB));
  EXPECT_EQ(file_bytes(3 * kMiB, kMiB), pattern(3 * kMiB, kMiB));
  EXPECT_EQ(file_bytes(7 * kMiB, kMiB), pattern(7 * kMiB, kMiB));
  EXPECT_EQ(file_bytes(12 * kMiB, kMiB), pattern(12 * kMiB, kMiB));
}

TEST_P(ServerPaths, Cache) {
  auto n = connect_nbd();
  ASSERT_EQ(nbd_can_cache(*n), 1);
  EXPECT_EQ(nbd_cache(*n, 1 << 20, 0, 0), 0);
  EXPECT_EQ(nbd_cache(*n, kImageBytes, 0, 0), 0);
  EXPECT_EQ(nbd_errno(nbd_cache(*n, 1, kImageBytes, 0)), EINVAL);
}

TEST_P(ServerPaths, BlockStatusOfASparseFile) {
  // A sparse image: hole [0, 1 MiB), data [1, 2 MiB), hole [2, 4 MiB), 4 KiB of data, hole.
  {
    stop();
    server_.reset();
    test_dev_.reset();
    dev_.reset();
    UniqueFd fd(::open(image_.c_str(), O_RDWR | O_TRUNC | O_CLOEXEC));
    ASSERT_EQ(::ftruncate(fd.get(), kImageBytes), 0);
    const Bytes d = pattern(0, 1 << 20);
    ASSERT_EQ(::pwrite(fd.get(), d.data(), d.size(), 1 << 20), ssize_t(d.size()));
    ASSERT_EQ(::pwrite(fd.get(), d.data(), 4096, 4 << 20), 4096);
    start();
    test_dev_->nowait = GetParam();
  }
  if (!is_hole(image_, 0, 1 << 20)) GTEST_SKIP() << "no sparse files in " << dir_;
  auto n = connect_nbd();
  ASSERT_EQ(nbd_can_meta_context(*n, LIBNBD_CONTEXT_BASE_ALLOCATION), 1);
  using E = std::vector<std::pair<uint32_t, uint32_t>>;
  constexpr uint32_t kHoleZero = LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO;
  auto status = [&](uint64_t length, uint64_t offset, uint32_t flags) {
    ExtentList l;
    EXPECT_EQ(nbd_block_status(*n, length, offset, {collect_extents, &l, nullptr}, flags), 0)
        << nbd_get_error();
    EXPECT_EQ(l.context, LIBNBD_CONTEXT_BASE_ALLOCATION);
    return l.extents;
  };
  EXPECT_EQ(status(kImageBytes, 0, 0), (E{{1 << 20, kHoleZero},
                                          {1 << 20, 0},
                                          {2 << 20, kHoleZero},
                                          {4096, 0},
                                          {kImageBytes - (4 << 20) - 4096, kHoleZero}}));
  EXPECT_EQ(status(1 << 20, 512 << 10, 0), (E{{512 << 10, kHoleZero}, {512 << 10, 0}}));
  EXPECT_EQ(status(kImageBytes, 0, LIBNBD_CMD_FLAG_REQ_ONE), (E{{1 << 20, kHoleZero}}));
  EXPECT_EQ(status(kImageBytes - (1 << 20), 1 << 20, LIBNBD_CMD_FLAG_REQ_ONE), (E{{1 << 20, 0}}));
  EXPECT_EQ(status(4096, 4 << 20, LIBNBD_CMD_FLAG_REQ_ONE), (E{{4096, 0}}));
  ExtentList none;
  EXPECT_EQ(
      nbd_errno(nbd_block_status(*n, 4096, kImageBytes, {collect_extents, &none, nullptr}, 0)),
      EINVAL);
  // Without structured replies there is no block status: refused, in step.
  auto c = connect_raw("disk", false, false);
  ASSERT_TRUE(c->request(kCmdBlockStatus, 1, 0, 4096));
  auto r = c->reply();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->magic, kSimpleReplyMagic);
  EXPECT_EQ(r->error, kEInval);
  // With it, by hand: one chunk, DONE, context id 0.
  c = connect_raw("disk", true, true);
  ASSERT_TRUE(c->request(kCmdBlockStatus, 2, 0, 2 << 20));
  r = c->reply();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->type, kChunkBlockStatus);
  EXPECT_EQ(r->flags, kReplyFlagDone);
  ASSERT_EQ(r->data.size(), 4u + 2 * 8);
  EXPECT_EQ(get_u32(r->data.data()), 0u);
  EXPECT_EQ(get_u32(&r->data[4]), 1u << 20);
  EXPECT_EQ(get_u32(&r->data[8]), kHoleZero);
  EXPECT_EQ(get_u32(&r->data[12]), 1u << 20);
  EXPECT_EQ(get_u32(&r->data[16]), 0u);
}

// ---- Shutdown ---------------------------------------------------------------------------

TEST_P(ServerPaths, StopWhileClientsAreConnectedAnswersWhatIsInFlight) {
  test_dev_->gated_offset = 4096;
  auto idle_handshake = std::make_unique<RawClient>(address_);
  ASSERT_TRUE(idle_handshake->recv_n(testing::kGreetingBytes).has_value());
  auto idle = connect_nbd();
  auto n = connect_nbd();
  constexpr size_t kHeld = 4;  // as many as the pool has threads
  std::vector<Bytes> bufs(kHeld, Bytes(4096));
  std::vector<int64_t> cookies;
  for (auto& b : bufs) {
    cookies.push_back(nbd_aio_pread(*n, b.data(), b.size(), 4096, NBD_NULL_COMPLETION, 0));
    ASSERT_GT(cookies.back(), 0);
  }
  const Bytes w = filled(4096, 0x12);
  cookies.push_back(nbd_aio_pwrite(*n, w.data(), w.size(), 1 << 20, NBD_NULL_COMPLETION, 0));
  ASSERT_TRUE(poll_until(*n, [&] { return test_dev_->gate.waiting() >= kHeld; }));

  server_->request_stop();
  // Once the listener is gone the server is draining; then let the held reads finish.
  const auto deadline = std::chrono::steady_clock::now() + kWait;
  while (connect_to(address_) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  test_dev_->gate.open();

  ASSERT_TRUE(poll_until(*n, [&] { return nbd_aio_in_flight(*n) == 0; }));
  for (int64_t c : cookies) EXPECT_EQ(nbd_aio_command_completed(*n, c), 1) << nbd_get_error();
  for (const Bytes& b : bufs) EXPECT_EQ(b, pattern(4096, 4096));
  thread_.join();
  EXPECT_TRUE(run_result_) << run_result_.error().message;
  EXPECT_EQ(file_bytes(1 << 20, 4096), w);
  EXPECT_TRUE(idle_handshake->closed_by_server());
  Bytes buf(512);
  EXPECT_EQ(nbd_pread(*idle, buf.data(), buf.size(), 0, 0), -1);  // the server is gone
}

}  // namespace
}  // namespace imgstream::nbd
