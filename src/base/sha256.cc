#include "base/sha256.h"

#include <openssl/evp.h>

#include "base/check.h"

namespace imgstream {

struct Sha256::Ctx {
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  ~Ctx() { EVP_MD_CTX_free(md); }
};

Sha256::Sha256() : ctx_(std::make_unique<Ctx>()) {
  IMG_CHECK(ctx_->md != nullptr && EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr) == 1);
}

Sha256::~Sha256() = default;

void Sha256::update(std::span<const std::byte> data) {
  IMG_CHECK(EVP_DigestUpdate(ctx_->md, data.data(), data.size()) == 1);
}

Digest Sha256::finish() {
  Digest d{};
  unsigned int len = 0;
  IMG_CHECK(EVP_DigestFinal_ex(ctx_->md, reinterpret_cast<unsigned char*>(d.data()), &len) == 1 &&
            len == d.size());
  return d;
}

Digest sha256(std::span<const std::byte> data) {
  Digest d{};
  unsigned int len = 0;
  IMG_CHECK(EVP_Digest(data.data(), data.size(), reinterpret_cast<unsigned char*>(d.data()),
                       &len, EVP_sha256(), nullptr) == 1 &&
            len == d.size());
  return d;
}

std::string to_hex(const Digest& d, size_t bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < bytes && i < d.size(); ++i) {
    s += kHex[std::to_integer<unsigned>(d[i]) >> 4];
    s += kHex[std::to_integer<unsigned>(d[i]) & 15];
  }
  return s;
}

bool is_zero(const Digest& d) {
  for (std::byte b : d)
    if (b != std::byte{0}) return false;
  return true;
}

}  // namespace imgstream
