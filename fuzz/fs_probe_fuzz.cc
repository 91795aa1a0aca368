// Fuzzes probe_fs (src/disk/fs_probe.h): a partition's first bytes, which decide whether
// `imgstream patch` may edit it. Untrusted. Invariants: no crash or out-of-bounds read;
// ext fields only for ext kinds; the block size is one ext4 knows.
#include <cstdint>
#include <span>

#include "disk/fs_probe.h"
#include "fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace imgstream::disk;
  const auto info = probe_fs(std::as_bytes(std::span(data, size)));
  if (is_ext(info.kind)) {
    FUZZ_CHECK(info.ext.block_bytes() >= 1024 && info.ext.block_bytes() <= 65536);
    FUZZ_CHECK(info.ext.label.size() <= 16 && info.ext.last_mounted.size() <= 64);
    FUZZ_CHECK(info.ext.uuid_text().size() == 36);
  } else {
    FUZZ_CHECK(info.ext.blocks == 0 && info.ext.label.empty());
  }
  (void)fs_kind_name(info.kind);
  return 0;
}
