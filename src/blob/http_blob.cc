// HttpBlob: a BlobReader over HTTP(S) range requests, with libcurl.
//
// One read is one `Range: bytes=a-b` GET (never a multi-range request) on an easy handle
// taken from a per-reader pool; a handle keeps its connection alive between reads. The
// body is copied straight into the caller's buffer, so no response is held in memory.
//
// What the server may answer, and what we do (the state of one attempt):
//
//   answer                         | action
//   -------------------------------+------------------------------------------------------
//   206, Content-Range = asked     | copy into the buffer; done when it is full
//   206, other Content-Range       | transient: retry
//   200 (ranges ignored)           | discard bytes before the range, copy the range, cut
//                                  | the transfer once the buffer is full (a success)
//   body cut, timeout, 5xx, 408,   | transient: retry after a backoff, asking only for the
//   429, connection errors         | bytes not received yet
//   416                            | permanent: range not satisfiable (or object changed)
//   other 4xx, too many redirects  | permanent
//   other total size or ETag       | permanent: the object changed while being read
//
// Transient failures are retried until BlobOptions::timeout has passed since the read
// began. At open, "connection refused" and "host not found" are permanent too: they are
// far more often a wrong URL than a server restarting.
//
// libcurl's errors, sorted:
//
//   error                                   | kind
//   ----------------------------------------+---------------------------------------------
//   timeouts, cut or reset connections,     | transient
//   partial bodies, HTTP/2 stream errors    |
//   TLS: certificate not trusted or wrong,  | permanent: no retry makes the certificate
//   no common cipher, bad CA file, ...      | good (CURLE_SSL_*, PEER_FAILED_VERIFICATION)
//   TLS handshake failure (SSL_CONNECT)     | permanent at open (`https://` to a plain
//                                           | HTTP server, a TLS-less port); transient
//                                           | later, when the server proved it speaks TLS
//   unsupported protocol, malformed URL     | permanent
//
// interrupt() (the process is stopping) ends a read within a second, with EINTR
// "interrupted": the transfer is aborted from libcurl's progress callback, and the waits
// between attempts are cut short. A stop request interrupts open() by itself; later the
// reader's owner interrupts it (Pack, PackSource::close, PackDevice), in its own order.
#include <curl/curl.h>
#include <fmt/format.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "base/check.h"
#include "base/limits.h"
#include "base/log.h"
#include "base/stop.h"
#include "blob/blob.h"

namespace imgstream::blob {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// ---- Bounds ---------------------------------------------------------------------------

// Easy handles (each with its connection) per reader, whatever BlobOptions asks.
constexpr unsigned kConnectionsMax = limits::kHttpConnectionsMax;
// Connections one easy handle keeps open: the object's host and one redirect target.
constexpr long kCachedConnectionsPerHandleMax = limits::kHttpCachedConnectionsPerHandleMax;
// Redirects followed per request (object stores and CDNs redirect once or twice).
constexpr long kRedirectsMax = limits::kHttpRedirectsMax;
// Backoff between attempts: the first wait, doubled after each failure up to the max.
// Each wait is drawn uniformly from [w/2, w] so that readers do not retry in lockstep.
constexpr milliseconds kBackoffFirst{50};
constexpr milliseconds kBackoffMax = limits::kHttpBackoffMax;
static_assert(kBackoffFirst <= kBackoffMax);
// No attempt is started with less time than this left before the read's deadline.
constexpr milliseconds kAttemptTimeMin = limits::kHttpAttemptTimeMin;
// An error response's body is read (so the connection can be reused) up to this many
// bytes; past it the transfer is cut. It is never kept.
constexpr size_t kErrorBodyBytesMax = limits::kHttpErrorBodyBytesMax;
// A transfer slower than 1 byte/s for this long is cut and retried on a new connection,
// so that one stalled connection does not eat the whole timeout of a read.
constexpr long kStallSeconds = 10;
// TCP keepalive probes on idle pooled connections, so dead peers are noticed.
constexpr long kKeepIdleSeconds = 30;
constexpr long kKeepIntervalSeconds = 10;
// Header values we keep (ETag, Last-Modified, the reason phrase) are cut to this length.
constexpr size_t kHeaderValueBytesMax = limits::kHttpHeaderValueBytesMax;

// ---- libcurl handles ------------------------------------------------------------------

Result<void> init_curl_once() {
  // Once per process and never undone: libcurl's global state lives as long as we do.
  static const CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);
  if (rc != CURLE_OK) return Error::io(std::string("curl_global_init: ") + curl_easy_strerror(rc));
  return ok();
}

struct EasyDeleter {
  void operator()(CURL* h) const { curl_easy_cleanup(h); }
};

// One easy handle and the buffer libcurl writes its error text into (it must live as
// long as the handle, so both live on the heap together).
struct Connection {
  std::unique_ptr<CURL, EasyDeleter> easy;
  char error[CURL_ERROR_SIZE] = {};
};

// The easy handles of one reader: made lazily up to `max`, lent one per read, and taken
// back for reuse so that their connections stay alive. Thread-safe.
class ConnectionPool {
 public:
  using Setup = std::function<Result<void>(Connection&)>;
  ConnectionPool(unsigned max, Setup setup) : max_(max), setup_(std::move(setup)) {}
  ~ConnectionPool() { IMG_CHECK_MSG(idle_.size() == made_, "a read outlived its reader"); }
  ConnectionPool(const ConnectionPool&) = delete;
  ConnectionPool& operator=(const ConnectionPool&) = delete;

  class Lease {
   public:
    Lease(ConnectionPool* pool, std::unique_ptr<Connection> c) : pool_(pool), c_(std::move(c)) {}
    Lease(Lease&& o) noexcept : pool_(o.pool_), c_(std::move(o.c_)) {}
    Lease& operator=(Lease&&) = delete;
    ~Lease() {
      if (c_) pool_->give_back(std::move(c_));
    }
    Connection& operator*() const { return *c_; }

   private:
    ConnectionPool* pool_;
    std::unique_ptr<Connection> c_;
  };

  // Waits until a connection is free or may be made, at most until `deadline`.
  Result<Lease> acquire(Clock::time_point deadline) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_until(lock, deadline, [&] { return !idle_.empty() || made_ < max_; }))
      return Error{ETIMEDOUT, fmt::format("all {} connections stayed busy", max_)};
    if (!idle_.empty()) {  // the most recently used first: its connection is the warmest
      auto c = std::move(idle_.back());
      idle_.pop_back();
      return Lease(this, std::move(c));
    }
    ++made_;
    lock.unlock();
    auto c = make();
    if (!c) {
      lock.lock();
      --made_;
      cv_.notify_one();
      return std::move(c).error();
    }
    return Lease(this, std::move(*c));
  }

 private:
  Result<std::unique_ptr<Connection>> make() {
    auto c = std::make_unique<Connection>();
    c->easy.reset(curl_easy_init());
    if (!c->easy) return Error{ENOMEM, "curl_easy_init failed"};
    TRY(setup_(*c));
    return c;
  }

  void give_back(std::unique_ptr<Connection> c) {
    std::lock_guard lock(mu_);
    idle_.push_back(std::move(c));
    cv_.notify_one();
  }

  const unsigned max_;
  const Setup setup_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Connection>> idle_;
  unsigned made_ = 0;
};

// ---- Parsing response headers ---------------------------------------------------------

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() &&
         (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::optional<uint64_t> parse_u64(std::string_view s) {
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

// Content-Range (RFC 9110 §14.4): "bytes first-last/total", "bytes first-last/*" or
// "bytes */total" (with a 416).
struct ContentRange {
  std::optional<uint64_t> first, last, total;
};

std::optional<ContentRange> parse_content_range(std::string_view v) {
  if (v.size() < 6 || !iequals(v.substr(0, 6), "bytes ")) return std::nullopt;
  v = trim(v.substr(6));
  const size_t slash = v.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  const std::string_view range = v.substr(0, slash), total = v.substr(slash + 1);
  ContentRange cr;
  if (total != "*" && !(cr.total = parse_u64(total))) return std::nullopt;
  if (range == "*") return cr;
  const size_t dash = range.find('-');
  if (dash == std::string_view::npos) return std::nullopt;
  cr.first = parse_u64(range.substr(0, dash));
  cr.last = parse_u64(range.substr(dash + 1));
  if (!cr.first || !cr.last || *cr.last < *cr.first) return std::nullopt;
  return cr;
}

// The headers of the last response seen in one attempt (redirects reset it).
struct Response {
  long status = 0;
  std::string reason;
  std::optional<ContentRange> content_range;
  std::optional<uint64_t> content_length;
  std::string etag, last_modified, content_encoding;
};

std::string status_text(const Response& r) {
  return r.reason.empty() ? fmt::format("HTTP {}", r.status)
                          : fmt::format("HTTP {} ({})", r.status, r.reason);
}

// "bytes 100-199", as HTTP writes a range (inclusive).
std::string range_text(uint64_t offset, size_t length) {
  return fmt::format("bytes {}-{}", offset, offset + length - 1);
}

// ---- Outcomes and backoff -------------------------------------------------------------

enum class FailKind { Transient, Permanent };

struct Failure {
  FailKind kind;
  Error error;
};

Failure transient(int code, std::string what) {
  return {FailKind::Transient, {code, std::move(what)}};
}
Failure permanent(int code, std::string what) {
  return {FailKind::Permanent, {code, std::move(what)}};
}
Failure interrupted() {
  return permanent(EINTR, "interrupted");
}

// Errors of the TLS layer that no retry mends (a certificate, a CA file, a cipher).
bool is_tls_config_error(CURLcode rc) {
  switch (rc) {
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_CLIENTCERT:
    case CURLE_USE_SSL_FAILED:
      return true;
    default:
      return false;
  }
}

class Backoff {
 public:
  milliseconds next() {
    const milliseconds w = wait_;
    wait_ = std::min(wait_ * 2, kBackoffMax);
    thread_local std::minstd_rand rng{std::random_device{}()};
    return milliseconds(std::uniform_int_distribution<int64_t>(w.count() / 2, w.count())(rng));
  }
  void reset() { wait_ = kBackoffFirst; }

 private:
  milliseconds wait_ = kBackoffFirst;
};

// ---- The reader -----------------------------------------------------------------------

class HttpBlob final : public BlobReader {
 public:
  static Result<std::unique_ptr<BlobReader>> open(const std::string& url, const BlobOptions& o) {
    TRY_CTX(init_curl_once(), url);
    std::unique_ptr<HttpBlob> b(new HttpBlob(url, o));
    {
      // The reader has no owner yet to interrupt it on a stop request: open() does.
      StopCallback on_stop([p = b.get()] { p->interrupt(); });
      TRY(b->probe());
    }
    return std::unique_ptr<BlobReader>(std::move(b));
  }

  const std::string& uri() const override { return url_; }
  uint64_t size() const override { return size_; }

  Result<void> read(uint64_t offset, std::span<std::byte> buf) override {
    if (offset > size_ || buf.size() > size_ - offset)
      return Error::invalid(fmt::format("{}: read of {} bytes at {} is past its end ({} bytes)",
                                        url_, buf.size(), offset, size_));
    if (buf.empty()) return ok();
    return fetch(offset, buf, Phase::Read);
  }

  BlobStats stats() const override {
    return BlobStats{.requests = requests_.load(),
                     .bytes_received = bytes_received_.load(),
                     .retries = retries_.load()};
  }

  void interrupt() override {
    {
      std::lock_guard lock(interrupt_mu_);
      interrupted_ = true;
    }
    interrupt_cv_.notify_all();
    // Under the lock on_close_socket takes: no descriptor is closed (and its number
    // reused) while this shuts it down.
    std::lock_guard lock(sockets_mu_);
    for (curl_socket_t fd : sockets_) ::shutdown(fd, SHUT_RDWR);
  }

 private:
  enum class Phase {
    Open,  // learning the size and identity: nothing to compare with yet
    Read,
  };

  // One attempt: the bytes still wanted and what the server said so far. The callbacks
  // get a pointer to it.
  struct Transfer {
    HttpBlob* blob;
    Phase phase;
    uint64_t offset;  // dest[0] is the object's byte at `offset`
    std::span<std::byte> dest;
    size_t filled = 0;
    Response resp;
    bool body_checked = false;  // the headers were checked when the body began
    uint64_t body_pos = 0;      // the object offset of the next body byte
    size_t error_body_bytes = 0;
    bool cut_on_purpose = false;     // we stopped a 200 once we had the range
    bool object_empty = false;       // at open: the object has no bytes
    std::optional<Failure> failure;  // found by a callback
  };

  HttpBlob(std::string url, const BlobOptions& o)
      : url_(std::move(url)),
        options_(o),
        pool_(std::clamp(o.connections, 1u, kConnectionsMax),
              [this](Connection& c) { return setup(c); }) {}

  // Learns the size with a `Range: bytes=0-0` GET: the total of a 206's Content-Range, the
  // Content-Length of a 200 (a server that ignores ranges), or the total of a 416's
  // Content-Range (an empty object). Works where HEAD is not answered well, and tells at
  // once whether ranges are honoured.
  Result<void> probe() {
    std::byte first[1];
    return fetch(0, first, Phase::Open);
  }

  Result<void> fetch(uint64_t offset, std::span<std::byte> buf, Phase phase);
  std::optional<Failure> attempt(Connection& c, Transfer& t, Clock::time_point deadline);
  std::optional<Failure> check_body_start(Transfer& t);
  std::optional<Failure> check_identity(Transfer& t, uint64_t total);
  std::optional<Failure> judge(CURLcode rc, const Connection& c, const Transfer& t) const;
  Failure status_failure(const Transfer& t) const;
  Result<void> setup(Connection& c);
  static size_t on_header(char* data, size_t size, size_t count, void* user);
  static size_t on_body(char* data, size_t size, size_t count, void* user);
  static int on_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t);
  static curl_socket_t on_open_socket(void* user, curlsocktype, curl_sockaddr* a);
  static int on_close_socket(void* user, curl_socket_t fd);
  // Waits `d`, or less when interrupted; false when interrupted.
  bool wait_unless_interrupted(milliseconds d);

  const std::string url_;
  const BlobOptions options_;
  // Learned by probe() before the reader is handed out; constant afterwards.
  uint64_t size_ = 0;
  std::string etag_, last_modified_;
  // The sockets libcurl has open for this reader (its callbacks open and close them), so
  // that interrupt() can shut them down: a transfer waiting on a silent server then ends
  // at once rather than at libcurl's next progress call. Before pool_: its handles close
  // their sockets when it goes.
  std::mutex sockets_mu_;
  std::set<curl_socket_t> sockets_;
  ConnectionPool pool_;
  std::atomic<uint64_t> requests_{0}, bytes_received_{0}, retries_{0};
  std::atomic<bool> warned_ranges_ignored_{false};
  std::atomic<bool> interrupted_{false};  // set under interrupt_mu_, read without it
  std::mutex interrupt_mu_;
  std::condition_variable interrupt_cv_;
};

// The options every request shares, set once per handle.
Result<void> HttpBlob::setup(Connection& c) {
  CURL* h = c.easy.get();
  CURLcode rc = CURLE_OK;
  auto set = [&](CURLcode r) {
    if (rc == CURLE_OK) rc = r;
  };
  set(curl_easy_setopt(h, CURLOPT_URL, url_.c_str()));
  set(curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c.error));
  set(curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https"));
  set(curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https"));
  set(curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L));
  set(curl_easy_setopt(h, CURLOPT_MAXREDIRS, kRedirectsMax));
  set(curl_easy_setopt(h, CURLOPT_MAXCONNECTS, kCachedConnectionsPerHandleMax));
  set(curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L));  // we have threads: no SIGALRM for DNS
  set(curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L));
  set(curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, kKeepIdleSeconds));
  set(curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, kKeepIntervalSeconds));
  set(curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L));
  set(curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, kStallSeconds));
  set(curl_easy_setopt(h, CURLOPT_USERAGENT, "imgstream/" IMGSTREAM_VERSION));
  set(curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, &HttpBlob::on_header));
  set(curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, &HttpBlob::on_body));
  set(curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, &HttpBlob::on_progress));
  set(curl_easy_setopt(h, CURLOPT_OPENSOCKETFUNCTION, &HttpBlob::on_open_socket));
  set(curl_easy_setopt(h, CURLOPT_OPENSOCKETDATA, this));
  set(curl_easy_setopt(h, CURLOPT_CLOSESOCKETFUNCTION, &HttpBlob::on_close_socket));
  set(curl_easy_setopt(h, CURLOPT_CLOSESOCKETDATA, this));
  set(curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L));
  if (rc != CURLE_OK)
    return Error::io(fmt::format("{}: curl_easy_setopt: {}", url_, curl_easy_strerror(rc)));
  // h2 over TLS where the server offers it, HTTP/1.1 over plain http. Best effort: a
  // libcurl built without HTTP/2 refuses the option and speaks HTTP/1.1.
  (void)curl_easy_setopt(h, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_2TLS));
  return ok();
}

// Reads [offset, offset + buf.size()) with retries until the read's deadline.
Result<void> HttpBlob::fetch(uint64_t offset, std::span<std::byte> buf, Phase phase) {
  const auto start = Clock::now();
  const auto deadline = start + options_.timeout;
  auto where = [&] {
    return phase == Phase::Open
               ? fmt::format("{}: open", url_)
               : fmt::format("{}: read of {}", url_, range_text(offset, buf.size()));
  };
  auto lease = pool_.acquire(deadline);
  if (!lease) return std::move(lease).error().context(where());
  Backoff backoff;
  size_t filled = 0;
  for (unsigned attempts = 1;; ++attempts) {
    if (interrupted_) return std::move(interrupted().error).context(where());
    Transfer t{
        .blob = this, .phase = phase, .offset = offset + filled, .dest = buf.subspan(filled)};
    std::optional<Failure> failure = attempt(**lease, t, deadline);
    filled += t.filled;
    if (!failure) return ok();
    // Whatever the transfer died of (its socket shut down), it was the interruption.
    if (interrupted_) return std::move(interrupted().error).context(where());
    if (failure->kind == FailKind::Permanent) return std::move(failure->error).context(where());
    if (t.filled > 0) backoff.reset();  // progress: the server works, retry soon
    // The last wait is cut short so that one more attempt fits before the deadline.
    const auto now = Clock::now();
    const auto spent = std::chrono::duration_cast<milliseconds>(now - start);
    if (deadline - now < kAttemptTimeMin)
      return Error{failure->error.code,
                   fmt::format("{}: failed for {} ms ({} attempt(s), {} of {} bytes received), "
                               "last error: {}",
                               where(), spent.count(), attempts, filled, buf.size(),
                               failure->error.message)};
    const milliseconds wait = std::min(
        backoff.next(), std::chrono::duration_cast<milliseconds>(deadline - now - kAttemptTimeMin));
    LOG_DEBUG("{}: {}; retrying in {} ms", where(), failure->error.message, wait.count());
    if (!wait_unless_interrupted(wait)) return std::move(interrupted().error).context(where());
    retries_.fetch_add(1, std::memory_order_relaxed);
  }
}

// One request for t.dest. nullopt when t.dest was filled (or, at open, the size learned).
std::optional<Failure> HttpBlob::attempt(Connection& c, Transfer& t, Clock::time_point deadline) {
  CURL* h = c.easy.get();
  using std::chrono::ceil;
  const long left_ms = std::max<long>(1, ceil<milliseconds>(deadline - Clock::now()).count());
  const long connect_ms = std::min<long>(left_ms, options_.connect_timeout.count());
  const std::string range =
      fmt::format("{}-{}", t.offset, t.offset + std::max<size_t>(t.dest.size(), 1) - 1);
  CURLcode rc = curl_easy_setopt(h, CURLOPT_RANGE, range.c_str());
  if (rc == CURLE_OK) rc = curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, left_ms);
  if (rc == CURLE_OK) rc = curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
  if (rc == CURLE_OK) rc = curl_easy_setopt(h, CURLOPT_HEADERDATA, &t);
  if (rc == CURLE_OK) rc = curl_easy_setopt(h, CURLOPT_WRITEDATA, &t);
  if (rc == CURLE_OK) rc = curl_easy_setopt(h, CURLOPT_XFERINFODATA, &t);
  if (rc != CURLE_OK)
    return permanent(EIO, std::string("curl_easy_setopt: ") + curl_easy_strerror(rc));
  c.error[0] = '\0';
  requests_.fetch_add(1, std::memory_order_relaxed);
  rc = curl_easy_perform(h);
  // The handle outlives this Transfer: leave it no pointer to it.
  curl_easy_setopt(h, CURLOPT_HEADERDATA, nullptr);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, nullptr);
  curl_easy_setopt(h, CURLOPT_XFERINFODATA, nullptr);
  // A 200 or 206 with an empty body never reached on_body: check its headers here.
  if (!t.failure && !t.body_checked && (t.resp.status == 200 || t.resp.status == 206)) {
    t.body_checked = true;
    t.failure = check_body_start(t);
  }
  // An empty object: nginx and S3 answer 416 with "Content-Range: bytes */0".
  const auto& cr = t.resp.content_range;
  if (t.phase == Phase::Open && t.resp.status == 416 && cr && cr->total == 0)
    t.failure = check_identity(t, 0);
  if (t.failure) return std::move(t.failure);
  return judge(rc, c, t);
}

// What a finished attempt amounts to, when no callback found a failure.
std::optional<Failure> HttpBlob::judge(CURLcode rc, const Connection& c, const Transfer& t) const {
  if (rc == CURLE_ABORTED_BY_CALLBACK) return interrupted();  // only on_progress aborts
  const long s = t.resp.status;
  if (s == 200 || s == 206) {
    if (t.cut_on_purpose) return std::nullopt;  // the CURLE_WRITE_ERROR we caused
    // Once the buffer is full, what happened to the rest of the transfer does not matter.
    if (t.filled == t.dest.size() || t.object_empty) return std::nullopt;
    if (rc == CURLE_OK)
      return transient(
          EIO, fmt::format("the response ended after {} of {} bytes", t.filled, t.dest.size()));
  } else if (rc == CURLE_TOO_MANY_REDIRECTS) {
    return permanent(EIO, fmt::format("more than {} redirects", kRedirectsMax));
  } else if (s >= 400 || (rc == CURLE_OK && s != 0)) {
    // A failed transfer of an error response (we cut long ones) is still that error; a
    // failed transfer after a 3xx is the redirect target's failure, judged below.
    if (t.phase == Phase::Open && s == 416 && t.object_empty) return std::nullopt;
    return status_failure(t);
  }
  std::string what = curl_easy_strerror(rc);
  if (c.error[0] != '\0') what = fmt::format("{} ({})", what, c.error);
  switch (rc) {
    case CURLE_OK:  // only when no status line came at all
      return transient(EIO, "no HTTP response");
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
      if (t.phase == Phase::Open) return permanent(ECONNREFUSED, what);
      return transient(ECONNREFUSED, what);
    case CURLE_OPERATION_TIMEDOUT:
      return transient(ETIMEDOUT, what);
    case CURLE_SSL_CONNECT_ERROR:
      // At open: `https://` to a server that speaks no TLS there (or none we accept).
      // Later the server has spoken TLS with us: a failed handshake is a reset or a
      // restart, worth another try.
      if (t.phase == Phase::Open) return permanent(EPROTO, what);
      return transient(EIO, what);
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_NOT_BUILT_IN:
    case CURLE_OUT_OF_MEMORY:
      return permanent(EIO, what);
    default:  // cut connections, partial bodies, HTTP/2 stream errors, ...
      if (is_tls_config_error(rc)) return permanent(EACCES, what);
      return transient(EIO, what);
  }
}

Failure HttpBlob::status_failure(const Transfer& t) const {
  const Response& r = t.resp;
  const long s = r.status;
  if (s == 416) {
    if (t.phase == Phase::Read && r.content_range && r.content_range->total &&
        *r.content_range->total != size_)
      return permanent(ESTALE, fmt::format("the object changed while being read (now {} bytes, "
                                           "was {})",
                                           *r.content_range->total, size_));
    return permanent(EINVAL, status_text(r) + ": range not satisfiable");
  }
  if (s == 408 || s == 429 || (s >= 500 && s <= 599)) return transient(EIO, status_text(r));
  if (s == 404 || s == 410) return permanent(ENOENT, status_text(r));
  if (s == 401 || s == 403) return permanent(EACCES, status_text(r));
  if (s >= 400 && s <= 499) return permanent(EIO, status_text(r));
  return permanent(EIO, "unexpected " + status_text(r));
}

// Called when the body of a 200 or 206 begins: is it the bytes we asked for, of the
// object we opened?
std::optional<Failure> HttpBlob::check_body_start(Transfer& t) {
  const Response& r = t.resp;
  if (!r.content_encoding.empty() && !iequals(r.content_encoding, "identity"))
    return permanent(EIO, fmt::format("{}: the body is encoded (Content-Encoding: {})",
                                      status_text(r), r.content_encoding));
  if (r.status == 206) {
    const auto& cr = r.content_range;
    if (!cr || !cr->first)
      return transient(EIO, fmt::format("{} without a usable Content-Range", status_text(r)));
    if (!cr->total)
      return permanent(EIO, fmt::format("{} gives no total size (Content-Range: bytes {}-{}/*)",
                                        status_text(r), *cr->first, *cr->last));
    if (auto f = check_identity(t, *cr->total)) return f;
    if (*cr->first != t.offset || *cr->last != t.offset + t.dest.size() - 1)
      return transient(
          EIO, fmt::format("{} for bytes {}-{}/{}, asked for {}", status_text(r), *cr->first,
                           *cr->last, *cr->total, range_text(t.offset, t.dest.size())));
    t.body_pos = *cr->first;
    return std::nullopt;
  }
  // A 200 is the whole object from its first byte.
  if (!warned_ranges_ignored_.exchange(true))
    LOG_WARN(
        "{}: the server does not honour range requests; every read downloads the object "
        "from its start up to the range",
        url_);
  if (r.content_length) {
    if (auto f = check_identity(t, *r.content_length)) return f;
  } else if (t.phase == Phase::Open) {
    return permanent(EIO, fmt::format("{} ignores the range and has no Content-Length: the "
                                      "size is unknown",
                                      status_text(r)));
  }
  t.body_pos = 0;
  return std::nullopt;
}

// At open, remembers the object's size and identity; later, compares with them.
std::optional<Failure> HttpBlob::check_identity(Transfer& t, uint64_t total) {
  const Response& r = t.resp;
  if (t.phase == Phase::Open) {
    size_ = total;
    etag_ = r.etag;
    last_modified_ = r.last_modified;
    t.object_empty = total == 0;
    return std::nullopt;
  }
  std::string change;
  if (total != size_)
    change = fmt::format("now {} bytes, was {}", total, size_);
  else if (!etag_.empty() && !r.etag.empty() && r.etag != etag_)
    change = fmt::format("ETag {}, was {}", r.etag, etag_);
  else if (etag_.empty() && !last_modified_.empty() && !r.last_modified.empty() &&
           r.last_modified != last_modified_)
    change = fmt::format("Last-Modified {}, was {}", r.last_modified, last_modified_);
  if (change.empty()) return std::nullopt;
  return permanent(ESTALE, "the object changed while being read (" + change + ")");
}

size_t HttpBlob::on_header(char* data, size_t size, size_t count, void* user) {
  auto& t = *static_cast<Transfer*>(user);
  const size_t n = size * count;
  const std::string_view line = trim(std::string_view(data, n));
  auto keep = [](std::string_view v) { return std::string(v.substr(0, kHeaderValueBytesMax)); };
  if (line.starts_with("HTTP/")) {  // a new response (after a redirect or a 100): start over
    t.resp = Response{};
    const size_t sp = line.find(' ');
    if (sp != std::string_view::npos && line.size() >= sp + 4) {
      t.resp.status = static_cast<long>(parse_u64(line.substr(sp + 1, 3)).value_or(0));
      t.resp.reason = keep(trim(line.substr(sp + 4)));
    }
    return n;
  }
  const size_t colon = line.find(':');
  if (colon == std::string_view::npos) return n;
  const std::string_view name = line.substr(0, colon), value = trim(line.substr(colon + 1));
  if (iequals(name, "content-range"))
    t.resp.content_range = parse_content_range(value);
  else if (iequals(name, "content-length"))
    t.resp.content_length = parse_u64(value);
  else if (iequals(name, "etag"))
    t.resp.etag = keep(value);
  else if (iequals(name, "last-modified"))
    t.resp.last_modified = keep(value);
  else if (iequals(name, "content-encoding"))
    t.resp.content_encoding = keep(value);
  return n;
}

// libcurl's progress callback: a non-zero return aborts the transfer
// (CURLE_ABORTED_BY_CALLBACK). libcurl calls it at least about once a second, also while
// nothing arrives.
int HttpBlob::on_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  return user && static_cast<Transfer*>(user)->blob->interrupted_ ? 1 : 0;
}

curl_socket_t HttpBlob::on_open_socket(void* user, curlsocktype, curl_sockaddr* a) {
  auto* b = static_cast<HttpBlob*>(user);
  std::lock_guard lock(b->sockets_mu_);
  if (b->interrupted_) return CURL_SOCKET_BAD;
  const curl_socket_t fd = ::socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
  if (fd != CURL_SOCKET_BAD) b->sockets_.insert(fd);
  return fd;
}

int HttpBlob::on_close_socket(void* user, curl_socket_t fd) {
  auto* b = static_cast<HttpBlob*>(user);
  std::lock_guard lock(b->sockets_mu_);
  b->sockets_.erase(fd);
  return ::close(fd);
}

bool HttpBlob::wait_unless_interrupted(milliseconds d) {
  std::unique_lock lock(interrupt_mu_);
  return !interrupt_cv_.wait_for(lock, d, [&] { return interrupted_.load(); });
}

// Copies the wanted part of the body into t.dest. Returning less than `n` makes libcurl
// stop the transfer with CURLE_WRITE_ERROR; t.failure or t.cut_on_purpose says why.
size_t HttpBlob::on_body(char* data, size_t size, size_t count, void* user) {
  auto& t = *static_cast<Transfer*>(user);
  const size_t n = size * count;
  constexpr size_t kStop = 0;
  t.blob->bytes_received_.fetch_add(n, std::memory_order_relaxed);
  const long s = t.resp.status;
  if (s != 200 && s != 206) {  // an error's body: read a little for the connection's sake
    t.error_body_bytes += n;
    return t.error_body_bytes <= kErrorBodyBytesMax ? n : kStop;
  }
  if (!t.body_checked) {
    t.body_checked = true;
    t.failure = t.blob->check_body_start(t);
    if (t.failure) return kStop;
  }
  // A checked 206 starts at the wanted offset and a 200 at 0, so no byte is skipped.
  const uint64_t pos = t.body_pos, want = t.offset + t.filled;
  IMG_CHECK(pos <= want);
  t.body_pos += n;
  if (pos + n <= want) return n;  // before the range (a 200): discard
  const size_t skip = want - pos;
  const size_t take = std::min<size_t>(n - skip, t.dest.size() - t.filled);
  std::memcpy(t.dest.data() + t.filled, data + skip, take);
  t.filled += take;
  const bool more_body =
      skip + take < n ||
      (s == 200 && (!t.resp.content_length || *t.resp.content_length > t.body_pos));
  if (t.filled == t.dest.size() && more_body) {
    t.cut_on_purpose = true;  // we have the range; the rest of the object is not needed
    return kStop;
  }
  return n;
}

}  // namespace

Result<std::unique_ptr<BlobReader>> open_http_blob(const std::string& url, const BlobOptions& o) {
  return HttpBlob::open(url, o);
}

}  // namespace imgstream::blob
