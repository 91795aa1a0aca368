// A fixed set of threads that run posted tasks, for the work that may block (disk, network)
// and must not stall an event loop. Tasks run in no particular order.
//
// Lock contract: mu_ guards queue_ and stopping_; post() may be called from any thread,
// including from a task. Tasks run without mu_ held. The destructor must not run on a
// pool thread (it joins them).
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace imgstream {

class ThreadPool {
 public:
  explicit ThreadPool(unsigned threads);
  ~ThreadPool();  // runs the tasks still queued, then joins
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Queues a task. Callers bound how much they post (the NBD connection bounds its
  // requests in flight), so the queue itself needs no bound.
  void post(std::function<void()> task);

 private:
  void loop();

  std::mutex mu_;
  std::condition_variable cv_;  // pool threads wait on it for a task or stopping_
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace imgstream
