// seed_store: fills a new store streamed from a pack with the chunks a local image
// already has (an older version of the image, or another store's data), so that only the
// chunks that differ come over the network — as `casync extract --seed` does.
//
// The seed is hashed in chunks of the pack's chunk size at every chunk-aligned offset; a
// pack chunk whose SHA-256 is among them is copied from the seed and marked present. The
// copy is checked by the same hash, so a seed can never put wrong bytes in the store.
#pragma once

#include <cstdint>
#include <string>

#include "base/env.h"
#include "pack/pack_reader.h"
#include "store/local_store.h"

namespace imgstream::pack {

struct SeedReport {
  uint64_t chunks = 0;  // chunks copied from the seed
  uint64_t bytes = 0;
  uint64_t seed_bytes_hashed = 0;
};

// `seed` is a raw image file, or a store directory (its present regions are used).
// The store's region size must be the pack's chunk size; nothing is done otherwise.
Result<SeedReport> seed_store(Env& env, const Pack& pack, store::LocalStore& store,
                              const std::string& seed);

}  // namespace imgstream::pack
