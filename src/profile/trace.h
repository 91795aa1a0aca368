// Read traces (docs/trace-format.md): every read a client made of an exported image, with
// its time, range and whether it was served from local data. `--trace FILE` on `serve`
// and `stream` writes one; boot profiles are built from them.
//
// Writing is meant to stay on in production: TraceWriter::record() appends to an
// in-memory buffer under a mutex (no syscall, no allocation in the steady state) and a
// background thread writes the buffer out in CRC-protected blocks every
// kTraceFlushInterval or as soon as a block's worth is waiting. A torn tail (the process
// or the machine died mid-write) loses at most the last block; read_trace() keeps the rest.
//
// Thread safety: record() may be called from any number of threads at once; close() from
// one thread, after the last record() has returned.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "base/env.h"
#include "base/limits.h"
#include "base/output_check.h"
#include "base/result.h"

namespace imgstream::profile {

inline constexpr char kTraceMagic[8] = {'I', 'M', 'G', 'T', 'R', 'A', 'C', 'E'};
// What --trace writes, for check_output: an existing trace may be replaced without --force.
inline constexpr OutputKind kTraceOutput{"trace",
                                         std::string_view(kTraceMagic, sizeof kTraceMagic)};
inline constexpr uint32_t kTraceVersion = 1;
inline constexpr size_t kTraceHeaderBytes = 64;
inline constexpr size_t kTraceBlockHeaderBytes = 16;
inline constexpr size_t kTraceRecordBytes = 24;
// A block holds 1..kTraceBlockRecordsMax records.
inline constexpr uint32_t kTraceBlockRecordsMax = limits::kTraceBlockRecordsMax;
inline constexpr uint32_t kTraceBlockMagic = 0x4b4c4254;  // "TBLK" little-endian
inline constexpr std::chrono::milliseconds kTraceFlushInterval{100};
// Records waiting in memory beyond this are dropped (and counted): a stalled disk never
// makes the writer grow without bound. 1M records = 24 MiB.
inline constexpr size_t kTraceBufferedRecordsMax = limits::kTraceBufferedRecordsMax;
// read_trace() refuses larger files (about 178M records).
inline constexpr uint64_t kTraceFileBytesMax = limits::kTraceFileBytesMax;
static_assert(kTraceBufferedRecordsMax >= 4 * kTraceBlockRecordsMax);

// Header flags.
inline constexpr uint32_t kTraceFlagStreaming = 1;  // the local bit comes from a store
// Record flags.
inline constexpr uint32_t kRecordLocal = 1;  // every region of the read was present

struct TraceHeader {
  uint64_t image_size = 0;
  uint32_t region_size = 0;    // 0: not a streamed image
  uint32_t flags = 0;          // kTraceFlag*
  uint64_t start_time_ns = 0;  // wall clock (ns since 1970) when the trace began
};

struct TraceRecord {
  uint64_t time_ns = 0;  // monotonic, since the trace began
  uint64_t offset = 0;
  uint32_t length = 0;
  uint32_t flags = 0;  // kRecord*
  bool operator==(const TraceRecord&) const = default;
};

struct Trace {
  TraceHeader header;
  std::vector<TraceRecord> records;  // in file order (roughly time order)
  bool torn_tail = false;            // a damaged or short last block was dropped
};

std::vector<std::byte> encode_trace_header(const TraceHeader& h);
// Encodes one block of 1..kTraceBlockRecordsMax records.
std::vector<std::byte> encode_trace_block(std::span<const TraceRecord> records);

// Decodes a whole trace file; `name` names it in errors. A corrupt header, a corrupt
// block that is not the last, or an invalid record is an error; a last block that is
// short or fails its CRC is dropped (torn_tail).
Result<Trace> parse_trace(std::span<const std::byte> bytes, const std::string& name);
Result<Trace> read_trace(Env& env, const std::string& path);

class TraceWriter {
 public:
  // Creates (or truncates) `path` and writes the header; start_time_ns is filled in.
  // Whether `path` may be replaced is the caller's to check first (check_output with
  // kTraceOutput: never an input, never a file of another kind unless --force).
  static Result<std::unique_ptr<TraceWriter>> create(Env& env, const std::string& path,
                                                     TraceHeader h);
  ~TraceWriter();
  TraceWriter(const TraceWriter&) = delete;
  TraceWriter& operator=(const TraceWriter&) = delete;

  // Nanoseconds since the trace began (steady clock).
  uint64_t now_ns() const;
  // Appends a record. Never blocks on I/O.
  void record(const TraceRecord& r);
  // Writes everything buffered, syncs and stops the thread. Idempotent; the first error
  // of any write is returned.
  Result<void> close();

  uint64_t dropped() const;
  const std::string& path() const { return path_; }

 private:
  TraceWriter(std::unique_ptr<File> f, std::string path);
  void flush_loop();
  // Writes `records` as blocks at the end of the file; remembers the first error.
  void write_blocks(std::span<const TraceRecord> records);

  std::unique_ptr<File> file_;
  const std::string path_;
  const std::chrono::steady_clock::time_point start_;
  uint64_t file_end_ = kTraceHeaderBytes;  // only the flush thread (or close) touches it
  Result<void> write_error_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<TraceRecord> buffer_;  // guarded by mu_
  uint64_t dropped_ = 0;             // guarded by mu_
  bool stopping_ = false;            // guarded by mu_
  bool closed_ = false;
  std::thread thread_;
};

}  // namespace imgstream::profile
