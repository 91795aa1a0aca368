// Listening addresses as users write them ("unix:PATH", "tcp:HOST:PORT") and the NBD URIs
// that name an export on them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

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

// Binds and listens. For unix sockets a stale socket file left by a dead server is
// replaced; one in use by a live server is an error (EADDRINUSE). For TCP with port 0
// the chosen port is written back into `addr`.
Result<UniqueFd> listen_on(Address& addr);

Result<UniqueFd> connect_to(const Address& addr);

// Percent-encodes all but RFC 3986's unreserved characters and '/'.
std::string uri_escape(std::string_view s);

// "nbd://127.0.0.1:10809/name" or "nbd+unix:///name?socket=/path", percent-encoded.
std::string nbd_uri(const Address& addr, std::string_view export_name);

}  // namespace imgstream
