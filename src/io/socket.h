// Listening addresses as users write them ("unix:PATH", "tcp:HOST:PORT") and the NBD URIs
// that name an export on them.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "base/unique_fd.h"

namespace imgstream {

struct Address {
  enum class Kind { Unix, Tcp };
  Kind kind = Kind::Tcp;
  std::string path;  // Unix
  std::string host;  // Tcp
  uint16_t port = 0;  // Tcp; 0 picks a free port when listening

  std::string to_string() const;
};

inline constexpr std::string_view kDefaultListen = "tcp:127.0.0.1:10809";

Result<Address> parse_address(std::string_view text);

// A listening socket. For a unix socket it owns the socket file it bound: the destructor
// removes the file, but only while the path still names that very socket (same st_dev and
// st_ino), so that whatever took the path since (another server's socket, a user's file)
// is left alone. Files this process did not bind are never removed.
class Listener {
 public:
  Listener() = default;
  Listener(UniqueFd fd, std::string bound_path, dev_t dev, ino_t ino)
      : fd_(std::move(fd)), path_(std::move(bound_path)), dev_(dev), ino_(ino) {}
  Listener(Listener&& o) noexcept;
  Listener& operator=(Listener&& o) noexcept;
  ~Listener();

  int get() const { return fd_.get(); }
  bool valid() const { return fd_.valid(); }
  // The unix socket file this listener bound ("" for TCP).
  const std::string& bound_path() const { return path_; }
  // Gives up the descriptor, and the socket file (left where it is).
  int release() {
    path_.clear();
    return fd_.release();
  }

 private:
  void remove_bound_file();

  UniqueFd fd_;
  std::string path_;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
};

// Binds and listens. For unix sockets, a path that exists is taken over only when it is a
// stale socket (one nobody answers on: ECONNREFUSED); a socket a live server answers on
// is EADDRINUSE ("in use: another server answers there") and any other file EEXIST
// ("exists and is not a socket; not replacing it"): never removed. For TCP with port 0
// the chosen port is written back into `addr`.
Result<Listener> listen_on(Address& addr);
// Whether listen_on(addr) would take its path, without binding or removing anything: ok
// for TCP, a missing path or a stale socket; otherwise the error listen_on would give.
// For a command that must know before it creates anything, and binds later.
Result<void> check_listen_path(const Address& addr);
// listen_on for every address, in order (all or none).
Result<std::vector<Listener>> listen_all(std::vector<Address>& addrs);

Result<UniqueFd> connect_to(const Address& addr);

// Percent-encodes all but RFC 3986's unreserved characters and '/'.
std::string uri_escape(std::string_view s);

// "nbd://127.0.0.1:10809/name" or "nbd+unix:///name?socket=/path", percent-encoded.
std::string nbd_uri(const Address& addr, std::string_view export_name);

}  // namespace imgstream
