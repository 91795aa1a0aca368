#include "stream/fingerprint.h"

#include <algorithm>
#include <cstring>

#include "base/check.h"
#include "base/endian.h"
#include "base/sha256.h"
#include "base/stop.h"

namespace imgstream::stream {

namespace {

constexpr uint64_t kSector = 512;

Error interrupted(const source::Source& src) {
  return Error{EINTR, "fingerprint of " + src.uri() + ": interrupted"};
}

// The GPT behind a protective MBR: header at LBA 1, entries where it says (only those
// within `head` are read).
void gpt_starts(std::span<const std::byte> head, uint64_t image_size, std::vector<uint64_t>& out) {
  if (head.size() < 2 * kSector || std::memcmp(head.data() + kSector, "EFI PART", 8) != 0) return;
  const std::byte* h = head.data() + kSector;
  const uint64_t entries_lba = le::get64(h + 72);
  const uint32_t count = le::get32(h + 80), entry_bytes = le::get32(h + 84);
  if (entry_bytes < 128 || entry_bytes > 4096 || entries_lba == 0 ||
      entries_lba > head.size() / kSector)
    return;
  const uint64_t base = entries_lba * kSector;
  for (uint64_t i = 0; i < count && out.size() < kFingerprintPartitionsMax; ++i) {
    const uint64_t at = base + i * entry_bytes;
    if (at + 128 > head.size()) break;
    const std::byte* e = head.data() + at;
    if (std::all_of(e, e + 16, [](std::byte b) { return b == std::byte{0}; })) continue;  // unused
    const uint64_t first_lba = le::get64(e + 32);
    if (first_lba != 0 && first_lba < image_size / kSector) out.push_back(first_lba * kSector);
  }
}

}  // namespace

std::vector<uint64_t> partition_starts(std::span<const std::byte> head, uint64_t image_size) {
  std::vector<uint64_t> out;
  if (head.size() < kSector || head[510] != std::byte{0x55} || head[511] != std::byte{0xAA})
    return out;
  for (int i = 0; i < 4; ++i) {
    const std::byte* e = head.data() + 446 + 16 * i;
    const uint8_t type = std::to_integer<uint8_t>(e[4]);
    if (type == 0) continue;
    if (type == 0xEE) {  // protective MBR: the GPT says where the partitions are
      gpt_starts(head, image_size, out);
      break;
    }
    const uint64_t first_lba = le::get32(e + 8);
    if (first_lba != 0 && first_lba < image_size / kSector) out.push_back(first_lba * kSector);
  }
  if (out.size() > kFingerprintPartitionsMax) out.resize(kFingerprintPartitionsMax);
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
