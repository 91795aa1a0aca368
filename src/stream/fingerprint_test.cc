#include "stream/fingerprint.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>

#include "base/endian.h"
#include "base/stop.h"

namespace imgstream::stream {
namespace {

using store::FingerprintKind;
using Bytes = std::vector<std::byte>;
constexpr uint64_t kSize = 64u << 20;

// An image in memory as a Source.
class MemSource final : public source::Source {
 public:
  explicit MemSource(Bytes& data) : data_(data) {}
  uint64_t size() const override { return data_.size(); }
  const std::string& uri() const override { return uri_; }
  void read_async(uint64_t offset, std::span<std::byte> buf, source::ReadDone done) override {
    ++reads;
    if (offset + buf.size() > data_.size()) return done(Error::invalid("past the end"));
    std::memcpy(buf.data(), data_.data() + offset, buf.size());
    done(ok());
  }
  int reads = 0;

 private:
  Bytes& data_;
  std::string uri_ = "memory";
};

void mbr_entry(Bytes& img, int i, uint8_t type, uint32_t first_lba) {
  std::byte* e = img.data() + 446 + 16 * i;
  e[4] = std::byte{type};
  le::put32(e + 8, first_lba);
  img[510] = std::byte{0x55};
  img[511] = std::byte{0xAA};
}

TEST(Fingerprint, PartitionStartsFromAnMbr) {
  Bytes img(kSize);
  EXPECT_TRUE(partition_starts(std::span(img).first(65536), kSize).empty()) << "no signature";
  mbr_entry(img, 0, 0x83, 2048);
  mbr_entry(img, 2, 0x83, 40960);
  mbr_entry(img, 3, 0x83, uint32_t(kSize / 512));  // past the end: left out
  EXPECT_EQ(partition_starts(std::span(img).first(65536), kSize),
            (std::vector<uint64_t>{2048 * 512, 40960 * 512}));
}

TEST(Fingerprint, PartitionStartsFromAGpt) {
  Bytes img(kSize);
  mbr_entry(img, 0, 0xEE, 1);  // protective
  std::byte* h = img.data() + 512;
  std::memcpy(h, "EFI PART", 8);
  le::put64(h + 72, 2);    // entries at LBA 2
  le::put32(h + 80, 128);  // 128 entries of 128 bytes: 16 KiB, within the head
  le::put32(h + 84, 128);
  const auto entry = [&](int i, uint64_t first_lba) {
    std::byte* e = img.data() + 1024 + 128 * i;
    e[0] = std::byte{1};  // a type GUID: used
    le::put64(e + 32, first_lba);
  };
  entry(0, 2048);
  entry(3, 10000);
  EXPECT_EQ(partition_starts(std::span(img).first(65536), kSize),
            (std::vector<uint64_t>{2048 * 512, 10000 * 512}));
  // Entries said to lie beyond the bytes given are not read.
  le::put64(h + 72, 1000);
  EXPECT_TRUE(partition_starts(std::span(img).first(65536), kSize).empty());
  // Absurd entry sizes are refused.
  le::put64(h + 72, 2);
  le::put32(h + 84, 0);
  EXPECT_TRUE(partition_starts(std::span(img).first(65536), kSize).empty());
}

// A change of a partition's superblock (the image rebuilt or updated, same size, same
// partition table and ends) changes the Sampled fingerprint, not the Ends one.
TEST(Fingerprint, SampledSeesAChangedSuperblockThatEndsMisses) {
  Bytes img(kSize);
  mbr_entry(img, 0, 0x83, 20480);  // at 10 MiB
  MemSource src(img);
  auto ends = fingerprint(src, FingerprintKind::Ends);
  auto sampled = fingerprint(src, FingerprintKind::Sampled);
  ASSERT_TRUE(ends && sampled);
  EXPECT_NE(*ends, *sampled);
  img[20480 * 512 + 1024 + 48] = std::byte{0x42};  // an ext4 superblock's write time
  EXPECT_EQ(*fingerprint(src, FingerprintKind::Ends), *ends);
  EXPECT_NE(*fingerprint(src, FingerprintKind::Sampled), *sampled);
  // And a change anywhere a sample falls: 64 spread blocks.
  img[20480 * 512 + 1024 + 48] = std::byte{0};
  ASSERT_EQ(*fingerprint(src, FingerprintKind::Sampled), *sampled);
  img[kSize / 2 + 100] = std::byte{7};
  EXPECT_NE(*fingerprint(src, FingerprintKind::Sampled), *sampled);
}

TEST(Fingerprint, TinyImagesAndReadsAtOnce) {
  for (uint64_t n : {1u, 511u, 4096u, 70000u}) {
    Bytes img(n, std::byte{3});
    MemSource src(img);
    EXPECT_TRUE(fingerprint(src, FingerprintKind::Sampled)) << n;
  }
  Bytes img(kSize);
  MemSource src(img);
  ASSERT_TRUE(fingerprint(src, FingerprintKind::Sampled));
  EXPECT_EQ(src.reads, 2 + int(kFingerprintSamples)) << "ends, then the samples";
}

// A source whose reads never end until it is closed (a server that stopped answering).
class StalledSource final : public source::Source {
 public:
  uint64_t size() const override { return kSize; }
  const std::string& uri() const override { return uri_; }
  void read_async(uint64_t, std::span<std::byte>, source::ReadDone done) override {
    std::lock_guard lock(mu_);
    if (closed_) return done(Error{ESHUTDOWN, "closed"});
    waiting_.push_back(std::move(done));
  }
  void close() override {
    std::vector<source::ReadDone> w;
    {
      std::lock_guard lock(mu_);
      closed_ = true;
      w.swap(waiting_);
    }
    for (auto& d : w) d(Error{ESHUTDOWN, "closed"});
  }

 private:
  std::mutex mu_;
  bool closed_ = false;
  std::vector<source::ReadDone> waiting_;
  std::string uri_ = "stalled";
};

// Ctrl-C while the fingerprint waits on a source that does not answer: it closes the
// source and fails with EINTR at once, not when the source gives up (30 s).
TEST(Fingerprint, StopRequestEndsItAtOnce) {
  StalledSource src;
  std::thread stopper([] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    request_process_stop();
  });
  const auto start = std::chrono::steady_clock::now();
  auto fp = fingerprint(src, FingerprintKind::Sampled);
  const auto took = std::chrono::steady_clock::now() - start;
  stopper.join();
  reset_stop_for_testing();
  ASSERT_FALSE(fp);
  EXPECT_EQ(fp.error().code, EINTR);
  EXPECT_NE(fp.error().message.find("stalled: interrupted"), std::string::npos)
      << fp.error().message;
  EXPECT_LT(took, std::chrono::seconds(1));
}

}  // namespace
}  // namespace imgstream::stream
