// SHA-256 (OpenSSL): the content address of a pack chunk, the identity of an image, the
// fingerprint of a source.
#pragma once

#include <array>
#include <cstddef>
#include <cstring>
#include <memory>
#include <span>
#include <string>

namespace imgstream {

using Digest = std::array<std::byte, 32>;

Digest sha256(std::span<const std::byte> data);
// Lower-case hex; `bytes` < 32 gives a prefix (for messages).
std::string to_hex(const Digest& d, size_t bytes = 32);
bool is_zero(const Digest& d);

// For unordered containers keyed by digest: its first bytes are as good as any hash.
struct DigestHash {
  size_t operator()(const Digest& d) const {
    size_t h;
    std::memcpy(&h, d.data(), sizeof h);
    return h;
  }
};

// Incremental hashing.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(std::span<const std::byte> data);
  Digest finish();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

}  // namespace imgstream
