#include "profile/trace.h"

#include <string_view>

#include "base/check.h"
#include "base/codec.h"
#include "base/limits.h"
#include "base/log.h"
#include "profile/file_header.h"

namespace imgstream::profile {

namespace {

// docs/trace-format.md; the header's framing is docs/framing.md's. Messages are prefixed
// with "trace NAME: ".
constexpr Frame kHeaderFrame = file_header_frame(std::string_view(kTraceMagic, sizeof kTraceMagic),
                                                 kTraceVersion, "not a trace file (bad magic)");
static_assert(kTraceHeaderBytes == kFileHeaderBytes);
// A record block: magic, record count, zero, then the CRC of the whole block with the CRC
// field taken as zero; then the records.
constexpr size_t kBlockCountAt = 4;
constexpr size_t kBlockReservedAt = 8;
constexpr size_t kBlockCrcAt = 12;
constexpr uint32_t kRegionSizeMin = limits::kProfileRegionSizeMin;
constexpr uint32_t kRegionSizeMax = limits::kProfileRegionSizeMax;

void put_record(ByteWriter& w, const TraceRecord& r) {
  w.u64(r.time_ns);
  w.u64(r.offset);
  w.u32(r.length);
  w.u32(r.flags);
}

TraceRecord get_record(ByteReader& r) {
  TraceRecord t;
  t.time_ns = r.u64();
  t.offset = r.u64();
  t.length = r.u32();
  t.flags = r.u32();
  return t;
}

Error corrupt(const std::string& name, uint64_t at, std::string_view what) {
  return Error::invalid("trace " + name + ": " + std::string(what) + " at byte " +
                        std::to_string(at));
}

Result<TraceHeader> parse_header(std::span<const std::byte> b, const std::string& name) {
  ByteReader r = TRY_CTX(open_frame(b, kHeaderFrame), "trace " + name);
  TraceHeader h;
  h.image_size = r.u64_at(16);
  h.region_size = r.u32_at(24);
  h.flags = r.u32_at(28);
  h.start_time_ns = r.u64_at(32);
  const bool region_ok =
      h.region_size == 0 || (h.region_size >= kRegionSizeMin && h.region_size <= kRegionSizeMax &&
                             (h.region_size & (h.region_size - 1)) == 0);
  if (!region_ok) return corrupt(name, 24, "bad region size");
  if ((h.flags & ~kTraceFlagStreaming) != 0) return corrupt(name, 28, "unknown flags");
  if ((h.flags & kTraceFlagStreaming) && h.region_size == 0)
    return corrupt(name, 28, "streaming trace without a region size");
  if (auto at = file_header_nonzero_reserved(r))
    return corrupt(name, *at, "reserved header byte not zero");
  return h;
}

bool record_valid(const TraceHeader& h, const TraceRecord& r) {
  return r.length > 0 && r.offset <= h.image_size && r.length <= h.image_size - r.offset &&
         (r.flags & ~kRecordLocal) == 0;
}

}  // namespace

std::vector<std::byte> encode_trace_header(const TraceHeader& h) {
  std::vector<std::byte> b = new_frame(kHeaderFrame);
  ByteWriter w(b);
  w.u64_at(16, h.image_size);
  w.u32_at(24, h.region_size);
  w.u32_at(28, h.flags);
  w.u64_at(32, h.start_time_ns);
  seal_frame(b, kHeaderFrame);
  return b;
}

std::vector<std::byte> encode_trace_block(std::span<const TraceRecord> records) {
  IMG_CHECK(!records.empty() && records.size() <= kTraceBlockRecordsMax);
  std::vector<std::byte> b(kTraceBlockHeaderBytes + records.size() * kTraceRecordBytes);
  ByteWriter w(b);
  w.u32(kTraceBlockMagic);
  w.u32(static_cast<uint32_t>(records.size()));
  w.skip(kTraceBlockHeaderBytes - kBlockReservedAt);  // zero, and the CRC's place
  for (const TraceRecord& r : records) put_record(w, r);
  IMG_CHECK(w.pos() == b.size());
  // The CRC covers the block with its CRC field zero (as it is here).
  w.u32_at(kBlockCrcAt, crc32c(b));
  return b;
}

Result<Trace> parse_trace(std::span<const std::byte> bytes, const std::string& name) {
  Trace t;
  t.header = TRY(parse_header(bytes, name));
  uint64_t at = kTraceHeaderBytes;
  while (at < bytes.size()) {
    ByteReader rest(bytes.subspan(at));
    if (rest.size() < kTraceBlockHeaderBytes) {
      t.torn_tail = true;
      break;
    }
    const uint32_t count = rest.u32_at(kBlockCountAt);
    const bool shape_ok = rest.u32_at(0) == kTraceBlockMagic && count > 0 &&
                          count <= kTraceBlockRecordsMax && rest.u32_at(kBlockReservedAt) == 0;
    const size_t len = kTraceBlockHeaderBytes + size_t{count} * kTraceRecordBytes;
    // A block that runs past the end is the torn tail; one that fits must check out
    // unless it is the last (a torn write may leave a full-length block of garbage).
    if (shape_ok && len > rest.size()) {
      t.torn_tail = true;
      break;
    }
    const bool crc_ok = shape_ok && crc32c_without_field(rest.all().first(len), kBlockCrcAt) ==
                                        rest.u32_at(kBlockCrcAt);
    if (!shape_ok || !crc_ok) {
      if (shape_ok && len == rest.size()) {
        t.torn_tail = true;
        break;
      }
      return corrupt(name, at, shape_ok ? "record block CRC mismatch" : "bad record block header");
    }
    rest.skip(kTraceBlockHeaderBytes);
    for (uint32_t i = 0; i < count; ++i) {
      const uint64_t rec_at = rest.pos();
      const TraceRecord r = get_record(rest);
      if (!record_valid(t.header, r)) return corrupt(name, at + rec_at, "invalid record");
      t.records.push_back(r);
    }
    IMG_CHECK(rest.ok());  // len <= rest.size()
    at += len;
  }
  return t;
}

Result<Trace> read_trace(Env& env, const std::string& path) {
  auto f = TRY_CTX(env.open(path, OpenMode::ReadOnly), "trace " + path);
  const uint64_t size = TRY_CTX(f->size(), "trace " + path);
  if (size > kTraceFileBytesMax)
    return Error{EFBIG, "trace " + path + ": " + std::to_string(size) + " bytes is too large"};
  std::vector<std::byte> bytes(size);
  TRY_CTX(read_exact_at(*f, 0, bytes), "trace " + path);
  return parse_trace(bytes, path);
}

// --- TraceWriter ---

TraceWriter::TraceWriter(std::unique_ptr<File> f, std::string path)
    : file_(std::move(f)), path_(std::move(path)), start_(std::chrono::steady_clock::now()) {
  buffer_.reserve(4 * kTraceBlockRecordsMax);
}

Result<std::unique_ptr<TraceWriter>> TraceWriter::create(Env& env, const std::string& path,
                                                         TraceHeader h) {
  auto f = TRY_CTX(env.open(path, OpenMode::CreateOrOpen), "trace " + path);
  TRY_CTX(f->truncate(0), "trace " + path);
  std::unique_ptr<TraceWriter> w(new TraceWriter(std::move(f), path));
  h.start_time_ns = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                              std::chrono::system_clock::now().time_since_epoch())
                                              .count());
  TRY_CTX(write_all_at(*w->file_, 0, encode_trace_header(h)), "trace " + path);
  w->thread_ = std::thread([p = w.get()] { p->flush_loop(); });
  return w;
}

TraceWriter::~TraceWriter() {
  (void)close();
}

uint64_t TraceWriter::now_ns() const {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now() - start_)
                                   .count());
}

void TraceWriter::record(const TraceRecord& r) {
  bool wake = false;
  {
    std::lock_guard lock(mu_);
    if (buffer_.size() >= kTraceBufferedRecordsMax) {
      ++dropped_;
      return;
    }
    buffer_.push_back(r);
    wake = buffer_.size() == kTraceBlockRecordsMax;
  }
  if (wake) cv_.notify_one();
}

uint64_t TraceWriter::dropped() const {
  std::lock_guard lock(mu_);
  return dropped_;
}

void TraceWriter::flush_loop() {
  std::vector<TraceRecord> out;
  out.reserve(4 * kTraceBlockRecordsMax);
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait_for(lock, kTraceFlushInterval,
                 [&] { return stopping_ || buffer_.size() >= kTraceBlockRecordsMax; });
    const bool stop = stopping_;
    out.swap(buffer_);
    lock.unlock();
    if (!out.empty()) write_blocks(out);
    out.clear();
    lock.lock();
    if (stop && buffer_.empty()) return;
  }
}

void TraceWriter::write_blocks(std::span<const TraceRecord> records) {
  if (!write_error_) return;  // after a failed write the rest would not line up
  std::vector<std::byte> bytes;
  for (size_t i = 0; i < records.size(); i += kTraceBlockRecordsMax) {
    const size_t n = std::min<size_t>(kTraceBlockRecordsMax, records.size() - i);
    std::vector<std::byte> b = encode_trace_block(records.subspan(i, n));
    bytes.insert(bytes.end(), b.begin(), b.end());
  }
  auto r = write_all_at(*file_, file_end_, bytes);
  if (!r) {
    LOG_ERROR("trace {}: write failed, tracing stops: {}", path_, r.error().message);
    write_error_ = std::move(r).error();
    return;
  }
  file_end_ += bytes.size();
}

Result<void> TraceWriter::close() {
  if (closed_) return write_error_;
  closed_ = true;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
  if (write_error_) {
    auto s = file_->sync();
    if (!s) write_error_ = std::move(s).error().context("trace " + path_);
  }
  if (uint64_t d = dropped(); d > 0)
    LOG_WARN("trace {}: {} reads not recorded (writer behind)", path_, d);
  return write_error_;
}

}  // namespace imgstream::profile
