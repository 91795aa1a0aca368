#include "stack/device_stack.h"

#include "base/check.h"
#include "base/log.h"
#include "migrate/dirty_tracking_device.h"
#include "profile/tracing_device.h"

namespace imgstream::stack {

Result<std::unique_ptr<DeviceStack>> DeviceStack::build(Env& env, StackOptions o) {
  IMG_CHECK((o.owned_base != nullptr) != (o.base != nullptr));
  if (o.migration_source && o.track_path.empty())
    return Error::invalid("a migration source needs a tracking file");
  std::unique_ptr<DeviceStack> s(new DeviceStack());
  s->owned_base_ = std::move(o.owned_base);
  s->base_ = s->owned_base_ ? s->owned_base_.get() : o.base;
  s->top_ = s->base_;
  auto push = [&](std::unique_ptr<BlockDevice> layer) {
    s->top_ = layer.get();
    s->layers_.push_back(std::move(layer));
  };
  if (!o.trace_path.empty()) {
    o.trace_header.image_size = s->base_->size();
    s->trace_ = TRY(profile::TraceWriter::create(env, o.trace_path, o.trace_header));
    push(std::make_unique<profile::TracingDevice>(*s->top_, *s->trace_));
  }
  if (!o.track_path.empty()) {
    s->tracker_ = TRY(migrate::DirtyTracker::open(env, o.track_path, s->base_->size()));
    s->track_path_ = o.track_path;
    push(std::make_unique<migrate::DirtyTrackingDevice>(*s->top_, *s->tracker_));
    LOG_INFO("tracking changes in {}: {} regions changed so far", o.track_path,
             s->tracker_->dirty_count());
  }
  if (o.migration_source) {
    // hold -> mirror -> tracking: held requests wait above the mirror, and every write
    // the mirror sees is tracked.
    auto mirror = std::make_unique<migrate::MirrorDevice>(*s->top_, *s->tracker_);
    s->mirror_ = mirror.get();
    push(std::move(mirror));
    auto hold = std::make_unique<migrate::HoldDevice>(*s->top_);
    s->hold_ = hold.get();
    push(std::move(hold));
  }
  return s;
}

Result<void> DeviceStack::close() {
  if (closed_) return ok();
  closed_ = true;
  Result<void> result;
  if (mirror_) mirror_->deactivate();  // its copier uses the tracker, closed next
  if (tracker_) {
    if (auto r = tracker_->close(); !r)
      result = std::move(r).error().context("tracking file " + track_path_);
  }
  if (trace_) {
    if (auto r = trace_->close(); !r && result) result = std::move(r).error();
  }
  return result;
}

DeviceStack::~DeviceStack() {
  // Top first: a layer never outlives the one below it.
  while (!layers_.empty()) layers_.pop_back();
}

}  // namespace imgstream::stack
