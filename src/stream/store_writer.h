// StoreWriter: the one thread that writes fetched bytes into a store's data file.
//
// Why a thread of its own: a fetch lands on the source's I/O thread (libnbd's, curl's),
// which serves every other request of that source connection; a 1 MiB write into fresh
// page cache takes 4-10 ms on a fresh VM, and on that thread it held up every fetch
// behind it. The waiting reader is answered from the fetched buffer (StreamingDevice), so
// the store write is off every critical path: here it is batched (one wake-up takes
// every job queued, written in offset order) and each job's `done` runs after its bytes
// are in the file, so a caller that marks regions present in `done` keeps the store's
// rule: data first, then the bit (and the bit is committed only after a sync of the data).
//
// Bounds: the queue holds no memory of its own beyond the jobs; the bytes belong to the
// caller (StreamingDevice's fetch budget bounds them).
//
// Lock contract: submit() and drain() may be called from any thread (drain never from a
// done); done runs on the writer thread,
// never under mu_. The destructor writes every job submitted before it, then joins.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "base/env.h"
#include "base/result.h"

namespace imgstream::stream {

class StoreWriter {
 public:
  using Done = std::function<void(Result<void>)>;

  explicit StoreWriter(File& data);
  ~StoreWriter();
  StoreWriter(const StoreWriter&) = delete;
  StoreWriter& operator=(const StoreWriter&) = delete;

  // Writes `bytes` at `offset` (they must stay valid until done), then calls done.
  void submit(uint64_t offset, std::span<const std::byte> bytes, Done done);

  // Waits until every job submitted before the call is written and its done has run.
  void drain();

 private:
  struct Job {
    uint64_t offset;
    std::span<const std::byte> bytes;
    Done done;
  };
  void loop();

  File& data_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Job> queue_;  // under mu_
  bool stopping_ = false;   // under mu_
  uint64_t submitted_ = 0;  // jobs submitted, under mu_
  uint64_t finished_ = 0;   // jobs written and done, under mu_
  std::thread thread_;  // last: started once everything above exists
};

}  // namespace imgstream::stream
