#include "nbd/server.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>

#include "base/check.h"
#include "base/log.h"

namespace imgstream::nbd {

namespace {

// A unix socket's send buffer is 208 KiB by default: a 1 MiB read reply then goes out in
// five rounds of "send what fits, poll until the client drained three quarters", and the
// two ends wait on each other (fio 1 MiB reads at QD 32 ran at 0.6-1.4 GB/s, with neither
// process busy). kSendBufferBytes lets a few replies sit in the socket at once: 2.8-3.6
// GB/s (docs/BENCHMARKS.md). The kernel caps it at net.core.wmem_max. TCP is left alone:
// setting SO_SNDBUF would turn off the kernel's own tuning of the window.
void set_send_buffer(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0 ||
      addr.ss_family != AF_UNIX)
    return;
  int bytes = static_cast<int>(kSendBufferBytes);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);  // a smaller cap is fine
}

}  // namespace

Result<std::unique_ptr<Server>> Server::create(ServerOptions options) {
  if (options.exports.empty()) return Error::invalid("no export to serve");
  if (options.listen.empty()) return Error::invalid("no address to listen on");
  for (const Export& e : options.exports) IMG_CHECK(e.device != nullptr);
  if (options.connections_max == 0 || options.handshake_seconds <= 0)
    return Error::invalid("a server needs room for one client and time for its handshake");
  std::unique_ptr<Server> s(new Server(std::move(options)));
  if (s->options_.bound.empty()) {
    s->listeners_ = TRY(listen_all(s->options_.listen));
  } else {
    IMG_CHECK(s->options_.bound.size() == s->options_.listen.size());
    s->listeners_ = std::move(s->options_.bound);
  }
  s->stop_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!s->stop_fd_.valid()) return Error::from_errno(errno, "eventfd");
  s->pool_ = std::make_unique<ThreadPool>(s->options_.worker_threads);
  return s;
}

// The listeners remove the socket files they bound, and only those (io/socket.h).
Server::~Server() {
  reap(true);
}

void Server::request_stop() {
  uint64_t one = 1;
  ssize_t unused = ::write(stop_fd_.get(), &one, sizeof one);
  (void)unused;
}

Result<void> Server::run() {
  std::vector<pollfd> fds;
  for (const Listener& l : listeners_) fds.push_back({l.get(), POLLIN, 0});
  fds.push_back({stop_fd_.get(), POLLIN, 0});
  for (;;) {
    // Wake now and then to join connections that ended.
    int n = ::poll(fds.data(), fds.size(), 1000);
    if (n < 0 && errno != EINTR) return Error::from_errno(errno, "poll");
    reap(false);
    if (n <= 0) continue;
    if (fds.back().revents) break;
    for (size_t i = 0; i + 1 < fds.size(); ++i)
      if (fds[i].revents & POLLIN) accept_one(fds[i].fd);
  }
  listeners_.clear();
  drain();
  Result<void> result;
  for (const Export& e : options_.exports) {
    if (e.read_only || !e.device->caps().can_flush) continue;
    auto r = e.device->flush();
    if (!r) result = std::move(r).error().context("flush at shutdown");
  }
  return result;
}

void Server::accept_one(int listen_fd) {
  UniqueFd fd(::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC));
  if (!fd.valid()) {
    if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
      LOG_WARN("accept: {}", errno_text(errno));
    return;
  }
  const bool full = serving_ >= options_.connections_max;
  if (full) {
    // Say so rather than close in silence, which clients report as a protocol error.
    const auto now = std::chrono::steady_clock::now();
    ++refused_unlogged_;
    if (now - refusal_logged_ >= std::chrono::seconds(kRefusalLogSeconds)) {
      LOG_WARN("refused {} client(s): {} connections already (the most this server takes)",
               refused_unlogged_, options_.connections_max);
      refused_unlogged_ = 0;
      refusal_logged_ = now;
    }
    if (refusing_ >= kRefusalsMax) return;  // closing the socket is all we can afford
  }
  int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // fails on unix: fine
  set_send_buffer(fd.get());
  Slot& slot = slots_.emplace_back();
  slot.refusal = full;
  ++(full ? refusing_ : serving_);
  ConnectionOptions co;
  co.handshake_seconds = options_.handshake_seconds;
  if (full) {
    co.refusal = fmt::format("imgstream: server full ({} clients connected); try again later",
                             options_.connections_max);
  }
  slot.conn = std::make_unique<Connection>(std::move(fd), options_.exports, *pool_, std::move(co));
  slot.thread = std::thread([&slot] {
    slot.conn->run();
    slot.done = true;
  });
}

void Server::reap(bool all) {
  for (auto it = slots_.begin(); it != slots_.end();) {
    if (all || it->done) {
      it->thread.join();
      --(it->refusal ? refusing_ : serving_);
      it = slots_.erase(it);
    } else {
      ++it;
    }
  }
}

// Stops reading from every client; in-flight requests are answered. Clients that do not
// read their replies within kDrainSeconds are cut off.
void Server::drain() {
  for (Slot& s : slots_) s.conn->stop_reading();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(kDrainSeconds);
  for (;;) {
    reap(false);
    if (slots_.empty()) return;
    if (std::chrono::steady_clock::now() > deadline) break;
    ::usleep(10'000);
  }
  LOG_WARN("{} clients did not finish within {} s: disconnecting them", slots_.size(),
           kDrainSeconds);
  for (Slot& s : slots_) s.conn->abort();
  reap(true);
}

}  // namespace imgstream::nbd
