// Fuzzes partition_starts (src/stream/fingerprint.h): the MBR / GPT of a source's first
// bytes, which steer what a store's fingerprint reads. Untrusted: the image comes from
// anywhere. Invariants: no crash or out-of-bounds read; every offset is sector-aligned,
// inside the image and there are at most kFingerprintPartitionsMax of them.
#include <cstdint>
#include <cstring>
#include <span>

#include "fuzz_check.h"
#include "stream/fingerprint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  uint64_t image_size = 0;
  std::memcpy(&image_size, data, 8);
  const auto head = std::as_bytes(std::span(data + 8, size - 8));
  const auto starts = imgstream::stream::partition_starts(head, image_size);
  FUZZ_CHECK(starts.size() <= imgstream::stream::kFingerprintPartitionsMax);
  for (uint64_t at : starts) FUZZ_CHECK(at % 512 == 0 && at > 0 && at < image_size);
  return 0;
}
