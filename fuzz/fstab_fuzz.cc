// Fuzzes parse_fstab and parse_device_ref (src/patch/fstab.h): an image's /etc/fstab,
// which steers which partition `imgstream patch` edits as /boot. Untrusted: the image
// comes from anywhere. Invariants: no crash, entries bounded by the line limit, every
// field of an entry non-empty, a partition reference names a partition number.
#include <cstdint>
#include <string_view>

#include "fuzz_check.h"
#include "patch/fstab.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace imgstream::patch;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto entries = parse_fstab(text);
  FUZZ_CHECK(entries.size() <= kFstabLinesMax);
  for (const auto& e : entries) {
    FUZZ_CHECK(!e.spec.empty() && !e.dir.empty() && !e.type.empty());
    const auto ref = parse_device_ref(e.spec);
    if (ref.kind == DeviceRef::Kind::Partition)
      FUZZ_CHECK(ref.partition > 0 && ref.partition < 1000);
  }
  (void)parse_device_ref(text);
  return 0;
}
