// NbdServer: accepts NBD clients on unix and TCP sockets and serves Exports to them. It
// knows nothing of what is behind a BlockDevice (DESIGN.md: "the NBD server knows nothing
// of streaming").
#pragma once

#include <atomic>
#include <chrono>
#include <list>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "base/limits.h"
#include "base/result.h"
#include "base/thread_pool.h"
#include "base/unique_fd.h"
#include "io/socket.h"
#include "nbd/connection.h"
#include "nbd/handshake.h"

namespace imgstream::nbd {

inline constexpr unsigned kConnectionsMax = limits::kNbdServerConnectionsMax;
// Clients beyond kConnectionsMax that are told why (Connection's refusal); more than this
// at once are closed without a word, so that a flood cannot make threads without bound.
inline constexpr unsigned kRefusalsMax = limits::kNbdRefusalsMax;
// A refused client is logged at most this often (the rest are counted in the next line).
inline constexpr int kRefusalLogSeconds = 10;
inline constexpr unsigned kWorkerThreadsDefault = 16;
inline constexpr int kDrainSeconds = 10;

struct ServerOptions {
  std::vector<Address> listen;
  // Sockets already listening on `listen` (listen_all), so that a command can learn that
  // its addresses are free before it creates anything; empty: create() binds `listen`.
  std::vector<Listener> bound;
  std::vector<Export> exports;  // [0] is the default export
  unsigned worker_threads = kWorkerThreadsDefault;
  unsigned connections_max = kConnectionsMax;  // clients served at once
  int handshake_seconds = kHandshakeSeconds;   // for the whole handshake
};

// Lock contract: no lock. run() and everything it calls (accepting, reaping, draining:
// slots_, serving_, refusing_, the refusal log) run on the one thread that called run();
// each Slot's connection runs on the slot's own thread, which only sets its `done` (an
// atomic, read by the run() thread to reap it). request_stop() may come from any thread
// or a signal handler: it only writes the stop eventfd.
class Server {
 public:
  // Binds every address (so that the caller can print URIs before run()).
  static Result<std::unique_ptr<Server>> create(ServerOptions options);
  ~Server();

  // The addresses as bound (a TCP port 0 is replaced by the chosen port).
  const std::vector<Address>& addresses() const { return options_.listen; }

  // Serves until request_stop(); then stops accepting, lets connections finish the
  // requests they have (at most kDrainSeconds), flushes every export and returns.
  Result<void> run();

  // Thread-safe and async-signal-safe: may be called from a signal handler.
  void request_stop();

 private:
  struct Slot {
    std::unique_ptr<Connection> conn;
    std::thread thread;
    std::atomic<bool> done{false};
    bool refusal = false;  // a client told that the server is full
  };

  explicit Server(ServerOptions o) : options_(std::move(o)) {}
  void accept_one(int listen_fd);
  void reap(bool all);
  void drain();

  ServerOptions options_;
  std::vector<Listener> listeners_;  // each removes the unix socket file it bound
  UniqueFd stop_fd_;  // eventfd
  std::unique_ptr<ThreadPool> pool_;
  std::list<Slot> slots_;
  unsigned serving_ = 0;   // slots that are not refusals
  unsigned refusing_ = 0;  // slots that are
  unsigned refused_unlogged_ = 0;
  std::chrono::steady_clock::time_point refusal_logged_{};
};

}  // namespace imgstream::nbd
