// The fingerprint of a source that has no identity of its own (an NBD export, a file):
// how a store knows its image when the source cannot name it (docs/store-format.md).
//
//   Ends      SHA-256 of the size and the first and last 64 KiB (stores made before
//             2026-11-30; checked their way on resume)
//   Sampled   the same, then the first 64 KiB of every partition that an MBR or a GPT in
//             the first 64 KiB names (at most kFingerprintPartitionsMax: their superblocks,
//             which any change to a file system rewrites), then kFingerprintSamples blocks
//             of 4 KiB spread evenly over the image. All read at once: one round trip.
//
// Neither reads the whole image: a change that touches none of the bytes read goes
// unseen. Sampled catches what a rebuilt or updated image of the same size changes in
// practice (file system superblocks, partition tables, scattered data).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "base/limits.h"
#include "base/result.h"
#include "source/source.h"
#include "store/store_format.h"

namespace imgstream::stream {

inline constexpr uint64_t kFingerprintEdgeBytes = 64 * 1024;
inline constexpr size_t kFingerprintPartitionsMax = limits::kFingerprintPartitionsMax;
inline constexpr size_t kFingerprintSamples = 64;
inline constexpr uint64_t kFingerprintSampleBytes = 4096;

// Byte offsets of the partitions that the MBR (and, behind a protective MBR, the GPT) in
// `head`, the image's first bytes, names; each below image_size, at most
// kFingerprintPartitionsMax, in table order. Untrusted bytes: anything malformed yields
// fewer offsets, never a read out of bounds.
std::vector<uint64_t> partition_starts(std::span<const std::byte> head, uint64_t image_size);

// Fails with EINTR "interrupted" when the process is asked to stop (base/stop.h), within
// a second: it closes `src` then (a stop request ends the reads waiting on it).
Result<store::Fingerprint> fingerprint(source::Source& src, store::FingerprintKind kind);

}  // namespace imgstream::stream
