// The pack tools behind `imgstream unpack` and `imgstream pack diff` (docs/pack-format.md):
// a pack back into a raw image, and what moving a store from one pack to another costs.
// The CLI parses arguments, calls these and prints; nothing here prints.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "base/env.h"
#include "base/output_check.h"
#include "base/result.h"
#include "pack/pack_reader.h"

namespace imgstream::pack {

// unpack writes raw images: no magic tells them from any other file.
inline constexpr OutputKind kRawImageOutput{"raw image", ""};
// Chunks one unpack task reads and writes; a few tasks per thread are in flight at most.
inline constexpr uint64_t kUnpackBatchChunks = 32;
inline constexpr unsigned kUnpackBatchesPerThread = 2;

// The files a pack reads from: it and every pack of its base chain (URLs among them are
// skipped by check_output: not local).
std::vector<std::string> chain_files(const Pack& p);

struct UnpackOptions {
  std::string output;  // the raw image to write
  Overwrite overwrite = Overwrite::SameKind;
  unsigned threads = 0;  // 0: one per core, at least 2
  // Called from the pool's threads, one at a time, with the image bytes done so far.
  std::function<void(uint64_t done, uint64_t total)> progress;
};

// Before any work: the output is not the pack or one of its chain, not a directory, in
// a writable directory, and (unless Overwrite::Force) not an existing non-empty file:
// raw images have no magic to recognise them by. An error here is the command line's.
Result<void> check_unpack_output(const Pack& p, const UnpackOptions& o);

// Writes the image `p` holds to o.output (check_unpack_output first). Zero chunks stay
// holes; every chunk is checked against its hash as it is read. The image goes to
// OUTPUT.tmp, made durable and renamed: OUTPUT is the old file or the whole image, and
// OUTPUT.tmp is removed on every failure. A stop request (base/stop.h) ends the work
// within a batch: EINTR "interrupted". Returns the image bytes written.
Result<uint64_t> unpack(Env& env, const Pack& p, const UnpackOptions& o);

// What a store holding OLD must fetch to hold NEW: NEW's distinct non-zero chunks that
// OLD's chain does not have, and their stored (compressed) bytes.
struct PackDiff {
  uint64_t distinct_chunks = 0;    // NEW's distinct non-zero chunks
  uint64_t shared_chunks = 0;      // ... that OLD's chain has
  uint64_t new_chunks = 0;         // ... that it lacks: to fetch
  uint64_t new_bytes_stored = 0;   // their bytes in NEW (compressed)
  uint64_t new_bytes_image = 0;    // their image bytes
  bool same_image = false;         // the two packs have the same identity
  nlohmann::json to_json() const;  // `pack diff --json`
};
PackDiff diff_packs(const Pack& old_pack, const Pack& new_pack);

}  // namespace imgstream::pack
