// DeviceStack: the chain of layers a command exports, built in one place from options
// (DESIGN.md, "Layers"), as nbdkit stacks filters on a plugin. Commands (serve, stream,
// and every later one) say what they want; the order of the layers and who owns what
// is decided here, not in the CLI.
//
// Bottom to top, each layer present only when asked for:
//
//   base        the image: a file or block device, a pack, or a streaming device
//   tracing     records every read (docs/trace-format.md); "served locally" is asked
//               of the layer below (BlockDevice::is_local)
//   tracking    records every region written, durably before the write is acknowledged
//               (docs/track-format.md)
//   mirror      copies writes to a migration target as well (needs tracking)
//   hold        holds new requests for a migration's cutover; top of the stack
//
// The stack owns every layer it made, the trace writer and the tracker; it may borrow
// its base (the streamer owns its device). Layers go top first.
//
// Thread safety: build() and close() from one thread, with no server using top(); the
// layers themselves are BlockDevices (any thread).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/env.h"
#include "base/result.h"
#include "device/block_device.h"
#include "migrate/dirty_tracker.h"
#include "migrate/hold_device.h"
#include "migrate/mirror_device.h"
#include "profile/trace.h"

namespace imgstream::stack {

struct StackOptions {
  // The base: owned, or borrowed when `owned_base` is null (it must outlive the stack).
  std::unique_ptr<BlockDevice> owned_base;
  BlockDevice* base = nullptr;
  // Record reads in this trace file (created; its image_size is the base's size).
  std::string trace_path;
  profile::TraceHeader trace_header;
  // Record writes in this tracking file (made when missing, resumed when it exists).
  std::string track_path;
  // Mirror and hold layers above the tracking, for `migrate --control` (needs track_path).
  bool migration_source = false;
};

class DeviceStack {
 public:
  static Result<std::unique_ptr<DeviceStack>> build(Env& env, StackOptions options);
  ~DeviceStack();
  DeviceStack(const DeviceStack&) = delete;
  DeviceStack& operator=(const DeviceStack&) = delete;

  // What the server exports.
  BlockDevice& top() const { return *top_; }
  BlockDevice& base() const { return *base_; }
  // The layers that were asked for; null otherwise.
  migrate::DirtyTracker* tracker() const { return tracker_.get(); }
  migrate::MirrorDevice* mirror() const { return mirror_; }
  migrate::HoldDevice* hold() const { return hold_; }

  // Ends it cleanly once nothing uses it: the mirror stops copying, the tracking file is
  // closed (every bit in the bitmap, an empty log), the trace written out. The first
  // error is returned; everything is closed regardless.
  Result<void> close();

 private:
  DeviceStack() = default;

  std::unique_ptr<BlockDevice> owned_base_;
  BlockDevice* base_ = nullptr;
  std::unique_ptr<profile::TraceWriter> trace_;
  std::unique_ptr<migrate::DirtyTracker> tracker_;
  std::vector<std::unique_ptr<BlockDevice>> layers_;  // bottom to top
  std::string track_path_;
  migrate::MirrorDevice* mirror_ = nullptr;
  migrate::HoldDevice* hold_ = nullptr;
  BlockDevice* top_ = nullptr;
  bool closed_ = false;
};

}  // namespace imgstream::stack
