#include "stream/fingerprint.h"

#include <algorithm>
#include <cstring>

#include "base/check.h"
#include "base/endian.h"
#include "base/sha256.h"
#include "base/stop.h"
#include "disk/partition_table.h"

namespace imgstream::stream {

namespace {

constexpr uint64_t kSector = 512;

Error interrupted(const source::Source& src) {
  return Error{EINTR, "fingerprint of " + src.uri() + ": interrupted"};
}

}  // namespace

std::vector<uint64_t> partition_starts(std::span<const std::byte> head, uint64_t image_size) {
  std::vector<uint64_t> out;
  for (const disk::Partition& p : disk::read_partition_table(head).partitions) {
    if (out.size() == kFingerprintPartitionsMax) break;
    if (p.first_lba != 0 && p.first_lba < image_size / kSector) out.push_back(p.start());
  }
  return out;
}

Result<store::Fingerprint> fingerprint(source::Source& src, store::FingerprintKind kind) {
  // A stop request ends reads waiting on a slow source: closing it fails them at once.
  // The caller gives the source up then (open fails "interrupted").
  StopCallback close_on_stop([&src] { src.close(); });
  if (stop_requested()) return interrupted(src);
  auto read_all = [&](std::span<const source::Source::Piece> pieces) -> Result<void> {
    auto r = src.read_all(pieces);
    if (!r && stop_requested()) return interrupted(src);
    if (!r) return std::move(r).error().context("fingerprint of " + src.uri());
    return ok();
  };
  const uint64_t size = src.size();
  const uint64_t edge = std::min(kFingerprintEdgeBytes, size);
  std::vector<std::byte> buf(8 + 2 * edge);
  le::put64(buf.data(), size);
  std::vector<source::Source::Piece> pieces{{0, std::span(buf).subspan(8, edge)},
                                            {size - edge, std::span(buf).subspan(8 + edge, edge)}};
  TRY(read_all(pieces));
  if (kind == store::FingerprintKind::Ends) return sha256(buf);
  if (stop_requested()) return interrupted(src);

  // The partitions' starts (from the head just read), then evenly spread blocks.
  std::vector<std::pair<uint64_t, uint64_t>> more;  // offset, length
  for (uint64_t at : partition_starts(std::span(buf).subspan(8, edge), size))
    more.emplace_back(at, std::min(kFingerprintEdgeBytes, size - at));
  for (size_t i = 0; i < kFingerprintSamples; ++i) {
    const uint64_t at =
        size / kFingerprintSamples * i / kFingerprintSampleBytes * kFingerprintSampleBytes;
    more.emplace_back(at, std::min(kFingerprintSampleBytes, size - at));
  }
  uint64_t total = 0;
  for (auto [at, n] : more) total += n;
  IMG_CHECK(total <= (kFingerprintPartitionsMax + kFingerprintSamples) * kFingerprintEdgeBytes);
  std::vector<std::byte> samples(static_cast<size_t>(total));
  pieces.clear();
  for (uint64_t pos = 0; auto [at, n] : more) {
    pieces.push_back({at, std::span(samples).subspan(pos, n)});
    pos += n;
  }
  TRY(read_all(pieces));
  Sha256 h;
  h.update(buf);
  h.update(samples);
  return h.finish();
}

}  // namespace imgstream::stream
