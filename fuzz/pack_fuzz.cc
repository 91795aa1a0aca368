// Fuzzes the pack readers (docs/pack-format.md): a pack comes from the network, so every
// byte of it is untrusted. The input is a whole pack file. Before opening it, the target
// makes the index hash, the identity and the header CRC agree with the (fuzzed) index,
// so that the fuzzer gets past the checksums into the index checks, the chunk decoder
// (zstd) and the hash checks of every chunk.
// Invariants: no crash or out-of-bounds access; what opens is self-consistent (entries
// inside the file, the compact index agreeing with the entries it was decoded from); a
// chunk read that succeeds returns bytes with the entry's hash. The pack is also at
// /base.pack, so that a base hint can lead back to it (a loop, or a chain of one image),
// and its base hint, resolved for a pack on a server, never names a local path.
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "base/crc32c.h"
#include "base/endian.h"
#include "base/env_memory.h"
#include "fuzz_check.h"
#include "pack/pack_format.h"
#include "pack/pack_reader.h"

namespace {

using namespace imgstream;
using namespace imgstream::pack;

// Rewrites the header's digests and CRC to match the index in the input. Two ways, chosen
// by the input's length, so that both the index's zstd frame and the entries behind it get
// fuzzed: an even-length input holds the index's entries raw at the index offset (they are
// compressed here and the file cut after them); an odd-length one holds the stored frame
// itself (only its hash, and the identity if it decompresses, are fixed).
// Returns the raw entries when they are known (empty otherwise).
std::vector<std::byte> fix_up(std::vector<std::byte>& b) {
  if (b.size() < kPackHeaderBytes) return {};
  std::byte* p = b.data();
  const uint64_t image = le::get64(p + 16);
  const uint32_t chunk = le::get32(p + 24);
  if (chunk < kChunkBytesMin || chunk > kChunkBytesMax || image == 0 || image > (1ull << 40))
    return {};
  const uint64_t count = (image + chunk - 1) / chunk;
  const uint64_t off = le::get64(p + 40);
  if (count > 4096 || off < kPackHeaderBytes || off > b.size()) return {};
  le::put64(p + 32, count);
  std::vector<std::byte> raw;
  if (b.size() % 2 == 0) {
    if (count * kIndexEntryBytes > b.size() - off) return {};
    raw.assign(b.begin() + static_cast<ptrdiff_t>(off),
               b.begin() + static_cast<ptrdiff_t>(off + count * kIndexEntryBytes));
    std::vector<std::byte> z(ZSTD_compressBound(raw.size()));
    const size_t n = ZSTD_compress(z.data(), z.size(), raw.data(), raw.size(), 1);
    if (ZSTD_isError(n)) return {};
    z.resize(n);
    b.resize(off);
    b.insert(b.end(), z.begin(), z.end());
    p = b.data();
  } else {
    raw.resize(count * kIndexEntryBytes);
    const size_t n = ZSTD_decompress(raw.data(), raw.size(), p + off, b.size() - off);
    if (ZSTD_isError(n) || n != raw.size()) raw.clear();
  }
  const auto index = std::span<const std::byte>(b).subspan(off);
  le::put64(p + 48, index.size());
  const Digest ih = sha256(index);
  std::memcpy(p + 112, ih.data(), 32);
  if (!raw.empty()) {
    std::vector<IndexEntry> entries(count);
    for (uint64_t i = 0; i < count; ++i)
      std::memcpy(entries[i].hash.data(), raw.data() + i * kIndexEntryBytes, 32);
    const Digest id = identity_of(image, chunk, entries);
    std::memcpy(p + 80, id.data(), 32);
    // A pack with a base whose base identity starts with 0 names itself: with the hint
    // "base.pack" (the same bytes), the chain loops.
    if ((le::get32(p + 12) & kFlagHasBase) && p[144] == std::byte{0})
      std::memcpy(p + 144, id.data(), 32);
  }
  le::put32(p + kPackHeaderBytes - 4,
            crc32c(std::span<const std::byte>(b).first(kPackHeaderBytes - 4)));
  return raw;
}

}  // namespace

// What a pack on a server names as its base is on that server.
void check_remote_hint(const std::vector<std::byte>& b) {
  if (b.size() < kPackHeaderBytes) return;
  const size_t n = std::min<size_t>(le::get16(b.data() + 176), kBaseHintBytesMax);
  const std::string hint(reinterpret_cast<const char*>(b.data() + 178), n);
  auto where = resolve_base_hint("http://host:1/dir/p.pack", hint);
  if (where) FUZZ_CHECK(where->starts_with("http://host:1/"));
}

// The decoded index agrees with the raw entries it came from.
void check_index(const Pack& p, const std::vector<std::byte>& raw) {
  const ChunkIndex& ix = p.index();
  FUZZ_CHECK(ix.size() == p.header().chunk_count());
  FUZZ_CHECK(ix.entries_kept() <= ix.size());
  if (raw.size() != ix.size() * kIndexEntryBytes) return;
  for (uint64_t c = 0; c < ix.size(); ++c) {
    const IndexEntry e = ix[c];
    const std::byte* q = raw.data() + c * kIndexEntryBytes;
    FUZZ_CHECK(std::memcmp(e.hash.data(), q, 32) == 0 && e.offset == le::get64(q + 32) &&
               e.length == le::get32(q + 40) && static_cast<uint8_t>(e.kind) == uint8_t(q[44]));
  }
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // (An empty input comes with data == nullptr: no memcpy from it.)
  std::vector<std::byte> b(reinterpret_cast<const std::byte*>(data),
                           reinterpret_cast<const std::byte*>(data) + size);
  // Plain decoders on the raw bytes first.
  if (auto h = decode_header(b)) {
    auto again = decode_header(encode_header(*h));
    FUZZ_CHECK(again && again->image_size == h->image_size && again->index_offset == h->index_offset);
  }
  check_remote_hint(b);
  const std::vector<std::byte> raw = fix_up(b);
  MemEnv env;
  for (const char* name : {"/p.pack", "/base.pack"}) {
    auto f = env.open(name, OpenMode::CreateOrOpen);
    FUZZ_CHECK(f.has_value());
    FUZZ_CHECK(write_all_at(**f, 0, b).has_value());
  }
  auto p = Pack::open(env, "/p.pack");
  if (!p) return 0;
  const PackHeader& h = (*p)->header();
  FUZZ_CHECK(h.index_offset + h.index_length <= b.size());
  check_index(**p, raw);
  if ((*p)->base()) FUZZ_CHECK((*p)->base()->index().size() == 0);  // let go once mapped
  if (h.image_size > (16u << 20)) return 0;  // keep each run fast: reads below touch it all
  for (uint64_t c = 0; c < (*p)->index().size(); ++c) {
    const IndexEntry& e = (*p)->index()[c];
    if (e.stored()) FUZZ_CHECK(e.offset >= kPackHeaderBytes && e.offset + e.length <= h.index_offset);
    std::vector<std::byte> out(h.chunk_bytes(c));
    if ((*p)->read_chunks(c, 1, out) && e.kind != ChunkKind::Zero) FUZZ_CHECK(sha256(out) == e.hash);
  }
  (void)(*p)->verify(nullptr);
  return 0;
}
