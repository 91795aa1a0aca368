// Helpers of the golden-file tests of every framed format (docs/*-format.md): bytes written
// by the encoders as they were before the formats shared one codec (base/codec.h), kept in
// tests/fixtures/formats/. Each must decode to the values it was written from, and those
// values must encode to the very same bytes: old files still read, new files are the same.
// The tests live beside each format: src/{store,migrate,pack,profile}/*_golden_test.cc.
//
// IMGSTREAM_WRITE_GOLDEN=1 ./unit_tests --gtest_filter='FormatGolden.*' writes the files
// anew instead. Only do that for a new variant, with the encoders of a released version:
// rewriting a file to match a changed encoder defeats the test.
#pragma once

#include <gtest/gtest.h>
#include <zstd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <vector>

#include "base/sha256.h"

namespace imgstream::golden_testing {

using Bytes = std::vector<std::byte>;

inline std::string fixture_path(const std::string& name) {
  return std::string(IMGSTREAM_SOURCE_DIR) + "/tests/fixtures/formats/" + name;
}

inline bool write_mode() {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): imgstream never calls setenv (run_server.cc)
  const char* w = std::getenv("IMGSTREAM_WRITE_GOLDEN");
  return w != nullptr && std::string(w) == "1";
}

// The golden file `name`. In write mode it is first written from `encoded`.
inline Bytes golden(const std::string& name, const Bytes& encoded) {
  const std::string path = fixture_path(name);
  if (write_mode()) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    EXPECT_NE(f, nullptr) << path;
    if (f == nullptr) return {};
    EXPECT_EQ(std::fwrite(encoded.data(), 1, encoded.size(), f), encoded.size());
    std::fclose(f);
  }
  Bytes b;
  std::FILE* f = std::fopen(path.c_str(), "rb");
  EXPECT_NE(f, nullptr) << "missing golden file " << path;
  if (f == nullptr) return b;
  std::byte buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) b.insert(b.end(), buf, buf + n);
  std::fclose(f);
  return b;
}

// Arbitrary but fixed bytes: a digest or a string that is not all zeros.
inline Digest digest(uint8_t seed) {
  Digest d;
  for (size_t i = 0; i < d.size(); ++i) d[i] = std::byte(uint8_t(seed + 37 * i));
  return d;
}

inline std::string text(size_t n, char first) {
  std::string s(n, ' ');
  for (size_t i = 0; i < n; ++i) s[i] = char(first + i % 26);
  return s;
}

inline Bytes cat(std::initializer_list<Bytes> parts) {
  Bytes b;
  for (const Bytes& p : parts) b.insert(b.end(), p.begin(), p.end());
  return b;
}

inline Bytes unzstd(const Bytes& z, size_t raw_bytes) {
  Bytes raw(raw_bytes);
  const size_t n = ZSTD_decompress(raw.data(), raw.size(), z.data(), z.size());
  EXPECT_FALSE(ZSTD_isError(n));
  EXPECT_EQ(n, raw_bytes);
  return raw;
}

// A file the imgstream binary wrote, kept zstd-compressed (tests/fixtures/formats/).
inline Bytes binary_file(const std::string& name) {
  const Bytes z = golden(name, {});
  const unsigned long long n = ZSTD_getFrameContentSize(z.data(), z.size());
  EXPECT_LT(n, 1u << 20) << name;
  if (n >= (1u << 20)) return {};
  return unzstd(z, n);
}

}  // namespace imgstream::golden_testing
