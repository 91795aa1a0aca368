// Fuzzes the patch journal reader (src/patch/patch_journal.h): the file a crash leaves
// beside an image, which recovery writes into the image. Untrusted: anything may lie at
// that path. The input is a journal file in a MemEnv beside a 64 KiB image of zeros;
// recovery runs on it. Invariants: no crash; a journal is either refused (not ours: left
// in place), discarded (the image untouched) or applied (and then it is removed); the
// image's size never changes.
#include <cstdint>
#include <span>

#include "base/env_memory.h"
#include "fuzz_check.h"
#include "patch/patch_journal.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace imgstream;
  using namespace imgstream::patch;
  constexpr uint64_t kImage = 64 * 1024;
  MemEnv env;
  auto img = env.open("/disk.img", OpenMode::CreateOrOpen);
  FUZZ_CHECK(img.has_value());
  FUZZ_CHECK((*img)->truncate(kImage).has_value());
  {
    auto j = env.open("/disk.img.imgstream-journal", OpenMode::CreateOrOpen);
    FUZZ_CHECK(j.has_value());
    if (size > 0)
      FUZZ_CHECK(write_all_at(**j, 0, std::as_bytes(std::span(data, size))).has_value());
  }
  auto r = recover_journal(env, journal_path("/disk.img"), **img, kImage);
  const bool still_there = env.exists("/disk.img.imgstream-journal").value();
  if (r) {
    FUZZ_CHECK(!still_there);
    if (r->state == JournalState::Incomplete) {
      std::vector<std::byte> b(kImage);
      FUZZ_CHECK(read_exact_at(**img, 0, b).has_value());
      for (auto x : b) FUZZ_CHECK(x == std::byte{0});
    }
  } else {
    FUZZ_CHECK(still_there);
  }
  FUZZ_CHECK((*img)->size().value() == kImage);
  return 0;
}
