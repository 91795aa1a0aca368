#include "source/nbd_source.h"

#include <fmt/format.h>
#include <libnbd.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <thread>
#include <unordered_map>
#include <utility>

#include "base/check.h"
#include "base/log.h"
#include "base/stop.h"
#include "base/unique_fd.h"

namespace imgstream::source {

// ---- Requests -----------------------------------------------------------------------
//
// A read_async is split into pieces of at most the server's maximum request size; each
// piece is a Request that lives on its own (retried, timed out) and a Group counts the
// pieces still out. A block_status is one Request in a Group of one.
//
// Where a Request is, and who moves it (every move of a queued/delayed request is under
// mu_; an on-wire request belongs to its connection's I/O thread alone):
//
//   state     held in                   next
//   queued    queue_                    on-wire (a ready connection has a free slot)
//                                       ended   (io deadline passed, fatal error, close)
//   on-wire   Connection::in_flight_    ended   (success; permanent error; failure after
//                                                the io deadline)
//                                       delayed (the server failed it: EIO, ...)
//                                       queued  (connection lost or request_timeout, only
//                                                after nbd_close: libnbd has let go of
//                                                the buffer)
//   delayed   delayed_                  queued  (its retry time came)
//                                       ended   (io deadline passed, fatal error, close)
//   ended     -                         Group done() once its last piece has ended

enum class Kind { Read, BlockStatus };

struct NbdSource::Group {
  ReadDone done;
  std::mutex mu;
  size_t remaining = 0;
  std::optional<Error> error;  // the first error of any piece
};

struct NbdSource::Request {
  Kind kind = Kind::Read;
  uint64_t offset = 0;
  uint64_t length = 0;
  std::byte* buf = nullptr;                    // Read: length bytes
  std::vector<Extent>* extents_out = nullptr;  // BlockStatus: where the answer goes
  std::shared_ptr<Group> group;
  Clock::time_point started;
  Clock::time_point deadline;  // started + io_timeout
  unsigned server_errors = 0;  // how often the server failed it (sets the retry delay)
  std::string last_error;      // why it was last sent again, for the timeout message
  std::optional<Error> error;  // set when it ends in failure
  // While on the wire:
  uint64_t wire_id = 0;  // this sending's number on its connection
  Clock::time_point sent_at;
  std::vector<Extent> extents;  // BlockStatus: gathered by the extent callback
};

namespace {

std::string seconds(std::chrono::milliseconds d) {
  return fmt::format("{:g} s", static_cast<double>(d.count()) / 1000.0);
}

// Errors that will be the same however often we ask: the request itself is wrong.
bool is_permanent(int err) {
  return err == EINVAL || err == ERANGE || err == EOVERFLOW || err == ENOTSUP || err == EOPNOTSUPP;
}

std::string nbd_error_text() {
  const char* e = nbd_get_error();
  return e ? e : "unknown libnbd error";
}

}  // namespace

// ---- Connection ---------------------------------------------------------------------
//
// One libnbd handle and the I/O thread that owns it. States:
//
//   state       handle   next
//   backoff     none     connecting  (retry_at_ reached)
//   connecting  yes      ready       (handshake done, same image)
//                        backoff     (handshake failed, or connect_deadline_ passed)
//                        failed      (a different image; or the first connection of the
//                                     source failed: open() reports it)
//   ready       yes      backoff     (error, disconnect, a command older than
//                                     request_timeout)
//                        failed      (another connection found a different image)
//   failed      none     -           (waits for close())
//
// libnbd calls its callbacks with the handle's lock held, from inside whatever nbd_* call
// made progress. The callbacks therefore only record what happened (completed_); the
// loop acts on it after the call has returned.

class NbdSource::Connection {
 public:
  Connection(NbdSource& src, unsigned index)
      : src_(src), index_(index), rng_(std::random_device{}()) {}
  ~Connection() { IMG_CHECK(!thread_.joinable()); }

  Result<void> init() {
    int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0) return Error::from_errno(errno, "eventfd");
    wake_fd_.reset(fd);
    return ok();
  }
  void start() {
    thread_ = std::thread([this] { run(); });
  }
  bool started() const { return thread_.joinable(); }
  void join() {
    if (thread_.joinable()) thread_.join();
  }
  void wake() {
    uint64_t one = 1;
    ssize_t n = ::write(wake_fd_.get(), &one, sizeof one);
    (void)n;  // EAGAIN: the counter is already non-zero, the thread will wake anyway
  }

 private:
  enum class State { Backoff, Connecting, Ready, Failed };
  // What libnbd's callbacks get: which connection, and which sending of a request. Freed
  // by libnbd (completion .free) once neither callback can run again.
  struct Ticket {
    Connection* conn;
    uint64_t wire_id;
  };

  void run();
  Clock::time_point sync_with_source(Clock::time_point now);
  void issue(RequestPtr r, Clock::time_point now);
  void wait_and_notify(Clock::time_point until);
  void process_completions();
  void check_handle(Clock::time_point now);
  void check_timeouts(Clock::time_point now);
  void start_connect(Clock::time_point now);
  void handshake_done();
  // err: the errno for open() when this was the source's first connection attempt.
  void connect_failed(int err, std::string reason, Clock::time_point now);
  void lose_connection(std::string reason, Clock::time_point now);
  std::vector<RequestPtr> close_handle();
  void backoff(Clock::time_point now);
  void give_back(std::vector<RequestPtr> requests, const std::string& reason, bool delay);
  std::string describe() const { return fmt::format("nbd source {}", src_.uri_); }

  static int on_complete(void* user_data, int* error);
  static int on_extents(void* user_data, const char* context, uint64_t offset, uint32_t* entries,
                        size_t nr_entries, int* error);
  static void free_ticket(void* user_data) { delete static_cast<Ticket*>(user_data); }

  NbdSource& src_;
  const unsigned index_;
  UniqueFd wake_fd_;
  std::thread thread_;

  // The I/O thread's own:
  nbd_handle* h_ = nullptr;
  State state_ = State::Backoff;
  bool ever_ready_ = false;
  Clock::time_point retry_at_{};
  Clock::time_point connect_deadline_{};
  std::chrono::milliseconds backoff_ = kNbdReconnectBackoffMin;
  uint64_t next_wire_id_ = 1;
  std::unordered_map<uint64_t, RequestPtr> in_flight_;  // by wire_id
  std::vector<std::pair<uint64_t, int>> completed_;     // (wire_id, errno) from callbacks
  std::minstd_rand rng_;
};

void NbdSource::Connection::run() {
  for (;;) {
    Clock::time_point now = Clock::now();
    if (state_ == State::Backoff && now >= retry_at_) start_connect(now);
    if (state_ == State::Connecting && now >= connect_deadline_)
      connect_failed(ETIMEDOUT,
                     fmt::format("no handshake within {}", seconds(src_.options_.request_timeout)),
                     now);
    if (state_ == State::Ready) check_timeouts(now);
    Clock::time_point until = sync_with_source(now);
    if (until == Clock::time_point::min()) break;  // stopping
    wait_and_notify(until);
  }
  // close(): the requests this connection had on the wire go back to the queue, where
  // close() fails them with the rest.
  std::vector<RequestPtr> back = close_handle();
  std::lock_guard lock(src_.mu_);
  for (auto& r : back) src_.queue_.push_back(std::move(r));
}

// Takes new requests when ready, lets the source expire and release what waits, and
// returns when the loop must next wake up (min() to stop).
NbdSource::Clock::time_point NbdSource::Connection::sync_with_source(Clock::time_point now) {
  std::vector<RequestPtr> take, finished;
  bool wake = false;
  Clock::time_point until;
  std::optional<Error> fatal;
  {
    std::lock_guard lock(src_.mu_);
    if (src_.stopping_) return Clock::time_point::min();
    if (src_.fatal_ && state_ != State::Failed) fatal = src_.fatal_;
    until = src_.expire_and_release_locked(now, wake, finished);
    if (state_ == State::Ready) {
      while (in_flight_.size() + take.size() < src_.options_.max_in_flight &&
             !src_.queue_.empty()) {
        take.push_back(std::move(src_.queue_.front()));
        src_.queue_.pop_front();
      }
    }
  }
  if (fatal) {
    // Another connection found that the server now serves a different image.
    for (auto& r : close_handle()) {
      r->error = *fatal;
      finished.push_back(std::move(r));
    }
    state_ = State::Failed;
  }
  if (wake) src_.wake_all();
  for (auto& r : finished) src_.finish(std::move(r));
  for (auto& r : take) issue(std::move(r), now);
  process_completions();
  check_handle(now);

  if (state_ == State::Backoff) until = std::min(until, retry_at_);
  if (state_ == State::Connecting) until = std::min(until, connect_deadline_);
  for (const auto& [id, r] : in_flight_)
    until = std::min(until, r->sent_at + src_.options_.request_timeout);
  return until;
}

void NbdSource::Connection::issue(RequestPtr r, Clock::time_point now) {
  // Nothing in a batch changes the state: a handle that dies mid-batch is noticed after.
  IMG_CHECK(state_ == State::Ready);
  r->wire_id = next_wire_id_++;
  r->sent_at = now;
  r->extents.clear();
  Request* req = r.get();
  in_flight_.emplace(req->wire_id, std::move(r));

  auto* ticket = new Ticket{this, req->wire_id};
  nbd_completion_callback done{.callback = on_complete, .user_data = ticket, .free = free_ticket};
  int64_t cookie;
  if (req->kind == Kind::Read) {
    cookie = nbd_aio_pread(h_, req->buf, req->length, req->offset, done, 0);
  } else {
    nbd_extent_callback extents{.callback = on_extents, .user_data = ticket, .free = nullptr};
    cookie = nbd_aio_block_status(h_, req->length, req->offset, extents, done, 0);
  }
  if (cookie != -1) return;

  // Refused before it reached the wire. Either the handle is dead (check_handle will see
  // it; the request is sent again on the next connection) or libnbd found the request
  // invalid, which no retry will fix.
  int err = nbd_get_errno();
  std::string text = nbd_error_text();
  auto node = in_flight_.extract(req->wire_id);
  std::erase_if(completed_, [&](const auto& c) { return c.first == req->wire_id; });
  RequestPtr back = std::move(node.mapped());
  if (nbd_aio_is_ready(h_) || nbd_aio_is_processing(h_)) {
    if (is_permanent(err) || err == 0) {
      back->error =
          Error{err ? err : EINVAL, fmt::format("{}: {} at {}: {}", describe(),
                                                back->kind == Kind::Read ? "read" : "block status",
                                                back->offset, text)};
      src_.finish(std::move(back));
      return;
    }
  }
  std::vector<RequestPtr> one;
  one.push_back(std::move(back));
  give_back(std::move(one), text, false);
}

int NbdSource::Connection::on_complete(void* user_data, int* error) {
  auto* t = static_cast<Ticket*>(user_data);
  t->conn->completed_.emplace_back(t->wire_id, *error);
  return 1;  // retire the command: we never call nbd_aio_command_completed
}

int NbdSource::Connection::on_extents(void* user_data, const char* context, uint64_t,
                                      uint32_t* entries, size_t nr_entries, int*) {
  auto* t = static_cast<Ticket*>(user_data);
  if (std::strcmp(context, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0) return 0;
  auto it = t->conn->in_flight_.find(t->wire_id);
  if (it == t->conn->in_flight_.end()) return 0;
  Request& r = *it->second;
  // Keep the answer inside the range asked: the server may describe more.
  uint64_t covered = 0;
  for (const auto& e : r.extents) covered += e.length;
  for (size_t i = 0; i + 1 < nr_entries && covered < r.length; i += 2) {
    uint64_t len = std::min<uint64_t>(entries[i], r.length - covered);
    if (len == 0) continue;
    r.extents.push_back(Extent{len, entries[i + 1] & (kStateHole | kStateZero)});
    covered += len;
  }
  return 0;
}

// Waits in poll() for the socket (in the direction libnbd wants) or the eventfd, then
// lets libnbd make progress.
void NbdSource::Connection::wait_and_notify(Clock::time_point until) {
  pollfd fds[2] = {{.fd = wake_fd_.get(), .events = POLLIN, .revents = 0},
                   {.fd = -1, .events = 0, .revents = 0}};
  if (h_) {
    unsigned dir = nbd_aio_get_direction(h_);
    int fd = nbd_aio_get_fd(h_);
    if (fd >= 0 && dir != 0) {
      fds[1].fd = fd;
      if (dir & LIBNBD_AIO_DIRECTION_READ) fds[1].events |= POLLIN;
      if (dir & LIBNBD_AIO_DIRECTION_WRITE) fds[1].events |= POLLOUT;
    }
  }
  int timeout_ms = -1;
  if (until != Clock::time_point::max()) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(until - Clock::now()).count();
    // Wake at least once a minute; the loop recomputes everything anyway.
    timeout_ms = static_cast<int>(std::clamp<int64_t>(left, 0, 60'000));
  }
  int n = ::poll(fds, fds[1].fd >= 0 ? 2 : 1, timeout_ms);
  if (n < 0) {
    IMG_CHECK_MSG(errno == EINTR, "poll");
    return;
  }
  if (fds[0].revents) {
    uint64_t count;
    ssize_t unused = ::read(wake_fd_.get(), &count, sizeof count);
    (void)unused;
  }
  if (fds[1].fd < 0 || fds[1].revents == 0) return;
  // The direction again: issuing a command may have changed it since poll() began.
  unsigned dir = nbd_aio_get_direction(h_);
  short ev = fds[1].revents;
  int r = 0;
  if ((dir & LIBNBD_AIO_DIRECTION_READ) && (ev & (POLLIN | POLLHUP | POLLERR)))
    r = nbd_aio_notify_read(h_);
  else if ((dir & LIBNBD_AIO_DIRECTION_WRITE) && (ev & (POLLOUT | POLLHUP | POLLERR)))
    r = nbd_aio_notify_write(h_);
  std::string failure = r == -1 ? nbd_error_text() : std::string();
  int failure_errno = r == -1 && nbd_get_errno() ? nbd_get_errno() : EIO;
  Clock::time_point now = Clock::now();
  process_completions();
  if (r == -1) {
    if (state_ == State::Connecting)
      connect_failed(failure_errno, failure, now);
    else
      lose_connection(failure, now);
    return;
  }
  check_handle(now);
}

// Acts on what the callbacks recorded.
void NbdSource::Connection::process_completions() {
  if (completed_.empty()) return;
  bool dead = h_ == nullptr || nbd_aio_is_dead(h_) || nbd_aio_is_closed(h_);
  std::vector<RequestPtr> requeue, delay;
  std::vector<std::pair<uint64_t, int>> done;
  done.swap(completed_);
  for (auto [wire_id, err] : done) {
    auto node = in_flight_.extract(wire_id);
    if (node.empty()) continue;  // from a sending we have already given up on
    RequestPtr r = std::move(node.mapped());
    if (err == 0 && r->kind == Kind::BlockStatus && r->extents.empty()) err = EIO;
    if (err == 0) {
      backoff_ = kNbdReconnectBackoffMin;  // the connection works
      src_.finish(std::move(r));
    } else if (is_permanent(err) && !dead) {
      r->error = Error::from_errno(
          err, fmt::format("{}: {} at {}", describe(),
                           r->kind == Kind::Read ? "read" : "block status", r->offset));
      src_.finish(std::move(r));
    } else {
      r->last_error = dead ? "connection lost" : errno_text(err);
      (dead ? requeue : delay).push_back(std::move(r));
    }
  }
  give_back(std::move(requeue), "connection lost", false);
  give_back(std::move(delay), "", true);
}

// Hands requests back to the source: to the queue (sent again at once, by whichever
// connection is ready) or to the delayed set (a server error: wait a little first).
void NbdSource::Connection::give_back(std::vector<RequestPtr> requests, const std::string& reason,
                                      bool delay) {
  if (requests.empty()) return;
  std::vector<RequestPtr> finished;
  bool wake = false;
  Clock::time_point now = Clock::now();
  {
    std::lock_guard lock(src_.mu_);
    for (auto& r : requests) {
      if (!reason.empty()) r->last_error = reason;
      if (delay)
        src_.delay_locked(std::move(r), now, wake, finished);
      else
        src_.requeue_locked(std::move(r), now, wake, finished);
    }
  }
  if (wake) src_.wake_all();
  for (auto& r : finished) src_.finish(std::move(r));
}

// After any call that may have moved the state machine: did the handshake end, did the
// connection die?
void NbdSource::Connection::check_handle(Clock::time_point now) {
  if (!h_) return;
  if (state_ == State::Connecting) {
    if (nbd_aio_is_ready(h_))
      handshake_done();
    else if (!nbd_aio_is_connecting(h_))
      connect_failed(EIO, "handshake failed", now);
  } else if (state_ == State::Ready) {
    // A server that goes away between replies leaves the handle closed (end of file)
    // without any call failing.
    if (nbd_aio_is_closed(h_))
      lose_connection("the server closed the connection", now);
    else if (nbd_aio_is_dead(h_))
      lose_connection("the connection failed", now);
  }
}

void NbdSource::Connection::check_timeouts(Clock::time_point now) {
  for (const auto& [id, r] : in_flight_) {
    if (now - r->sent_at >= src_.options_.request_timeout) {
      lose_connection(fmt::format("{} at {} unanswered after {}",
                                  r->kind == Kind::Read ? "read" : "block status", r->offset,
                                  seconds(src_.options_.request_timeout)),
                      now);
      return;
    }
  }
}

void NbdSource::Connection::start_connect(Clock::time_point now) {
  IMG_CHECK(h_ == nullptr);
  h_ = nbd_create();
  if (!h_) return connect_failed(ENOMEM, "nbd_create: " + nbd_error_text(), now);
  // pread_initialize off: libnbd would zero every buffer before each read; we never look
  // at a buffer whose read failed.
  if (nbd_set_request_structured_replies(h_, true) == -1 ||
      nbd_add_meta_context(h_, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1 ||
      nbd_set_pread_initialize(h_, false) == -1 ||
      nbd_set_handle_name(h_, fmt::format("imgstream-{}", index_).c_str()) == -1 ||
      nbd_aio_connect_uri(h_, src_.uri_.c_str()) == -1) {
    int err = nbd_get_errno();
    return connect_failed(err ? err : EIO, nbd_error_text(), now);
  }
  state_ = State::Connecting;
  connect_deadline_ = now + src_.options_.request_timeout;
  check_handle(now);  // a unix socket may be through the handshake's first steps already
}

void NbdSource::Connection::handshake_done() {
  ImageInfo info;
  info.size = static_cast<uint64_t>(nbd_get_size(h_));
  int64_t max = nbd_get_block_size(h_, LIBNBD_SIZE_MAXIMUM);
  if (max > 0) info.request_bytes_max = std::min<uint64_t>(max, kNbdRequestBytesMax);
  info.base_allocation = nbd_can_meta_context(h_, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
  info.multi_conn = nbd_can_multi_conn(h_) == 1;
  std::vector<RequestPtr> failed;
  auto r = src_.on_connected(info, failed);
  for (auto& f : failed) src_.finish(std::move(f));
  if (!r) {
    if (r.error().code != EINTR) LOG_ERROR("{}", r.error().message);
    close_handle();
    state_ = State::Failed;
    return;
  }
  state_ = State::Ready;
  src_.ready_.fetch_add(1, std::memory_order_relaxed);
  if (ever_ready_) {
    src_.reconnects_.fetch_add(1, std::memory_order_relaxed);
    LOG_INFO("{}: connection {} is back", describe(), index_);
  }
  ever_ready_ = true;
}

void NbdSource::Connection::connect_failed(int err, std::string reason, Clock::time_point now) {
  close_handle();
  std::string text = fmt::format("{}: connect: {}", describe(), reason);
  if (index_ == 0 && !ever_ready_) {
    // open() is waiting for this one: it reports the error, nothing retries.
    state_ = State::Failed;
    src_.on_first_connect_failed(Error{err, std::move(text)});
    return;
  }
  LOG_DEBUG("{}", text);
  {
    std::lock_guard lock(src_.mu_);
    src_.last_connection_error_ = "connect: " + reason;
  }
  backoff(now);
}

void NbdSource::Connection::lose_connection(std::string reason, Clock::time_point now) {
  LOG_WARN("{}: connection {} lost ({}); reconnecting", describe(), index_, reason);
  {
    std::lock_guard lock(src_.mu_);
    src_.last_connection_error_ = reason;
  }
  std::vector<RequestPtr> back = close_handle();
  give_back(std::move(back), reason, false);
  backoff(now);
}

// Closes the handle (libnbd can no longer touch any buffer) and returns the requests
// that were on the wire.
std::vector<NbdSource::RequestPtr> NbdSource::Connection::close_handle() {
  if (h_) {
    nbd_close(h_);
    h_ = nullptr;
  }
  // Callbacks that ran inside nbd_close (or before, for a connection that died) are about
  // sendings we give up on now.
  completed_.clear();
  if (state_ == State::Ready) src_.ready_.fetch_sub(1, std::memory_order_relaxed);
  if (state_ == State::Ready || state_ == State::Connecting) state_ = State::Backoff;
  std::vector<RequestPtr> back;
  back.reserve(in_flight_.size());
  for (auto& [id, r] : in_flight_) back.push_back(std::move(r));
  in_flight_.clear();
  return back;
}

void NbdSource::Connection::backoff(Clock::time_point now) {
  // Jitter in [50%, 100%] of the backoff, so that many clients of one server that went
  // away do not all come back at the same instant.
  std::uniform_int_distribution<int64_t> jitter(backoff_.count() / 2, backoff_.count());
  retry_at_ = now + std::chrono::milliseconds(jitter(rng_));
  backoff_ = std::min(backoff_ * 2, std::chrono::milliseconds(kNbdReconnectBackoffMax));
  state_ = State::Backoff;
}

// ---- NbdSource ----------------------------------------------------------------------

NbdSource::NbdSource(std::string uri, const NbdSourceOptions& options)
    : uri_(std::move(uri)), options_(options) {}

NbdSource::~NbdSource() {
  close();
}

Result<std::unique_ptr<NbdSource>> NbdSource::open(const std::string& uri,
                                                   const NbdSourceOptions& options) {
  auto bad = [&](std::string_view what) {
    return Error::invalid(fmt::format("nbd source {}: {}", uri, what));
  };
  if (options.io_timeout.count() <= 0 || options.request_timeout.count() <= 0)
    return bad("timeouts must be positive");
  if (options.max_in_flight < 1 || options.max_in_flight > kNbdMaxInFlightMax)
    return bad(fmt::format("max_in_flight must be 1..{}", kNbdMaxInFlightMax));
  if (options.connections < 1 || options.connections > kNbdConnectionsMax)
    return bad(fmt::format("connections must be 1..{}", kNbdConnectionsMax));

  std::unique_ptr<NbdSource> src(new NbdSource(uri, options));
  for (unsigned i = 0; i < options.connections; ++i) {
    auto c = std::make_unique<Connection>(*src, i);
    TRY_CTX(c->init(), "nbd source " + uri);
    src->connections_.push_back(std::move(c));
  }
  // Only while open() waits (see the header), once the connections exist: interrupt()
  // wakes them. Runs at once when a stop was asked for already. Destroyed before `src`
  // (declared after it), waiting for a callback running on another thread.
  StopCallback on_stop([p = src.get()] { p->interrupt(); });
  src->connections_[0]->start();
  Result<void> first;
  {
    std::unique_lock lock(src->mu_);
    // The connection gives up by itself after request_timeout; the margin only guards
    // against a bug leaving open() stuck.
    bool answered =
        src->first_connect_cv_.wait_for(lock, options.request_timeout + std::chrono::seconds(5),
                                        [&] { return src->first_connect_.has_value(); });
    first = answered ? *src->first_connect_
                     : Result<void>(Error{ETIMEDOUT, "nbd source " + uri + ": connect: timed out"});
  }
  // A stop that came after the handshake (fatal_ is set) fails open() all the same.
  if (auto fatal = src->fatal_error(); first && fatal && fatal->code == EINTR) first = *fatal;
  if (!first) {
    src->close();
    return std::move(first).error();
  }
  // Read-only clients could always open more connections; we wait for the server to say
  // that it is built for them (multi-conn), as libnbd's documentation advises.
  if (src->multi_conn_)
    for (unsigned i = 1; i < options.connections; ++i) src->connections_[i]->start();
  return src;
}

Result<void> NbdSource::on_connected(const ImageInfo& info, std::vector<RequestPtr>& failed) {
  std::lock_guard lock(mu_);
  if (fatal_) return *fatal_;  // interrupted (or another connection found another image)
  if (!first_connect_) {
    size_ = info.size;
    request_bytes_max_ = info.request_bytes_max;
    base_allocation_ = info.base_allocation;
    multi_conn_ = info.multi_conn;
    first_connect_ = ok();
    first_connect_cv_.notify_all();
    return ok();
  }
  if (info.size == size_) {
    if (info.request_bytes_max < request_bytes_max_)
      LOG_WARN("nbd source {}: the server now takes requests of at most {} bytes, not {}", uri_,
               info.request_bytes_max, request_bytes_max_);
    return ok();
  }
  // The same URI now serves another image: reading on would mix two images' blocks.
  fatal_ = Error{ESTALE, fmt::format("nbd source {}: the server now serves {} bytes, not {}: "
                                     "a different image",
                                     uri_, info.size, size_)};
  for (auto& r : queue_) failed.push_back(std::move(r));
  queue_.clear();
  for (auto& [t, r] : delayed_) failed.push_back(std::move(r));
  delayed_.clear();
  for (auto& r : failed) r->error = *fatal_;
  // Connections that are still up must let go of their requests too.
  wake_all();
  return *fatal_;
}

void NbdSource::on_first_connect_failed(Error e) {
  std::lock_guard lock(mu_);
  if (first_connect_) return;  // interrupt() answered open() already
  first_connect_ = std::move(e);
  first_connect_cv_.notify_all();
}

void NbdSource::interrupt() {
  std::vector<RequestPtr> failed;
  {
    std::lock_guard lock(mu_);
    if (stopping_ || fatal_) return;
    // As a fatal error: the connections drop what they have on the wire (nbd_close, so
    // that libnbd lets go of the buffers) and fail it; nothing connects again.
    fatal_ = Error{EINTR, "nbd source " + uri_ + ": interrupted"};
    if (!first_connect_) {
      first_connect_ = *fatal_;
      first_connect_cv_.notify_all();
    }
    for (auto& r : queue_) failed.push_back(std::move(r));
    queue_.clear();
    for (auto& [t, r] : delayed_) failed.push_back(std::move(r));
    delayed_.clear();
  }
  wake_all();
  for (auto& r : failed) {
    r->error = Error{EINTR, "nbd source " + uri_ + ": interrupted"};
    finish(std::move(r));
  }
}

std::optional<Error> NbdSource::fatal_error() const {
  std::lock_guard lock(mu_);
  return fatal_;
}

void NbdSource::read_async(uint64_t offset, std::span<std::byte> buf, ReadDone done) {
  if (offset > size_ || buf.size() > size_ - offset)
    return done(
        Error::invalid(fmt::format("nbd source {}: read at {} of {} bytes is past the "
                                   "end ({} bytes)",
                                   uri_, offset, buf.size(), size_)));
  if (buf.empty()) return done(ok());
  auto group = std::make_shared<Group>();
  group->done = std::move(done);
  group->remaining = (buf.size() + request_bytes_max_ - 1) / request_bytes_max_;
  Clock::time_point now = Clock::now();
  std::vector<RequestPtr> pieces;
  pieces.reserve(group->remaining);
  for (uint64_t at = 0; at < buf.size(); at += request_bytes_max_) {
    auto r = std::make_unique<Request>();
    r->kind = Kind::Read;
    r->offset = offset + at;
    r->length = std::min<uint64_t>(request_bytes_max_, buf.size() - at);
    r->buf = buf.data() + at;
    r->group = group;
    r->started = now;
    r->deadline = now + options_.io_timeout;
    pieces.push_back(std::move(r));
  }
  submit(std::move(pieces));
}

Result<void> NbdSource::block_status(uint64_t offset, uint64_t length, std::vector<Extent>& out) {
  if (length == 0 || offset >= size_ || length > size_ - offset)
    return Error::invalid(
        fmt::format("nbd source {}: block status at {} of {} bytes is past "
                    "the end ({} bytes)",
                    uri_, offset, length, size_));
  length = std::min(length, kNbdBlockStatusBytesMax);
  if (!base_allocation_) {
    out.push_back(Extent{length, 0});
    return ok();
  }
  std::mutex mu;
  std::condition_variable cv;
  std::optional<Result<void>> result;
  std::vector<Extent> extents;
  auto group = std::make_shared<Group>();
  group->remaining = 1;
  group->done = [&](Result<void> r) {
    std::lock_guard lock(mu);
    result = std::move(r);
    cv.notify_one();
  };
  auto r = std::make_unique<Request>();
  r->kind = Kind::BlockStatus;
  r->offset = offset;
  r->length = length;
  r->extents_out = &extents;
  r->group = std::move(group);
  r->started = Clock::now();
  r->deadline = r->started + options_.io_timeout;
  std::vector<RequestPtr> one;
  one.push_back(std::move(r));
  submit(std::move(one));
  // Bounded by the request's own deadline (io_timeout + request_timeout at worst).
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return result.has_value(); });
  if (!*result) return std::move(*result);
  out.insert(out.end(), extents.begin(), extents.end());
  return ok();
}

void NbdSource::submit(std::vector<RequestPtr> requests) {
  bool wake = false;
  {
    std::lock_guard lock(mu_);
    if (!stopping_ && !fatal_) {
      wake = queue_.empty();
      for (auto& r : requests) {
        next_expiry_ = std::min(next_expiry_, r->deadline);
        queue_.push_back(std::move(r));
      }
      requests.clear();
    } else {
      Error e = fatal_ ? *fatal_ : Error{ESHUTDOWN, "nbd source " + uri_ + ": closed"};
      for (auto& r : requests) r->error = e;
    }
  }
  // Waking every connection only when the queue was empty is enough: a connection that
  // does not take a request now takes it when it has a free slot again or is back.
  if (wake) wake_all();
  for (auto& r : requests) finish(std::move(r));
}

void NbdSource::requeue_locked(RequestPtr r, Clock::time_point now, bool& wake,
                               std::vector<RequestPtr>& finished) {
  if (fatal_) {
    r->error = *fatal_;
  } else if (!stopping_ && now >= r->deadline) {
    r->error = timeout_error(*r);
  }
  if (r->error) return finished.push_back(std::move(r));
  retries_.fetch_add(1, std::memory_order_relaxed);
  if (queue_.empty()) wake = true;
  next_expiry_ = std::min(next_expiry_, r->deadline);
  // To the front: it has waited longest.
  queue_.push_front(std::move(r));
}

void NbdSource::delay_locked(RequestPtr r, Clock::time_point now, bool& wake,
                             std::vector<RequestPtr>& finished) {
  ++r->server_errors;
  auto delay = kNbdRetryDelayMin * (1u << std::min(r->server_errors - 1, 10u));
  Clock::time_point at = now + std::min<std::chrono::milliseconds>(delay, kNbdRetryDelayMax);
  if (stopping_ || fatal_ || at >= r->deadline)
    return requeue_locked(std::move(r), now, wake, finished);
  next_expiry_ = std::min(next_expiry_, r->deadline);
  delayed_.emplace(at, std::move(r));
  // Every connection computes its poll timeout from delayed_, but one that sleeps with
  // an older timeout must learn of the new, earlier retry.
  wake = true;
}

NbdSource::Clock::time_point NbdSource::expire_and_release_locked(
    Clock::time_point now, bool& wake, std::vector<RequestPtr>& finished) {
  while (!delayed_.empty() && delayed_.begin()->first <= now) {
    auto node = delayed_.extract(delayed_.begin());
    if (queue_.empty()) wake = true;
    retries_.fetch_add(1, std::memory_order_relaxed);
    queue_.push_front(std::move(node.mapped()));
  }
  if (now >= next_expiry_) {
    next_expiry_ = Clock::time_point::max();
    for (auto& r : queue_) {
      if (now < r->deadline) {
        next_expiry_ = std::min(next_expiry_, r->deadline);
        continue;
      }
      r->error = timeout_error(*r);
      finished.push_back(std::move(r));
    }
    std::erase(queue_, nullptr);
    for (auto it = delayed_.begin(); it != delayed_.end();) {
      if (now < it->second->deadline) {
        next_expiry_ = std::min(next_expiry_, it->second->deadline);
        ++it;
        continue;
      }
      it->second->error = timeout_error(*it->second);
      finished.push_back(std::move(it->second));
      it = delayed_.erase(it);
    }
  }
  Clock::time_point until = Clock::time_point::max();
  if (!queue_.empty() || !delayed_.empty()) until = next_expiry_;
  if (!delayed_.empty()) until = std::min(until, delayed_.begin()->first);
  return until;
}

Error NbdSource::timeout_error(const Request& r) const {
  // The request's own last failure, and what has happened to the connection since.
  std::string reason = r.last_error;
  if (reason.empty())
    reason = last_connection_error_;
  else if (!last_connection_error_.empty() && last_connection_error_ != reason)
    reason += "; then " + last_connection_error_;
  if (reason.empty()) reason = "no connection to the server";
  return Error::io(fmt::format("nbd source {}: {} at {}: {}, gave up after {}", uri_,
                               r.kind == Kind::Read ? "read" : "block status", r.offset, reason,
                               seconds(options_.io_timeout)));
}

void NbdSource::wake_all() {
  for (auto& c : connections_) c->wake();
}

void NbdSource::finish(RequestPtr r) {
  Group& g = *r->group;
  if (!r->error) {
    if (r->kind == Kind::Read)
      bytes_read_.fetch_add(r->length, std::memory_order_relaxed);
    else
      *r->extents_out = std::move(r->extents);
  }
  bool last;
  {
    std::lock_guard lock(g.mu);
    if (r->error && !g.error) g.error = std::move(r->error);
    last = --g.remaining == 0;
  }
  if (!last) return;
  // The group outlives this call (r holds it); done() may free the caller's buffer.
  if (g.error)
    g.done(std::move(*g.error));
  else
    g.done(ok());
}

void NbdSource::close() {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  wake_all();
  for (auto& c : connections_) c->join();
  std::vector<RequestPtr> left;
  {
    std::lock_guard lock(mu_);
    for (auto& r : queue_) left.push_back(std::move(r));
    queue_.clear();
    for (auto& [t, r] : delayed_) left.push_back(std::move(r));
    delayed_.clear();
  }
  for (auto& r : left) {
    r->error =
        Error{ESHUTDOWN, fmt::format("nbd source {}: {} at {}: closed", uri_,
                                     r->kind == Kind::Read ? "read" : "block status", r->offset)};
    finish(std::move(r));
  }
}

}  // namespace imgstream::source
