#include "profile/trace.h"

#include <cstring>
#include <string_view>

#include "base/check.h"
#include "base/crc32c.h"
#include "base/endian.h"
#include "base/log.h"

namespace imgstream::profile {

namespace {

constexpr size_t kHeaderCrcAt = kTraceHeaderBytes - 4;
constexpr uint32_t kRegionSizeMin = 4096;
constexpr uint32_t kRegionSizeMax = 1u << 30;

void put_record(std::byte* p, const TraceRecord& r) {
  le::put64(p, r.time_ns);
  le::put64(p + 8, r.offset);
  le::put32(p + 16, r.length);
  le::put32(p + 20, r.flags);
}

TraceRecord get_record(const std::byte* p) {
  return TraceRecord{le::get64(p), le::get64(p + 8), le::get32(p + 16), le::get32(p + 20)};
}

Error corrupt(const std::string& name, uint64_t at, std::string_view what) {
  return Error::invalid("trace " + name + ": " + std::string(what) + " at byte " +
                        std::to_string(at));
}

Result<TraceHeader> parse_header(std::span<const std::byte> b, const std::string& name) {
  if (b.size() < kTraceHeaderBytes)
    return Error::invalid("trace " + name + ": shorter than its header (" +
                          std::to_string(b.size()) + " bytes)");
  if (std::memcmp(b.data(), kTraceMagic, sizeof kTraceMagic) != 0)
    return Error::invalid("trace " + name + ": not a trace file (bad magic)");
  if (crc32c(b.first(kHeaderCrcAt)) != le::get32(b.data() + kHeaderCrcAt))
    return corrupt(name, 0, "header CRC mismatch");
  const uint32_t version = le::get32(b.data() + 8);
  if (version != kTraceVersion)
    return Error::invalid("trace " + name + ": unsupported version " + std::to_string(version));
  if (le::get32(b.data() + 12) != kTraceHeaderBytes) return corrupt(name, 12, "bad header size");
  TraceHeader h;
  h.image_size = le::get64(b.data() + 16);
  h.region_size = le::get32(b.data() + 24);
  h.flags = le::get32(b.data() + 28);
  h.start_time_ns = le::get64(b.data() + 32);
  const bool region_ok =
      h.region_size == 0 || (h.region_size >= kRegionSizeMin && h.region_size <= kRegionSizeMax &&
                             (h.region_size & (h.region_size - 1)) == 0);
  if (!region_ok) return corrupt(name, 24, "bad region size");
  if ((h.flags & ~kTraceFlagStreaming) != 0) return corrupt(name, 28, "unknown flags");
  if ((h.flags & kTraceFlagStreaming) && h.region_size == 0)
    return corrupt(name, 28, "streaming trace without a region size");
  for (size_t i = 40; i < kHeaderCrcAt; ++i)
    if (b[i] != std::byte{0}) return corrupt(name, i, "reserved header byte not zero");
  return h;
}

bool record_valid(const TraceHeader& h, const TraceRecord& r) {
  return r.length > 0 && r.offset <= h.image_size && r.length <= h.image_size - r.offset &&
         (r.flags & ~kRecordLocal) == 0;
}

}  // namespace

std::vector<std::byte> encode_trace_header(const TraceHeader& h) {
  std::vector<std::byte> b(kTraceHeaderBytes);
  std::memcpy(b.data(), kTraceMagic, sizeof kTraceMagic);
  le::put32(b.data() + 8, kTraceVersion);
  le::put32(b.data() + 12, kTraceHeaderBytes);
  le::put64(b.data() + 16, h.image_size);
  le::put32(b.data() + 24, h.region_size);
  le::put32(b.data() + 28, h.flags);
  le::put64(b.data() + 32, h.start_time_ns);
  le::put32(b.data() + kHeaderCrcAt, crc32c(std::span(b).first(kHeaderCrcAt)));
  return b;
}

std::vector<std::byte> encode_trace_block(std::span<const TraceRecord> records) {
  IMG_CHECK(!records.empty() && records.size() <= kTraceBlockRecordsMax);
  std::vector<std::byte> b(kTraceBlockHeaderBytes + records.size() * kTraceRecordBytes);
  le::put32(b.data(), kTraceBlockMagic);
  le::put32(b.data() + 4, static_cast<uint32_t>(records.size()));
  for (size_t i = 0; i < records.size(); ++i)
    put_record(b.data() + kTraceBlockHeaderBytes + i * kTraceRecordBytes, records[i]);
  // The CRC covers the block with its CRC field zero.
  le::put32(b.data() + 12, crc32c(b));
  return b;
}

Result<Trace> parse_trace(std::span<const std::byte> bytes, const std::string& name) {
  Trace t;
  t.header = TRY(parse_header(bytes, name));
  uint64_t at = kTraceHeaderBytes;
  while (at < bytes.size()) {
    const std::span<const std::byte> rest = bytes.subspan(at);
    if (rest.size() < kTraceBlockHeaderBytes) {
      t.torn_tail = true;
      break;
    }
    const uint32_t count = le::get32(rest.data() + 4);
    const bool shape_ok = le::get32(rest.data()) == kTraceBlockMagic && count > 0 &&
                          count <= kTraceBlockRecordsMax && le::get32(rest.data() + 8) == 0;
    const size_t len = kTraceBlockHeaderBytes + size_t{count} * kTraceRecordBytes;
    // A block that runs past the end is the torn tail; one that fits must check out
    // unless it is the last (a torn write may leave a full-length block of garbage).
    if (shape_ok && len > rest.size()) {
      t.torn_tail = true;
      break;
    }
    bool crc_ok = false;
    if (shape_ok) {
      constexpr std::byte kZeros[4] = {};
      uint32_t c = crc32c(rest.first(12));
      c = crc32c(kZeros, c);
      c = crc32c(rest.subspan(kTraceBlockHeaderBytes, len - kTraceBlockHeaderBytes), c);
      crc_ok = c == le::get32(rest.data() + 12);
    }
    if (!shape_ok || !crc_ok) {
      if (shape_ok && len == rest.size()) {
        t.torn_tail = true;
        break;
      }
      return corrupt(name, at, shape_ok ? "record block CRC mismatch" : "bad record block header");
    }
    for (uint32_t i = 0; i < count; ++i) {
      const uint64_t rec_at = kTraceBlockHeaderBytes + uint64_t{i} * kTraceRecordBytes;
      TraceRecord r = get_record(rest.data() + rec_at);
      if (!record_valid(t.header, r)) return corrupt(name, at + rec_at, "invalid record");
      t.records.push_back(r);
    }
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
