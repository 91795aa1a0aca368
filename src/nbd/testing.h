// Helpers shared by the NBD unit tests and the fuzz targets: an in-memory Stream, an
// in-memory BlockDevice, and the client's side of the wire format. Header-only and free
// of gtest so that fuzz/*.cc can use it too.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/check.h"
#include "device/block_device.h"
#include "nbd/handshake.h"
#include "nbd/protocol.h"
#include "nbd/request.h"

namespace imgstream::nbd::testing {

using Bytes = std::vector<std::byte>;

inline void append_u16(Bytes& b, uint16_t v) {
  b.resize(b.size() + 2);
  put_u16(&b[b.size() - 2], v);
}
inline void append_u32(Bytes& b, uint32_t v) {
  b.resize(b.size() + 4);
  put_u32(&b[b.size() - 4], v);
}
inline void append_u64(Bytes& b, uint64_t v) {
  b.resize(b.size() + 8);
  put_u64(&b[b.size() - 8], v);
}
inline void append(Bytes& b, std::span<const std::byte> more) {
  b.insert(b.end(), more.begin(), more.end());
}
inline void append_str(Bytes& b, std::string_view s) {
  append(b, std::as_bytes(std::span(s.data(), s.size())));
}
inline std::string to_string(std::span<const std::byte> b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

// A Stream over memory: reads consume `input` (an early end is ECONNRESET, as on a
// socket), writes append to `output` until `write_limit` bytes, then fail with EPIPE.
class MemoryStream final : public Stream {
 public:
  explicit MemoryStream(Bytes in) : input(std::move(in)) {}

  Result<void> read_exact(std::span<std::byte> buf) override {
    if (buf.size() > input.size() - read_pos) {
      read_pos = input.size();
      return Error{ECONNRESET, "end of input"};
    }
    if (!buf.empty()) std::memcpy(buf.data(), input.data() + read_pos, buf.size());
    read_pos += buf.size();
    return ok();
  }
  Result<void> write_all(std::span<const std::byte> buf) override {
    if (buf.size() > write_limit - output.size()) return Error{EPIPE, "output closed"};
    append(output, buf);
    return ok();
  }

  Bytes input;
  size_t read_pos = 0;
  Bytes output;
  size_t write_limit = SIZE_MAX;
};

// ---- The client's side of the handshake ---------------------------------------------

inline constexpr size_t kGreetingBytes = 18;
inline constexpr size_t kOptReplyHeaderBytes = 20;

inline Bytes client_flags(uint32_t flags = kClientFlagFixedNewstyle | kClientFlagNoZeroes) {
  Bytes b;
  append_u32(b, flags);
  return b;
}

inline Bytes option(uint32_t opt, std::span<const std::byte> data = {}) {
  Bytes b;
  append_u64(b, kIHaveOpt);
  append_u32(b, opt);
  append_u32(b, static_cast<uint32_t>(data.size()));
  append(b, data);
  return b;
}
inline Bytes option(uint32_t opt, const Bytes& data) {
  return option(opt, std::span(data));
}

// The data of NBD_OPT_INFO / NBD_OPT_GO.
inline Bytes info_go_data(std::string_view name, std::vector<uint16_t> infos = {}) {
  Bytes b;
  append_u32(b, static_cast<uint32_t>(name.size()));
  append_str(b, name);
  append_u16(b, static_cast<uint16_t>(infos.size()));
  for (uint16_t i : infos) append_u16(b, i);
  return b;
}

// The data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT.
inline Bytes meta_context_data(std::string_view name, std::vector<std::string> queries) {
  Bytes b;
  append_u32(b, static_cast<uint32_t>(name.size()));
  append_str(b, name);
  append_u32(b, static_cast<uint32_t>(queries.size()));
  for (const auto& q : queries) {
    append_u32(b, static_cast<uint32_t>(q.size()));
    append_str(b, q);
  }
  return b;
}

struct OptReply {
  uint32_t option = 0;
  uint32_t type = 0;
  Bytes data;
};

// Parses option replies from `out` (the server's output after the greeting) until it is
// used up. nullopt when a reply is malformed or cut short; `rest` (when given) receives
// the bytes that did not form a whole reply.
inline std::optional<std::vector<OptReply>> parse_option_replies(std::span<const std::byte> out,
                                                                 Bytes* rest = nullptr) {
  std::vector<OptReply> replies;
  size_t pos = 0;
  while (out.size() - pos >= kOptReplyHeaderBytes) {
    const std::byte* p = out.data() + pos;
    if (get_u64(p) != kOptReplyMagic) break;
    const uint32_t len = get_u32(p + 16);
    if (out.size() - pos - kOptReplyHeaderBytes < len) break;
    OptReply r;
    r.option = get_u32(p + 8);
    r.type = get_u32(p + 12);
    r.data.assign(p + kOptReplyHeaderBytes, p + kOptReplyHeaderBytes + len);
    replies.push_back(std::move(r));
    pos += kOptReplyHeaderBytes + len;
  }
  if (rest) rest->assign(out.begin() + static_cast<ptrdiff_t>(pos), out.end());
  if (pos != out.size() && !rest) return std::nullopt;
  return replies;
}

// ---- An in-memory BlockDevice ---------------------------------------------------------

inline DeviceCaps writable_caps() {
  DeviceCaps c;
  c.writable = c.can_flush = c.can_fua = c.can_trim = c.can_zero = c.can_fast_zero = true;
  c.can_cache = c.can_multi_conn = true;
  return c;
}

// A BlockDevice over a std::vector. It checks the contract of block_device.h with
// IMG_CHECK, so a request that escaped validation stops the test (or the fuzzer).
// Block status reports all-zero 4 KiB pages as holes.
// Lock contract: thread-safe (the server's connection and pool threads call it at once).
// mu_ guards data_'s bytes (its size, caps_ and contexts_ never change); nowait_ and
// fail_from_ are atomics a test may set while requests run.
class MemoryDevice final : public BlockDevice {
 public:
  static constexpr uint64_t kPageBytes = 4096;

  explicit MemoryDevice(uint64_t size, DeviceCaps caps = writable_caps(),
                        std::vector<std::string> contexts = {kBaseAllocation})
      : data_(size), caps_(caps), contexts_(std::move(contexts)) {}

  // Whether read_nowait / write_nowait succeed (the server's inline path) or decline
  // (the thread-pool path).
  void set_nowait(bool on) { nowait_ = on; }
  // Requests that touch [offset, size()) fail with EIO from now on.
  void fail_from(uint64_t offset) { fail_from_ = offset; }

  uint64_t size() const override { return data_.size(); }
  DeviceCaps caps() const override { return caps_; }
  std::vector<std::string> meta_contexts() const override { return contexts_; }

  Result<void> read(uint64_t offset, std::span<std::byte> buf) override {
    check_range(offset, buf.size());
    if (offset + buf.size() > fail_from_) return Error{EIO, "injected read error"};
    std::lock_guard lock(mu_);
    std::memcpy(buf.data(), data_.data() + offset, buf.size());
    return ok();
  }
  Result<void> read_nowait(uint64_t offset, std::span<std::byte> buf) override {
    if (!nowait_) return Error::would_block();
    return read(offset, buf);
  }
  Result<void> write(uint64_t offset, std::span<const std::byte> d, Durability) override {
    IMG_CHECK(caps_.writable);
    check_range(offset, d.size());
    if (offset + d.size() > fail_from_) return Error{EIO, "injected write error"};
    std::lock_guard lock(mu_);
    std::memcpy(data_.data() + offset, d.data(), d.size());
    return ok();
  }
  Result<void> write_nowait(uint64_t offset, std::span<const std::byte> d,
                            Durability dur) override {
    if (!nowait_ || dur == Durability::Fua) return Error::would_block();
    return write(offset, d, dur);
  }
  Result<void> flush() override { return ok(); }
  Result<void> trim(uint64_t offset, uint64_t length, Durability) override {
    IMG_CHECK(caps_.writable && caps_.can_trim);
    return zero(offset, length);
  }
  Result<void> write_zeroes(uint64_t offset, uint64_t length, ZeroFlags z, Durability) override {
    IMG_CHECK(caps_.writable && caps_.can_zero);
    if (z.fast_only && !caps_.can_fast_zero) return Error{ENOTSUP, "no fast zero"};
    return zero(offset, length);
  }
  Result<void> cache(uint64_t offset, uint64_t length) override {
    check_range(offset, length);
    return ok();
  }
  Result<void> block_status(size_t context, uint64_t offset, uint64_t length,
                            std::vector<Extent>& out) override {
    IMG_CHECK(context < contexts_.size());
    check_range(offset, length);
    if (context != 0) {
      out.push_back(Extent{length, 0});
      return ok();
    }
    std::lock_guard lock(mu_);
    for (uint64_t pos = offset, end = offset + length; pos < end;) {
      const uint64_t next = std::min(end, (pos / kPageBytes + 1) * kPageBytes);
      const auto first = data_.begin() + static_cast<ptrdiff_t>(pos);
      const auto last = data_.begin() + static_cast<ptrdiff_t>(next);
      const bool zero = std::all_of(first, last, [](std::byte b) { return b == std::byte{0}; });
      const uint32_t flags = zero ? (kStateHole | kStateZero) : 0;
      if (!out.empty() && out.back().flags == flags) {
        out.back().length += next - pos;
      } else {
        out.push_back(Extent{next - pos, flags});
      }
      pos = next;
    }
    return ok();
  }

  Bytes contents() const {
    std::lock_guard lock(mu_);
    return data_;
  }
  void fill(uint64_t offset, std::span<const std::byte> d) {
    std::lock_guard lock(mu_);
    IMG_CHECK(offset <= data_.size() && d.size() <= data_.size() - offset);
    std::memcpy(data_.data() + offset, d.data(), d.size());
  }

 private:
  void check_range(uint64_t offset, uint64_t length) const {
    IMG_CHECK(length > 0 && offset <= data_.size() && length <= data_.size() - offset);
    const uint64_t min = caps_.block_size_min;
    IMG_CHECK(offset % min == 0 && length % min == 0);
  }
  Result<void> zero(uint64_t offset, uint64_t length) {
    check_range(offset, length);
    if (offset + length > fail_from_) return Error{EIO, "injected write error"};
    std::lock_guard lock(mu_);
    std::memset(data_.data() + offset, 0, length);
    return ok();
  }

  mutable std::mutex mu_;
  Bytes data_;
  DeviceCaps caps_;
  std::vector<std::string> contexts_;
  std::atomic<bool> nowait_{true};
  std::atomic<uint64_t> fail_from_{UINT64_MAX};
};

}  // namespace imgstream::nbd::testing
