#include "stream/store_writer.h"

#include <algorithm>

namespace imgstream::stream {

StoreWriter::StoreWriter(File& data) : data_(data), thread_([this] { loop(); }) {}

StoreWriter::~StoreWriter() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void StoreWriter::submit(uint64_t offset, std::span<const std::byte> bytes, Done done) {
  {
    std::lock_guard lock(mu_);
    queue_.push_back(Job{offset, bytes, std::move(done)});
    ++submitted_;
    // Under the lock: once the job is done its owner may destroy this writer, and a
    // notify after the unlock would touch a condition variable that is gone.
    cv_.notify_all();
  }
}

void StoreWriter::drain() {
  std::unique_lock lock(mu_);
  const uint64_t upto = submitted_;
  cv_.wait(lock, [&] { return finished_ >= upto; });
}

void StoreWriter::loop() {
  std::vector<Job> batch;
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });  // drain() notifies too
    if (queue_.empty()) return;  // stopping, and every job written
    batch.swap(queue_);
    lock.unlock();
    // In offset order: neighbouring pieces of a hydration batch go to the disk in turn.
    std::sort(batch.begin(), batch.end(),
              [](const Job& a, const Job& b) { return a.offset < b.offset; });
    for (Job& j : batch) {
      Result<void> r = write_all_at(data_, j.offset, j.bytes);
      j.done(std::move(r));
    }
    const uint64_t n = batch.size();
    batch.clear();  // the jobs' callbacks (and what they hold) go before the next wait
    lock.lock();
    finished_ += n;
    cv_.notify_all();  // drain() waits on the same condition
  }
}

}  // namespace imgstream::stream
