// CRC-32C (Castagnoli), the checksum of every record imgstream writes to disk: it catches
// torn and corrupted writes of the store's header and bitmap slots.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace imgstream {

// crc32c(data) of the whole buffer; pass a previous result as `seed` to continue.
uint32_t crc32c(std::span<const std::byte> data, uint32_t seed = 0);

}  // namespace imgstream
