// Fuzzes parse_trace (docs/trace-format.md), the decoder of read traces: a trace may come
// from another machine or a crashed writer. Invariants: no crash or out-of-bounds read;
// what decodes is valid (every record inside the image, known flags only) and encodes
// back to bytes that decode to the same header and records; cutting the re-encoded file
// inside its last block drops exactly that block and flags a torn tail.
#include "fuzz_check.h"
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "profile/trace.h"

namespace {

using namespace imgstream::profile;

std::vector<std::byte> encode(const Trace& t) {
  std::vector<std::byte> b = encode_trace_header(t.header);
  std::span<const TraceRecord> rs(t.records);
  for (size_t i = 0; i < rs.size(); i += kTraceBlockRecordsMax) {
    auto blk =
        encode_trace_block(rs.subspan(i, std::min<size_t>(kTraceBlockRecordsMax, rs.size() - i)));
    b.insert(b.end(), blk.begin(), blk.end());
  }
  return b;
}

bool same_header(const TraceHeader& a, const TraceHeader& b) {
  return a.image_size == b.image_size && a.region_size == b.region_size && a.flags == b.flags &&
         a.start_time_ns == b.start_time_ns;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
  auto t = parse_trace(in, "fuzz");
  if (!t) {
    FUZZ_CHECK(!t.error().message.empty());
    return 0;
  }
  FUZZ_CHECK(size >= kTraceHeaderBytes);
  for (const TraceRecord& r : t->records) {
    FUZZ_CHECK(r.length > 0 && r.offset <= t->header.image_size &&
               r.length <= t->header.image_size - r.offset);
    FUZZ_CHECK((r.flags & ~kRecordLocal) == 0);
  }
  const std::vector<std::byte> again_bytes = encode(*t);
  FUZZ_CHECK(again_bytes.size() <= size);
  auto again = parse_trace(again_bytes, "again");
  FUZZ_CHECK(again && !again->torn_tail && same_header(again->header, t->header) &&
             again->records == t->records);
  if (!t->records.empty()) {
    const size_t last = t->records.size() % kTraceBlockRecordsMax == 0
                            ? kTraceBlockRecordsMax
                            : t->records.size() % kTraceBlockRecordsMax;
    auto cut = parse_trace(std::span(again_bytes).first(again_bytes.size() - 1), "cut");
    FUZZ_CHECK(cut && cut->torn_tail && cut->records.size() == t->records.size() - last);
  }
  return 0;
}
