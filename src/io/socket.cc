#include "io/socket.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cctype>
#include <cstring>

namespace imgstream {

std::string Address::to_string() const {
  if (kind == Kind::Unix) return "unix:" + path;
  if (host.find(':') != std::string::npos) return fmt::format("tcp:[{}]:{}", host, port);
  return fmt::format("tcp:{}:{}", host, port);
}

Result<Address> parse_address(std::string_view text) {
  const std::string input(text);
  Address a;
  if (text.starts_with("unix:")) {
    a.kind = Address::Kind::Unix;
    a.path = std::string(text.substr(5));
    if (a.path.empty()) return Error::invalid("address '" + input + "': empty socket path");
    if (a.path.size() >= sizeof(sockaddr_un::sun_path))
      return Error::invalid("address '" + input + "': socket path too long");
    return a;
  }
  if (!text.starts_with("tcp:"))
    return Error::invalid("address '" + input + "': expected unix:PATH or tcp:HOST:PORT");
  std::string_view rest = text.substr(4);
  size_t colon = rest.rfind(':');
  if (colon == std::string_view::npos || colon == 0)
    return Error::invalid("address '" + input + "': expected tcp:HOST:PORT");
  std::string_view host = rest.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  std::string_view port = rest.substr(colon + 1);
  unsigned long p = 0;
  if (port.empty() || port.size() > 5) return Error::invalid("address '" + input + "': bad port");
  for (char c : port) {
    if (c < '0' || c > '9') return Error::invalid("address '" + input + "': bad port");
    p = p * 10 + static_cast<unsigned long>(c - '0');
  }
  if (p > 65535) return Error::invalid("address '" + input + "': port out of range");
  a.kind = Address::Kind::Tcp;
  a.host = std::string(host);
  a.port = static_cast<uint16_t>(p);
  return a;
}

namespace {

Result<void> fill_unix(const Address& a, sockaddr_un& sa) {
  std::memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  if (a.path.size() >= sizeof sa.sun_path) return Error::invalid("socket path too long: " + a.path);
  std::memcpy(sa.sun_path, a.path.c_str(), a.path.size() + 1);
  return ok();
}

// Resolves a numeric or named host; the first usable address wins.
Result<addrinfo*> resolve(const Address& a, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* res = nullptr;
  std::string port = std::to_string(a.port);
  int rc = ::getaddrinfo(a.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0)
    return Error{EINVAL, "resolve " + a.host + ": " + ::gai_strerror(rc)};
  return res;
}

// What is at a unix socket path: nothing (false), a stale socket (true, its identity in
// `st`), or an error saying why it must be left alone.
Result<bool> probe_unix_path(const Address& a, struct stat& st) {
  if (::lstat(a.path.c_str(), &st) != 0) {
    if (errno == ENOENT) return false;
    return Error::from_errno(errno, a.to_string());
  }
  if (!S_ISSOCK(st.st_mode))
    return Error{EEXIST, a.to_string() + ": exists and is not a socket; not replacing it"};
  // Non-blocking: a live server whose backlog is full (EAGAIN) is live all the same.
  sockaddr_un sa;
  TRY(fill_unix(a, sa));
  UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!probe.valid()) return Error::from_errno(errno, "socket");
  const int rc = ::connect(probe.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  const int err = rc == 0 ? 0 : errno;
  if (rc == 0 || err == EAGAIN || err == EINPROGRESS)
    return Error{EADDRINUSE, a.to_string() + ": in use: another server answers there"};
  if (err != ECONNREFUSED)  // e.g. EACCES: whose it is cannot be told; leave it
    return Error{err, a.to_string() + ": exists and cannot be checked (" + errno_text(err) +
                          "); not replacing it"};
  return true;
}

// Whether the unix socket path may be bound: missing, or a stale socket (removed here,
// while it still is the socket probed). Never removes anything else: a user's file, or a
// socket a live server answers on.
Result<void> take_unix_path(const Address& a) {
  struct stat st {};
  if (!TRY(probe_unix_path(a, st))) return ok();
  struct stat now {};
  if (::lstat(a.path.c_str(), &now) == 0 && now.st_dev == st.st_dev && now.st_ino == st.st_ino &&
      ::unlink(a.path.c_str()) != 0 && errno != ENOENT)
    return Error::from_errno(errno, "remove stale socket " + a.path);
  return ok();
}

Result<Listener> listen_unix(const Address& a) {
  sockaddr_un sa;
  TRY(fill_unix(a, sa));
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Error::from_errno(errno, "socket");
  TRY(take_unix_path(a));
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0)
    return Error::from_errno(errno, "bind " + a.to_string());
  // What was bound, so that only this very file is removed later.
  struct stat st {};
  if (::lstat(a.path.c_str(), &st) != 0) return Error::from_errno(errno, "stat " + a.path);
  Listener l(std::move(fd), a.path, st.st_dev, st.st_ino);
  if (::listen(l.get(), 128) != 0) return Error::from_errno(errno, "listen " + a.to_string());
  return l;
}

}  // namespace

Result<void> check_listen_path(const Address& a) {
  if (a.kind != Address::Kind::Unix) return ok();
  struct stat st {};
  TRY(probe_unix_path(a, st));
  return ok();
}

Listener::Listener(Listener&& o) noexcept
    : fd_(std::move(o.fd_)), path_(std::move(o.path_)), dev_(o.dev_), ino_(o.ino_) {
  o.path_.clear();
}

Listener& Listener::operator=(Listener&& o) noexcept {
  if (this != &o) {
    remove_bound_file();
    fd_ = std::move(o.fd_);
    path_ = std::move(o.path_);
    o.path_.clear();
    dev_ = o.dev_;
    ino_ = o.ino_;
  }
  return *this;
}

Listener::~Listener() {
  remove_bound_file();
}

void Listener::remove_bound_file() {
  if (path_.empty()) return;
  struct stat st {};
  if (::lstat(path_.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == dev_ &&
      st.st_ino == ino_)
    ::unlink(path_.c_str());
  path_.clear();
}

Result<std::vector<Listener>> listen_all(std::vector<Address>& addrs) {
  std::vector<Listener> out;
  for (Address& a : addrs) out.push_back(TRY(listen_on(a)));
  return out;
}

Result<Listener> listen_on(Address& a) {
  if (a.kind == Address::Kind::Unix) return listen_unix(a);
  addrinfo* res = TRY(resolve(a, true));
  UniqueFd fd(::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) {
    ::freeaddrinfo(res);
    return Error::from_errno(errno, "socket");
  }
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  int rc = ::bind(fd.get(), res->ai_addr, res->ai_addrlen);
  int err = errno;
  ::freeaddrinfo(res);
  if (rc != 0) return Error::from_errno(err, "bind " + a.to_string());
  if (::listen(fd.get(), 128) != 0) return Error::from_errno(errno, "listen " + a.to_string());
  if (a.port == 0) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len);
    a.port = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                            : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  }
  return Listener(std::move(fd), {}, 0, 0);
}

Result<UniqueFd> connect_to(const Address& a) {
  if (a.kind == Address::Kind::Unix) {
    sockaddr_un sa;
    TRY(fill_unix(a, sa));
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return Error::from_errno(errno, "socket");
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0)
      return Error::from_errno(errno, "connect " + a.to_string());
    return fd;
  }
  addrinfo* res = TRY(resolve(a, false));
  UniqueFd fd(::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  int rc = fd.valid() ? ::connect(fd.get(), res->ai_addr, res->ai_addrlen) : -1;
  int err = errno;
  ::freeaddrinfo(res);
  if (rc != 0) return Error::from_errno(err, "connect " + a.to_string());
  int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

std::string uri_escape(std::string_view s) {
  // RFC 3986 unreserved characters and '/' pass; everything else is %XX (UTF-8 bytes too).
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '/') {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

std::string nbd_uri(const Address& a, std::string_view export_name) {
  const std::string name = uri_escape(export_name);
  if (a.kind == Address::Kind::Unix)
    return fmt::format("nbd+unix:///{}?socket={}", name, uri_escape(a.path));
  if (a.host.find(':') != std::string::npos)
    return fmt::format("nbd://[{}]:{}/{}", a.host, a.port, name);
  return fmt::format("nbd://{}:{}/{}", a.host, a.port, name);
}

}  // namespace imgstream
