// Tests of the HTTP BlobReader against an in-process server with switchable
// misbehaviours (http_testing.h), and against a real nginx when one is installed.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "blob/blob.h"
#include "blob/http_testing.h"

extern char** environ;

namespace imgstream::blob {
namespace {

using namespace std::chrono_literals;
using testing::TestHttpServer;
using Bytes = std::vector<std::byte>;

Bytes random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Bytes b(n);
  for (auto& x : b) x = std::byte(rng());
  return b;
}

BlobOptions quick_options() {
  BlobOptions o;
  o.timeout = 5s;
  o.connect_timeout = 1s;
  return o;
}

// Reads [offset, offset + length) and checks it against `object`.
void expect_range(BlobReader& r, const Bytes& object, uint64_t offset, size_t length) {
  Bytes got(length);
  auto res = r.read(offset, got);
  ASSERT_TRUE(res) << res.error().message;
  ASSERT_TRUE(std::equal(got.begin(), got.end(), object.begin() + static_cast<ptrdiff_t>(offset)))
      << "bytes differ in the range at " << offset << " of " << length << " bytes";
}

// Random ranges, plus the edges: the first byte, the last byte, the whole object.
// Returns the bytes asked for.
uint64_t read_random_ranges(BlobReader& r, const Bytes& object, int count, uint64_t seed,
                            size_t length_max = 64 * 1024) {
  std::mt19937_64 rng(seed);
  expect_range(r, object, 0, 1);
  expect_range(r, object, object.size() - 1, 1);
  uint64_t asked = 2;
  for (int i = 0; i < count; ++i) {
    const uint64_t offset = rng() % object.size();
    const size_t length = 1 + rng() % std::min<uint64_t>(length_max, object.size() - offset);
    expect_range(r, object, offset, length);
    asked += length;
  }
  return asked;
}

struct Served {
  Bytes object;
  std::unique_ptr<TestHttpServer> server;
};

Served serve(size_t size, uint64_t seed = 1) {
  Served s{random_bytes(size, seed), nullptr};
  auto server = TestHttpServer::start(s.object);
  IMG_CHECK_MSG(server.has_value(), "test server did not start");
  s.server = std::move(*server);
  return s;
}

// Opens `url` into a new variable `var`, or fails the test.
// NOLINTBEGIN(bugprone-macro-parentheses): var is a name being declared
#define ASSERT_OPEN(var, url, options)                       \
  auto var##_opened = open_http_blob((url), (options));      \
  ASSERT_TRUE(var##_opened) << var##_opened.error().message; \
  std::unique_ptr<BlobReader> var = std::move(*var##_opened)
// NOLINTEND(bugprone-macro-parentheses)

TEST(HttpBlob, ReadsRangesEqualToTheObject) {
  auto s = serve(1 << 20);
  ASSERT_OPEN(r, s.server->url(), quick_options());
  EXPECT_EQ(r->size(), s.object.size());
  EXPECT_EQ(r->uri(), s.server->url());
  read_random_ranges(*r, s.object, 100, 7);
  expect_range(*r, s.object, 0, s.object.size());
  // One single-range request per read (and one for open), no retries.
  const auto st = r->stats();
  EXPECT_EQ(st.requests, 1u + 2 + 100 + 1);
  EXPECT_EQ(st.retries, 0u);
  for (const auto& range : s.server->ranges_seen()) {
    EXPECT_TRUE(range.starts_with("bytes=")) << range;
    EXPECT_EQ(range.find(','), std::string::npos) << range;
  }
  // Kept-alive: one connection did it all.
  EXPECT_EQ(s.server->connections(), 1u);
}

TEST(HttpBlob, ConcurrentReadsFromSeveralThreads) {
  auto s = serve(1 << 20, 2);
  BlobOptions o = quick_options();
  o.connections = 3;
  ASSERT_OPEN(r, s.server->url(), o);
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; ++i)
    threads.emplace_back([&, i] { read_random_ranges(*r, s.object, 40, 100 + i); });
  for (auto& t : threads) t.join();
  // The pool is bounded: never more connections than asked for.
  EXPECT_LE(s.server->connections(), 3u);
  EXPECT_EQ(r->stats().retries, 0u);
}

TEST(HttpBlob, ServerIgnoringRangesIsStillRead) {
  auto s = serve(256 * 1024, 3);
  s.server->set_ranges(TestHttpServer::Ranges::Ignore);
  ASSERT_OPEN(r, s.server->url(), quick_options());
  EXPECT_EQ(r->size(), s.object.size());
  read_random_ranges(*r, s.object, 30, 8);
  expect_range(*r, s.object, 0, s.object.size());
  const auto st = r->stats();
  EXPECT_EQ(st.retries, 0u);
  EXPECT_EQ(st.requests, 1u + 2 + 30 + 1);
  // Bytes before each range came over the wire and were discarded.
  EXPECT_GT(st.bytes_received, s.object.size());
}

TEST(HttpBlob, ConnectionCutMidBodyResumesFromWhatArrived) {
  auto s = serve(256 * 1024, 4);
  ASSERT_OPEN(r, s.server->url(), quick_options());
  s.server->cut_next(2, 1000);
  expect_range(*r, s.object, 10'000, 64 * 1024);
  EXPECT_EQ(r->stats().retries, 2u);
  // Each retry asked only for the bytes not received yet.
  const auto ranges = s.server->ranges_seen();
  ASSERT_EQ(ranges.size(), 4u);
  EXPECT_EQ(ranges[1], "bytes=10000-75535");
  EXPECT_EQ(ranges[2], "bytes=11000-75535");
  EXPECT_EQ(ranges[3], "bytes=12000-75535");
}

TEST(HttpBlob, CutMidBodyOfAServerIgnoringRanges) {
  auto s = serve(256 * 1024, 5);
  s.server->set_ranges(TestHttpServer::Ranges::Ignore);
  ASSERT_OPEN(r, s.server->url(), quick_options());
  s.server->cut_next(2, 20'000);
  expect_range(*r, s.object, 10'000, 64 * 1024);
  EXPECT_EQ(r->stats().retries, 2u);
}

TEST(HttpBlob, ServiceUnavailableIsRetried) {
  auto s = serve(64 * 1024, 6);
  ASSERT_OPEN(r, s.server->url(), quick_options());
  s.server->fail_next(3, 503);
  expect_range(*r, s.object, 100, 1000);
  s.server->fail_next(1, 429);
  expect_range(*r, s.object, 200, 1000);
  EXPECT_EQ(r->stats().retries, 4u);
}

TEST(HttpBlob, ServiceUnavailableAtOpenIsRetried) {
  auto s = serve(64 * 1024, 6);
  s.server->fail_next(2, 503);
  ASSERT_OPEN(r, s.server->url(), quick_options());
  EXPECT_EQ(r->size(), s.object.size());
  EXPECT_EQ(r->stats().retries, 2u);
}

TEST(HttpBlob, WrongContentRangeIsRetried) {
  auto s = serve(64 * 1024, 7);
  ASSERT_OPEN(r, s.server->url(), quick_options());
  s.server->wrong_range_next(2);
  expect_range(*r, s.object, 300, 5000);
  EXPECT_EQ(r->stats().retries, 2u);
}

TEST(HttpBlob, ForbiddenIsPermanent) {
  auto s = serve(64 * 1024, 8);
  ASSERT_OPEN(r, s.server->url(), quick_options());
  s.server->fail_next(1, 403);
  Bytes buf(10);
  auto res = r->read(0, buf);
  ASSERT_FALSE(res);
  EXPECT_EQ(res.error().code, EACCES);
  EXPECT_NE(res.error().message.find("403"), std::string::npos) << res.error().message;
  EXPECT_NE(res.error().message.find("bytes 0-9"), std::string::npos) << res.error().message;
  EXPECT_EQ(r->stats().retries, 0u);
}

TEST(HttpBlob, NotFoundIsAClearErrorAtOpen) {
  auto s = serve(1000);
  s.server->set_missing(true);
  auto r = open_http_blob(s.server->url(), quick_options());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENOENT);
  EXPECT_NE(r.error().message.find(s.server->url()), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("404"), std::string::npos) << r.error().message;
}

TEST(HttpBlob, ConnectionRefusedIsAClearErrorAtOpen) {
  // A port that was free a moment ago: nothing listens there.
  Address a{.kind = Address::Kind::Tcp, .host = "127.0.0.1", .port = 0};
  uint16_t port;
  {
    auto fd = listen_on(a);
    ASSERT_TRUE(fd);
    port = a.port;
  }
  const std::string url = fmt::format("http://127.0.0.1:{}/x", port);
  const auto start = std::chrono::steady_clock::now();
  auto r = open_http_blob(url, quick_options());
  ASSERT_FALSE(r);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);
  EXPECT_NE(r.error().message.find(url), std::string::npos) << r.error().message;
}

TEST(HttpBlob, EmptyObject) {
  auto s = serve(0);
  ASSERT_OPEN(r, s.server->url(), quick_options());
  EXPECT_EQ(r->size(), 0u);
  EXPECT_TRUE(r->read(0, {}));
}

TEST(HttpBlob, ReadPastTheEndIsInvalid) {
  auto s = serve(1000);
  ASSERT_OPEN(r, s.server->url(), quick_options());
  Bytes buf(10);
  auto res = r->read(995, buf);
  ASSERT_FALSE(res);
  EXPECT_EQ(res.error().code, EINVAL);
  EXPECT_FALSE(r->read(1001, std::span(buf).first(0)));
  EXPECT_TRUE(r->read(990, buf));
  EXPECT_TRUE(r->read(1000, std::span(buf).first(0)));
}

TEST(HttpBlob, ChangedETagIsPermanent) {
  auto s = serve(64 * 1024, 9);
  ASSERT_OPEN(r, s.server->url(), quick_options());
  s.server->set_etag("v2");
  Bytes buf(100);
  auto res = r->read(0, buf);
  ASSERT_FALSE(res);
  EXPECT_EQ(res.error().code, ESTALE);
  EXPECT_NE(res.error().message.find("changed"), std::string::npos) << res.error().message;
  EXPECT_EQ(r->stats().retries, 0u);
}

TEST(HttpBlob, ChangedSizeIsPermanent) {
  auto s = serve(64 * 1024, 10);
  ASSERT_OPEN(r, s.server->url(), quick_options());
  s.server->set_object(random_bytes(32 * 1024, 10));
  Bytes buf(100);
  auto res = r->read(0, buf);  // a 206 with another total
  ASSERT_FALSE(res);
  EXPECT_EQ(res.error().code, ESTALE) << res.error().message;
  res = r->read(40 * 1024, buf);  // a 416: past the new end
  ASSERT_FALSE(res);
  EXPECT_EQ(res.error().code, ESTALE) << res.error().message;
  EXPECT_EQ(r->stats().retries, 0u);
}

TEST(HttpBlob, TimeoutIsBounded) {
  auto s = serve(64 * 1024, 11);
  BlobOptions o = quick_options();
  o.timeout = 400ms;
  ASSERT_OPEN(r, s.server->url(), o);
  s.server->set_hang(true);
  Bytes buf(100);
  const auto start = std::chrono::steady_clock::now();
  auto res = r->read(5, buf);
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(res);
  EXPECT_GE(took, 300ms);
  EXPECT_LT(took, 400ms + 1s);
  EXPECT_NE(res.error().message.find(s.server->url()), std::string::npos) << res.error().message;
  EXPECT_NE(res.error().message.find("bytes 5-104"), std::string::npos) << res.error().message;
}

// interrupt() (the process is stopping) ends a read waiting on a server that does not
// answer within a second, and one between retries at once, with EINTR; later reads fail
// at once.
TEST(HttpBlob, InterruptEndsAStalledRead) {
  auto s = serve(64 * 1024, 13);
  BlobOptions o = quick_options();
  o.timeout = 20s;
  Bytes buf(100);
  for (const bool hang : {true, false}) {
    ASSERT_OPEN(r, s.server->url(), o);
    s.server->set_hang(hang);
    if (!hang) s.server->fail_next(1'000'000, 503);
    std::thread stopper([&r] {
      std::this_thread::sleep_for(300ms);
      r->interrupt();
    });
    const auto start = std::chrono::steady_clock::now();
    auto res = r->read(0, buf);
    const auto took = std::chrono::steady_clock::now() - start;
    stopper.join();
    ASSERT_FALSE(res) << hang;
    EXPECT_EQ(res.error().code, EINTR) << res.error().message;
    EXPECT_NE(res.error().message.find("interrupted"), std::string::npos) << res.error().message;
    EXPECT_LT(took, 300ms + 1500ms) << hang;
    s.server->set_hang(false);
    s.server->fail_next(0);
    EXPECT_EQ(r->read(0, buf).error().code, EINTR) << "irrevocable";
  }
}

TEST(HttpBlob, RetriesStopAtTheTimeout) {
  auto s = serve(64 * 1024, 12);
  BlobOptions o = quick_options();
  o.timeout = 500ms;
  ASSERT_OPEN(r, s.server->url(), o);
  s.server->fail_next(1'000'000, 503);
  Bytes buf(100);
  const auto start = std::chrono::steady_clock::now();
  auto res = r->read(0, buf);
  ASSERT_FALSE(res);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 500ms + 1s);
  EXPECT_NE(res.error().message.find("503"), std::string::npos) << res.error().message;
  EXPECT_GT(r->stats().retries, 0u);
}

// ---- nginx ------------------------------------------------------------------------------

constexpr const char* kNginx = "/usr/sbin/nginx";

// A temporary directory, removed with everything in it when the object goes.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "imgstream-http-XXXXXX").string();
    IMG_CHECK(::mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// nginx in the foreground (one process), serving `root` on 127.0.0.1:port. Killed by its
// pid when the object goes.
class Nginx {
 public:
  Nginx() = default;
  Nginx(const Nginx&) = delete;
  Nginx& operator=(const Nginx&) = delete;
  ~Nginx() { stop(); }

  Result<void> start(const std::string& dir, const std::string& extra_server_config) {
    Address a{.kind = Address::Kind::Tcp, .host = "127.0.0.1", .port = 0};
    {
      auto fd = TRY(listen_on(a));  // learn a free port; nginx binds it a moment later
    }
    port_ = a.port;
    const std::string conf = dir + "/nginx.conf";
    std::ofstream(conf) << fmt::format(R"(daemon off;
master_process off;
pid {0}/nginx.pid;
error_log {0}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log {0}/access.log;
  client_body_temp_path {0}/tmp-body;
  proxy_temp_path {0}/tmp-proxy;
  fastcgi_temp_path {0}/tmp-fastcgi;
  uwsgi_temp_path {0}/tmp-uwsgi;
  scgi_temp_path {0}/tmp-scgi;
  server {{
    listen 127.0.0.1:{1};
    root {0}/www;
    location = /moved.bin {{ return 302 /blob.bin; }}
    location = /loop.bin {{ return 302 /loop.bin; }}
    {2}
  }}
}}
)",
                                       dir, port_, extra_server_config);
    std::vector<std::string> args = {"nginx", "-p", dir, "-c", conf, "-e", dir + "/error.log"};
    std::vector<char*> argv;
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    const int err = ::posix_spawn(&pid_, kNginx, nullptr, nullptr, argv.data(), environ);
    if (err != 0) return Error::from_errno(err, "spawn nginx");
    return wait_ready();
  }

  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  uint16_t port() const { return port_; }

 private:
  Result<void> wait_ready() {
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < deadline) {
      Address a{.kind = Address::Kind::Tcp, .host = "127.0.0.1", .port = port_};
      if (connect_to(a)) return ok();
      int status;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return Error::io("nginx exited before it was ready");
      }
      std::this_thread::sleep_for(10ms);
    }
    return Error{ETIMEDOUT, "nginx not ready in time"};
  }

  pid_t pid_ = -1;
  uint16_t port_ = 0;
};

void read_from_nginx(const std::string& extra_server_config, size_t reads_per_thread,
                     bool ranges_honoured) {
  if (::access(kNginx, X_OK) != 0) GTEST_SKIP() << kNginx << " is not installed";
  TempDir dir;
  std::filesystem::create_directory(dir.path() + "/www");
  const Bytes object = random_bytes(8 << 20, 42);
  {
    std::ofstream f(dir.path() + "/www/blob.bin", std::ios::binary);
    f.write(reinterpret_cast<const char*>(object.data()),
            static_cast<std::streamsize>(object.size()));
  }
  Nginx nginx;
  auto started = nginx.start(dir.path(), extra_server_config);
  ASSERT_TRUE(started) << started.error().message;
  const std::string url = fmt::format("http://127.0.0.1:{}/blob.bin", nginx.port());

  auto missing = open_http_blob(url + ".missing", quick_options());
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ENOENT) << missing.error().message;
  auto loop =
      open_http_blob(fmt::format("http://127.0.0.1:{}/loop.bin", nginx.port()), quick_options());
  ASSERT_FALSE(loop);
  EXPECT_NE(loop.error().message.find("redirects"), std::string::npos) << loop.error().message;
  {
    ASSERT_OPEN(moved, fmt::format("http://127.0.0.1:{}/moved.bin", nginx.port()), quick_options());
    ASSERT_EQ(moved->size(), object.size());
    expect_range(*moved, object, 12345, 6789);
  }

  ASSERT_OPEN(r, url, quick_options());
  ASSERT_EQ(r->size(), object.size());
  std::atomic<uint64_t> asked{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&, i] {
      asked +=
          read_random_ranges(*r, object, static_cast<int>(reads_per_thread), 1000 + i, 256 * 1024);
    });
  for (auto& t : threads) t.join();
  const auto st = r->stats();
  EXPECT_EQ(st.retries, 0u);
  EXPECT_EQ(st.requests, 1 + 4 * (reads_per_thread + 2));
  if (ranges_honoured) {
    // Exactly the asked bytes came over the wire: 206s, nothing discarded.
    EXPECT_EQ(st.bytes_received, 1 + asked.load());
  } else {
    EXPECT_GT(st.bytes_received, object.size());
  }
}

TEST(HttpBlobNginx, RandomRanges) {
  read_from_nginx("", 25, true);
}

TEST(HttpBlobNginx, RangesDisabledAnswersWholeBody) {
  read_from_nginx("max_ranges 0;", 8, false);
}

}  // namespace
}  // namespace imgstream::blob
