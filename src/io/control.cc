#include "io/control.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "io/socket.h"

namespace imgstream {

namespace {
constexpr size_t kCommandBytesMax = 256;
constexpr size_t kReplyBytesMax = 1 << 20;
}  // namespace

Result<std::unique_ptr<ControlServer>> ControlServer::start(const std::string& path, Handler h) {
  std::unique_ptr<ControlServer> s(new ControlServer());
  s->path_ = path;
  s->handler_ = std::move(h);
  Address a;
  a.kind = Address::Kind::Unix;
  a.path = path;
  s->fd_ = TRY_CTX(listen_on(a), "control socket " + path);
  s->wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!s->wake_.valid()) return Error::from_errno(errno, "eventfd");
  s->thread_ = std::thread([p = s.get()] { p->loop(); });
  return s;
}

ControlServer::~ControlServer() {
  uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof one);
  if (thread_.joinable()) thread_.join();
}

void ControlServer::loop() {
  pollfd fds[2] = {{fd_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}};
  for (;;) {
    if (::poll(fds, 2, -1) < 0 && errno != EINTR) return;
    if (fds[1].revents) return;
    if (!(fds[0].revents & POLLIN)) continue;
    UniqueFd c(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!c.valid()) continue;
    timeval tv{2, 0};
    ::setsockopt(c.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[kCommandBytesMax];
    size_t got = 0;
    while (got < sizeof buf) {
      ssize_t n = ::recv(c.get(), buf + got, sizeof buf - got, 0);
      if (n <= 0) break;
      got += static_cast<size_t>(n);
      if (std::memchr(buf, '\n', got)) break;
    }
    std::string line(buf, got);
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    std::string reply = handler_(line).dump() + "\n";
    (void)!::send(c.get(), reply.data(), reply.size(), MSG_NOSIGNAL);
  }
}

Result<nlohmann::json> control_call(const std::string& path, const std::string& command,
                                    int timeout_s) {
  Address a;
  a.kind = Address::Kind::Unix;
  a.path = path;
  UniqueFd fd = TRY(connect_to(a));
  timeval tv{timeout_s, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  const std::string line = command + "\n";
  if (::send(fd.get(), line.data(), line.size(), MSG_NOSIGNAL) < 0)
    return Error::from_errno(errno, "send to " + path);
  std::string reply;
  char buf[4096];
  while (reply.find('\n') == std::string::npos && reply.size() < kReplyBytesMax) {
    ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
    if (n < 0) return Error::from_errno(errno, "read from " + path);
    if (n == 0) break;
    reply.append(buf, static_cast<size_t>(n));
  }
  auto j = nlohmann::json::parse(reply, nullptr, false);
  if (j.is_discarded()) return Error::io("bad reply from " + path);
  return j;
}

}  // namespace imgstream
