// FetchBudget: the bytes a StreamingDevice may hold in fetch buffers at once (issue 12:
// one NBD_CMD_CACHE of 4 GiB on a slow source grew the streamer by 4.1 GiB, every run's
// buffer allocated before the first read came back).
//
// Every fetch takes its bytes here *before* it allocates its buffer and gives them back
// when the buffer is freed (a Grant: RAII). Two classes of taker:
//
//   class       | who                                      | may hold           | waits while
//   ------------+------------------------------------------+--------------------+---------------------
//   Demand      | a client waits (read, partial-write      | the whole budget   | an earlier Demand
//               | merge), or the taker holds a region      |                    | taker waits
//               | claim someone may wait on                |                    |
//   Background  | hydration, prefetch, NBD_CMD_CACHE:      | all but the demand | any Demand taker or
//               | nobody waits, and no claim is held yet   | reserve            | an earlier Background
//               |                                          |                    | taker waits
//
// Takers of a class are served in arrival order, so none starves behind later ones, and
// background work yields to every demand taker that waits.
//
// Deadlock freedom rests on one rule for callers: bytes are held only by fetches that are
// issued to the source (or are being issued, without waiting on anything else first).
// Every held byte then comes back when the source answers or gives up (within its I/O
// timeout), so every waiter is served in the end. In particular a caller never waits on a
// region claim while it holds a Grant.
//
// Thread safety: every method may be called from any thread. Giving bytes back (a Grant's
// destruction or reset) never blocks for long: it may run on a source's completion thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace imgstream::stream {

enum class FetchPriority { Demand, Background };

class FetchBudget {
 public:
  // Bytes taken from a budget; given back when destroyed or reset. Move-only.
  class Grant {
   public:
    Grant() = default;
    Grant(Grant&& o) noexcept : budget_(o.budget_), bytes_(o.bytes_) { o.bytes_ = 0; }
    Grant& operator=(Grant&& o) noexcept;
    Grant(const Grant&) = delete;
    Grant& operator=(const Grant&) = delete;
    ~Grant() { reset(); }

    uint64_t bytes() const { return bytes_; }
    // Splits `n` of these bytes (n <= bytes()) off into a grant of their own.
    Grant take(uint64_t n);
    void reset();  // gives the bytes back

   private:
    friend class FetchBudget;
    Grant(FetchBudget* b, uint64_t n) : budget_(b), bytes_(n) {}
    FetchBudget* budget_ = nullptr;
    uint64_t bytes_ = 0;
  };

  // Background takers never hold more than total_bytes - demand_reserve_bytes.
  FetchBudget(uint64_t total_bytes, uint64_t demand_reserve_bytes);
  ~FetchBudget();  // every Grant must be gone
  FetchBudget(const FetchBudget&) = delete;
  FetchBudget& operator=(const FetchBudget&) = delete;

  // Waits until `bytes` may be taken at priority `p`, and takes them. `bytes` must be
  // positive and at most what the class may hold (checked): a piece never asks for more.
  Grant acquire(uint64_t bytes, FetchPriority p);
  // Takes `bytes` at priority `p` only when that needs no wait and nobody of either class
  // is in line; else an empty grant. For work that is worth doing only now (read-ahead).
  Grant try_acquire(uint64_t bytes, FetchPriority p);

  uint64_t total() const { return total_; }
  uint64_t background_max() const { return total_ - reserve_; }
  uint64_t used() const;
  // The most ever held at once (for tests and the status of a run).
  uint64_t used_max() const;

 private:
  void give_back(uint64_t bytes);
  bool fits_locked(uint64_t bytes, FetchPriority p) const;

  const uint64_t total_;
  const uint64_t reserve_;
  mutable std::mutex mu_;       // guards everything below
  std::condition_variable cv_;  // takers wait on it for bytes and their turn
  uint64_t used_ = 0;
  uint64_t used_max_ = 0;
  // Tickets per class (index: FetchPriority): a taker draws next_ and is served when
  // head_ reaches its ticket. head_ != next_ means someone of that class waits.
  uint64_t next_[2] = {0, 0};
  uint64_t head_[2] = {0, 0};
};

}  // namespace imgstream::stream
