// A tiny HTTP/1.1 server for the HTTP blob tests: serves one in-memory object on
// 127.0.0.1 (an ephemeral port), one thread per connection, with misbehaviours that can
// be switched on at any time from the test: ignore ranges, cut the body, answer 503 (or
// any status), answer a wrong Content-Range, answer 404, never answer, change the ETag
// or the object. Header-only, for src/blob/*_test.cc.
#pragma once

#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "base/result.h"
#include "base/unique_fd.h"
#include "io/socket.h"

namespace imgstream::blob::testing {

// Lock contract: accept_thread_ accepts and starts one thread per connection (threads_),
// which serve requests while the test's thread changes the behaviour. The knobs and
// counters (ignore_ranges_ ... connections_accepted_) are atomics, read per request.
// mu_ guards stopping_, object_ (replaced whole: a request keeps the shared_ptr it took),
// etag_, ranges_seen_, connections_ and threads_; cv_ wakes hung requests (hang_) when
// stopping_ is set. The destructor, on the test's thread, stops and joins them all.
class TestHttpServer {
 public:
  enum class Ranges { Honour, Ignore };

  // A request's head larger than this closes the connection.
  static constexpr size_t kRequestHeadBytesMax = 16 * 1024;
  // Range headers remembered for ranges_seen() (the oldest are dropped).
  static constexpr size_t kRangesSeenMax = 4096;

  static Result<std::unique_ptr<TestHttpServer>> start(std::vector<std::byte> object) {
    Address a{.kind = Address::Kind::Tcp, .host = "127.0.0.1", .port = 0};
    UniqueFd fd(TRY(listen_on(a)).release());  // TCP: no socket file to keep
    std::unique_ptr<TestHttpServer> s(new TestHttpServer(std::move(fd), a.port, std::move(object)));
    s->accept_thread_ = std::thread([p = s.get()] { p->accept_loop(); });
    return s;
  }

  ~TestHttpServer() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
      for (auto& fd : connections_) ::shutdown(fd.get(), SHUT_RDWR);
    }
    cv_.notify_all();
    accept_thread_.join();  // polls stopping_
    for (auto& t : threads_) t.join();
  }

  uint16_t port() const { return port_; }
  std::string url(std::string_view path = "/object") const {
    return fmt::format("http://127.0.0.1:{}{}", port_, path);
  }

  // ---- Switches ----
  void set_ranges(Ranges r) { ignore_ranges_ = r == Ranges::Ignore; }
  // The next `requests` answers send only `body_bytes` of their body, then close.
  void cut_next(unsigned requests, size_t body_bytes) {
    cut_body_bytes_ = body_bytes;
    cut_next_ = requests;
  }
  // The next `requests` answers are `status` with a short body.
  void fail_next(unsigned requests, int status = 503) {
    fail_status_ = status;
    fail_next_ = requests;
  }
  // The next `requests` 206 answers name (and send) the range one byte later than asked.
  void wrong_range_next(unsigned requests) { wrong_range_next_ = requests; }
  void set_missing(bool missing) { missing_ = missing; }  // 404 for every request
  void set_hang(bool hang) { hang_ = hang; }              // read requests, never answer
  void set_etag(std::string etag) {
    std::lock_guard lock(mu_);
    etag_ = std::move(etag);
  }
  void set_object(std::vector<std::byte> object) {
    std::lock_guard lock(mu_);
    object_ = std::make_shared<const std::vector<std::byte>>(std::move(object));
  }

  // ---- Observations ----
  uint64_t requests() const { return requests_; }
  uint64_t connections() const { return connections_accepted_; }
  // The Range header of every request ("" when none), oldest first.
  std::vector<std::string> ranges_seen() const {
    std::lock_guard lock(mu_);
    return {ranges_seen_.begin(), ranges_seen_.end()};
  }

 private:
  TestHttpServer(UniqueFd fd, uint16_t port, std::vector<std::byte> object)
      : listen_(std::move(fd)),
        port_(port),
        object_(std::make_shared<const std::vector<std::byte>>(std::move(object))) {}

  // Takes one from a "next K requests" counter; true when it was positive.
  static bool take(std::atomic<unsigned>& counter) {
    unsigned n = counter.load();
    while (n > 0 && !counter.compare_exchange_weak(n, n - 1)) {
    }
    return n > 0;
  }

  static bool send_all(int fd, std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  void accept_loop() {
    for (;;) {
      pollfd p{.fd = listen_.get(), .events = POLLIN};
      ::poll(&p, 1, 20);  // wakes up now and then to see stopping_
      std::lock_guard lock(mu_);
      if (stopping_) return;
      if (!(p.revents & POLLIN)) continue;
      const int c = ::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      ++connections_accepted_;
      // The fds stay open until the destructor, after the threads are joined, so that
      // shutdown() there never hits a reused number.
      connections_.emplace_back(c);
      threads_.emplace_back([this, c] {
        serve(c);
        ::shutdown(c, SHUT_RDWR);
      });
    }
  }

  void serve(int fd) {
    std::string in;
    for (;;) {
      size_t end;
      while ((end = in.find("\r\n\r\n")) == std::string::npos) {
        if (in.size() > kRequestHeadBytesMax) return;
        char buf[4096];
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) return;
        in.append(buf, static_cast<size_t>(n));
      }
      const std::string head = in.substr(0, end);
      in.erase(0, end + 4);
      if (!answer(fd, head)) return;
    }
  }

  static std::string header(std::string_view head, std::string_view name) {
    std::string lower(head);
    for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    const size_t at = lower.find(fmt::format("\r\n{}:", name));
    if (at == std::string::npos) return "";
    const size_t from = at + 3 + name.size();
    std::string_view v = std::string_view(head).substr(from, head.find("\r\n", from) - from);
    while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
    return std::string(v);
  }

  // "bytes=a-b" or "bytes=a-" (all our client sends), clamped to the object.
  static std::optional<std::pair<uint64_t, uint64_t>> parse_range(std::string_view r,
                                                                  uint64_t size) {
    if (!r.starts_with("bytes=") || r.find(',') != std::string_view::npos) return std::nullopt;
    r.remove_prefix(6);
    const size_t dash = r.find('-');
    if (dash == std::string_view::npos) return std::nullopt;
    auto number = [](std::string_view t) -> std::optional<uint64_t> {
      uint64_t v = 0;
      auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
      if (t.empty() || ec != std::errc() || end != t.data() + t.size()) return std::nullopt;
      return v;
    };
    const auto first_opt = number(r.substr(0, dash));
    const auto last_opt =
        dash + 1 < r.size() ? number(r.substr(dash + 1)) : std::optional<uint64_t>(size - 1);
    if (!first_opt || !last_opt) return std::nullopt;
    const uint64_t first = *first_opt, last = *last_opt;
    if (first >= size || last < first) return std::pair<uint64_t, uint64_t>{1, 0};  // 416
    return std::pair<uint64_t, uint64_t>{first, std::min(last, size - 1)};
  }

  // Answers one request; false closes the connection.
  bool answer(int fd, const std::string& head) {
    const std::string range = header(head, "range");
    ++requests_;
    {
      std::unique_lock lock(mu_);
      ranges_seen_.push_back(range);
      if (ranges_seen_.size() > kRangesSeenMax) ranges_seen_.pop_front();
      if (hang_) {
        cv_.wait(lock, [&] { return stopping_; });
        return false;
      }
    }
    if (missing_) return send_simple(fd, 404, "Not Found");
    if (take(fail_next_)) return send_simple(fd, fail_status_, "Failing On Purpose");
    std::shared_ptr<const std::vector<std::byte>> object;
    std::string etag;
    {
      std::lock_guard lock(mu_);
      object = object_;
      etag = etag_;
    }
    const uint64_t size = object->size();
    int status = 200;
    uint64_t first = 0, last = size - 1;  // an empty object: length 0 below
    if (!ignore_ranges_ && !range.empty()) {
      auto r = parse_range(range, size);
      if (!r) return send_simple(fd, 400, "Bad Range");
      if (r->first > r->second)
        return send_simple(fd, 416, "Range Not Satisfiable",
                           fmt::format("Content-Range: bytes */{}\r\n", size));
      status = 206;
      std::tie(first, last) = *r;
      if (take(wrong_range_next_) && last + 1 < size) ++first, ++last;
    }
    const uint64_t length = size == 0 ? 0 : last - first + 1;
    std::string out = fmt::format(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nETag: \"{}\"\r\nAccept-Ranges: bytes\r\n", status,
        status == 206 ? "Partial Content" : "OK", length, etag);
    if (status == 206) out += fmt::format("Content-Range: bytes {}-{}/{}\r\n", first, last, size);
    out += "\r\n";
    const bool cut = take(cut_next_);
    const uint64_t send_bytes = cut ? std::min<uint64_t>(length, cut_body_bytes_) : length;
    if (!head.starts_with("HEAD "))
      out.append(reinterpret_cast<const char*>(object->data()) + first, send_bytes);
    return send_all(fd, out) && !cut;
  }

  bool send_simple(int fd, int status, std::string_view reason, std::string extra = "") {
    const std::string body = fmt::format("{} {}\n", status, reason);
    return send_all(fd, fmt::format("HTTP/1.1 {} {}\r\nContent-Length: {}\r\n{}\r\n{}", status,
                                    reason, body.size(), extra, body));
  }

  const UniqueFd listen_;
  const uint16_t port_;
  std::thread accept_thread_;

  std::atomic<bool> ignore_ranges_{false}, missing_{false}, hang_{false};
  std::atomic<unsigned> cut_next_{0}, fail_next_{0}, wrong_range_next_{0};
  std::atomic<size_t> cut_body_bytes_{0};
  std::atomic<int> fail_status_{503};
  std::atomic<uint64_t> requests_{0}, connections_accepted_{0};

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::shared_ptr<const std::vector<std::byte>> object_;
  std::string etag_ = "v1";
  std::deque<std::string> ranges_seen_;
  std::vector<UniqueFd> connections_;
  std::vector<std::thread> threads_;
};

}  // namespace imgstream::blob::testing
