#include "cli/listen_args.h"

#include "cli/run_server.h"

namespace imgstream::cli {

Result<std::vector<Address>> parse_listen_args(const std::vector<std::string>& listen) {
  std::vector<Address> out;
  for (const std::string& l : listen) out.push_back(TRY(parse_address(l)));
  return out;
}

BoundListen::~BoundListen() {
  listeners.clear();
  if (private_) remove_private_socket(*private_);
}

Result<void> BoundListen::bind(std::vector<Address> addrs, bool captive) {
  if (addrs.empty()) {
    // Captive mode without --listen gets a private unix socket: nothing to collide with.
    if (captive) {
      private_ = TRY(private_socket());
      addrs.push_back(*private_);
    } else {
      addrs.push_back(*parse_address(kDefaultListen));
    }
  }
  listeners = TRY(listen_all(addrs));
  addresses = std::move(addrs);
  return ok();
}

}  // namespace imgstream::cli
