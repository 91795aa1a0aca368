// write_pack: an image file -> a pack (docs/pack-format.md).
//
// Chunks are read, hashed and compressed on a pool of threads, several at a time, and
// written by one thread in the pack's physical order: the boot set's chunks first, in the
// profile's order (one contiguous range, so a streaming machine can fetch it in one
// request), then the rest in address order. All-zero chunks are a flag; a chunk whose
// bytes were written already (same SHA-256) is written once; with a base pack, chunks the
// base chain has are not written at all. Memory is bounded by the chunks in flight.
//
// Crash safety: the pack is written to OUTPUT.tmp, made durable and renamed: OUTPUT is
// either the old file or the whole new pack. OUTPUT.tmp is removed on every failure, and
// a stop request (base/stop.h: SIGINT) ends the work within a chunk or so ("interrupted",
// EINTR). The output is checked before any work: never the image, the base or a pack of
// its chain, never a directory, always in a writable directory.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "base/env.h"
#include "base/output_check.h"
#include "pack/pack_format.h"

namespace imgstream::pack {

// Level 6, not zstd's default 3: each chunk is compressed alone, without the window of
// the chunks before it, and a higher level wins back most of that. Measured at 128 KiB
// chunks (bench/pack.sh, docs/BENCHMARKS.md): an ext4 of /usr/lib packs to 1.03x
// `zstd -3` of the whole image at level 6 against 1.11x at level 3, at about half the
// packing speed (still ~280 MB/s on 2 cores); unpacking speed does not depend on it.
inline constexpr int kLevelDefault = 6;
inline constexpr unsigned kChunksInFlightPerThread = 4;
// What `pack` writes, for check_output: an existing pack may be replaced without --force.
inline constexpr OutputKind kPackOutput{"pack", kPackMagic};

struct PackWriteOptions {
  std::string image;
  std::string output;
  uint32_t chunk_size = kChunkBytesDefault;
  int level = kLevelDefault;
  unsigned threads = 0;  // 0: one per core
  // The boot set, as byte ranges in the order they are needed (a profile's runs).
  std::vector<std::pair<uint64_t, uint64_t>> boot_ranges;
  std::string base;  // an older pack of the same image family, or empty
  // Called from the writing thread with the image bytes done so far.
  std::function<void(uint64_t done, uint64_t total)> progress;
};

struct PackWriteReport {
  PackHeader header;
  uint64_t chunks = 0;
  uint64_t zero_chunks = 0;
  uint64_t stored_chunks = 0;     // written into this pack
  uint64_t duplicate_chunks = 0;  // the same bytes as a chunk written before
  uint64_t base_chunks = 0;       // found in the base chain
  uint64_t raw_chunks = 0;        // stored uncompressed (zstd would not shrink them)
  uint64_t stored_bytes = 0;      // chunk bytes written
  uint64_t file_bytes = 0;        // the whole pack file
};

Result<PackWriteReport> write_pack(Env& env, const PackWriteOptions& o);

}  // namespace imgstream::pack
