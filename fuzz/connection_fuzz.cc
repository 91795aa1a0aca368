// Fuzzes a real nbd::Connection over a socketpair: the handshake is done properly (as
// the first input byte configures it), then the rest of the input is sent as the
// transmission phase, as one client would, while the server's replies are read and
// checked against a model of which requests must be answered and how.
//
// Input byte 0 (configuration):
//   bit 0 structured replies      bit 1 select base:allocation (with bit 0)
//   bit 2 device fast paths off   bit 3 read-only export
//   bit 4 block_size_min 512      bit 5 block_size_max 64 KiB (else 32 MiB)
//   bit 6 the device fails the last 4 KiB with EIO
// Bytes 1...: requests (28-byte headers, write payloads), as sent on the wire. The model
// rewrites each request's cookie to its index so that replies can be matched.
//
// Checked: every complete request before the first bad magic or NBD_CMD_DISC gets exactly
// one answer (a simple reply or chunks ending in DONE), with the error validate_request
// predicts (or the device's injected EIO), data of the right length at the right offset,
// structured chunks only when negotiated and only for reads and block status, block
// status extents that are non-empty and within the request; nothing else is sent. On a
// read-only export, read data and block status flags must match the device's contents.
// The device asserts the block_device.h contract on every call.
#include "fuzz_check.h"
#include <sys/socket.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "base/log.h"
#include "base/thread_pool.h"
#include "base/unique_fd.h"
#include "nbd/connection.h"
#include "nbd/reply.h"
#include "nbd/testing.h"

namespace {

using namespace imgstream;
using namespace imgstream::nbd;
using testing::Bytes;

constexpr uint64_t kDeviceBytes = 256 * 1024;
constexpr uint64_t kFailBytes = 4096;

struct Config {
  bool structured, meta, nowait, read_only, aligned, small_max, failing;
  explicit Config(uint8_t b)
      : structured(b & 1),
        meta((b & 2) && structured),
        nowait(!(b & 4)),
        read_only(b & 8),
        aligned(b & 16),
        small_max(b & 32),
        failing(b & 64) {}
};

// Half the device's 4 KiB pages hold data, the others are zero: block status has holes.
Bytes initial_contents() {
  Bytes b(kDeviceBytes);
  for (size_t i = 0; i < b.size(); ++i)
    if ((i / 4096) % 3 != 1) b[i] = std::byte(static_cast<uint8_t>(i * 7 + 1 + (i >> 12)));
  return b;
}

Bytes handshake_bytes(const Config& c) {
  Bytes b = testing::client_flags();
  if (c.structured) testing::append(b, testing::option(kOptStructuredReply));
  if (c.meta) {
    testing::append(
        b, testing::option(kOptSetMetaContext, testing::meta_context_data("", {kBaseAllocation})));
  }
  testing::append(b, testing::option(kOptGo, testing::info_go_data("")));
  return b;
}

struct Expected {
  Request r;
  uint32_t err = 0;  // what validate_request says
  bool done = false;
};

// Walks the requests as the server will, rewriting cookies to indexes. Stops where the
// server stops reading: a bad magic, a request cut short by the end, a valid DISC.
std::vector<Expected> model(Bytes& tx, const ExportLimits& limits) {
  std::vector<Expected> out;
  for (size_t pos = 0; tx.size() - pos >= kRequestHeaderBytes;) {
    auto h = std::span<std::byte, kRequestHeaderBytes>(&tx[pos], kRequestHeaderBytes);
    auto r = decode_request(h);
    if (!r) break;
    const size_t payload = has_payload(*r) ? r->length : 0;
    if (tx.size() - pos - kRequestHeaderBytes < payload) break;
    r->cookie = out.size();
    put_u64(&h[8], r->cookie);
    const uint32_t err = validate_request(*r, limits);
    out.push_back(Expected{*r, err});
    pos += kRequestHeaderBytes + payload;
    if (r->type == kCmdDisc && err == 0) {
      out.pop_back();  // no reply to a disconnect
      break;
    }
  }
  return out;
}

// A cursor over the server's output.
struct Cursor {
  const Bytes& b;
  size_t pos = 0;
  bool take(size_t n, const std::byte** p) {
    if (b.size() - pos < n) return false;
    *p = b.data() + pos;
    pos += n;
    return true;
  }
};

size_t handshake_reply_bytes(const Bytes& out, const Config& c, const Export& e) {
  // Walk the replies up to GO's ACK.
  size_t pos = testing::kGreetingBytes;
  for (;;) {
    FUZZ_CHECK(out.size() - pos >= testing::kOptReplyHeaderBytes);
    const std::byte* p = out.data() + pos;
    FUZZ_CHECK(get_u64(p) == kOptReplyMagic);
    const uint32_t opt = get_u32(p + 8), type = get_u32(p + 12), len = get_u32(p + 16);
    FUZZ_CHECK(!(type & kRepErrBit));
    pos += testing::kOptReplyHeaderBytes + len;
    FUZZ_CHECK(pos <= out.size());
    if (opt == kOptGo && type == kRepInfo && get_u16(p + 20) == kInfoExport) {
      FUZZ_CHECK(get_u16(p + 30) == transmission_flags(e, c.structured));
    }
    if (opt == kOptGo && type == kRepAck) return pos;
  }
}

void check_extents(const std::byte* p, uint32_t len, const Request& r, const Config& c,
                   const Bytes& contents) {
  FUZZ_CHECK(len >= 12 && (len - 4) % 8 == 0);
  FUZZ_CHECK(get_u32(p) == 0);  // the one context selected
  const size_t n = (len - 4) / 8;
  if (r.flags & kCmdFlagReqOne) FUZZ_CHECK(n == 1);
  uint64_t at = r.offset, total = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t elen = get_u32(p + 4 + 8 * i), flags = get_u32(p + 8 + 8 * i);
    FUZZ_CHECK(elen > 0);
    FUZZ_CHECK((flags & ~uint32_t(kStateHole | kStateZero)) == 0);
    total += elen;
    FUZZ_CHECK(total <= r.length);
    if (c.read_only && (flags & kStateZero)) {
      for (uint64_t k = at; k < at + elen; ++k) FUZZ_CHECK(contents[k] == std::byte{0});
    }
    at += elen;
  }
}

// Matches the server's transmission output against the model.
void check_replies(const Bytes& out, size_t pos, std::vector<Expected>& expected, const Config& c,
                   const Bytes& contents) {
  Cursor cur{out, pos};
  const std::byte* p = nullptr;
  while (cur.pos < out.size()) {
    FUZZ_CHECK(cur.take(4, &p));
    const uint32_t magic = get_u32(p);
    if (magic == kSimpleReplyMagic) {
      FUZZ_CHECK(cur.take(12, &p));
      const uint32_t error = get_u32(p);
      const uint64_t cookie = get_u64(p + 4);
      FUZZ_CHECK(cookie < expected.size());
      Expected& e = expected[cookie];
      FUZZ_CHECK(!e.done);
      e.done = true;
      const bool data_cmd = e.r.type == kCmdRead || e.r.type == kCmdBlockStatus;
      FUZZ_CHECK(!(c.structured && data_cmd));  // those get chunks
      FUZZ_CHECK(e.r.type != kCmdBlockStatus || error != 0);
      if (e.err) {
        FUZZ_CHECK(error == e.err);
      } else {
        FUZZ_CHECK(error == 0 || (c.failing && error == kEIo));
      }
      if (e.r.type == kCmdRead && error == 0) {
        FUZZ_CHECK(cur.take(e.r.length, &p));
        if (c.read_only) FUZZ_CHECK(std::memcmp(p, &contents[e.r.offset], e.r.length) == 0);
      }
      continue;
    }
    FUZZ_CHECK(magic == kStructuredReplyMagic);
    FUZZ_CHECK(c.structured);
    FUZZ_CHECK(cur.take(16, &p));
    const uint16_t flags = get_u16(p), type = get_u16(p + 2);
    const uint64_t cookie = get_u64(p + 4);
    const uint32_t len = get_u32(p + 12);
    FUZZ_CHECK(cookie < expected.size());
    Expected& e = expected[cookie];
    FUZZ_CHECK(!e.done);
    FUZZ_CHECK(e.r.type == kCmdRead || e.r.type == kCmdBlockStatus);
    FUZZ_CHECK(cur.take(len, &p));
    FUZZ_CHECK(flags == kReplyFlagDone);  // one chunk per request (one context at most)
    e.done = true;
    if (type == kChunkError) {
      FUZZ_CHECK(len >= 6 && len == 6u + get_u16(p + 4));
      const uint32_t error = get_u32(p);
      FUZZ_CHECK(error == (e.err ? e.err : kEIo));
      FUZZ_CHECK(e.err || c.failing);
    } else if (type == kChunkOffsetData) {
      FUZZ_CHECK(e.r.type == kCmdRead && e.err == 0);
      FUZZ_CHECK(len == e.r.length + 8u && get_u64(p) == e.r.offset);
      if (c.read_only) FUZZ_CHECK(std::memcmp(p + 8, &contents[e.r.offset], e.r.length) == 0);
    } else {
      FUZZ_CHECK(type == kChunkBlockStatus);
      FUZZ_CHECK(e.r.type == kCmdBlockStatus && e.err == 0);
      check_extents(p, len, e.r, c, contents);
    }
  }
  for (const Expected& e : expected) FUZZ_CHECK(e.done);
}

ThreadPool& pool() {
  static ThreadPool* p = new ThreadPool(2);  // lives for the process
  return *p;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  set_log_level(LogLevel::Off);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const Config c(data[0]);
  DeviceCaps caps = testing::writable_caps();
  if (c.aligned) caps.block_size_min = 512;
  caps.block_size_max = c.small_max ? 64 * 1024 : 32u << 20;
  testing::MemoryDevice dev(kDeviceBytes, caps);
  static const Bytes contents = initial_contents();
  dev.fill(0, contents);
  dev.set_nowait(c.nowait);
  if (c.failing) dev.fail_from(kDeviceBytes - kFailBytes);
  const std::vector<Export> exports{Export{"", "", &dev, c.read_only}};

  ExportLimits limits;
  limits.size = kDeviceBytes;
  limits.block_size_min = caps.block_size_min;
  limits.payload_max = std::min(caps.block_size_max, kPayloadMax);
  limits.transmission_flags = transmission_flags(exports[0], c.structured);
  limits.structured_replies = c.structured;
  limits.meta_contexts_selected = c.meta;

  const auto* p = reinterpret_cast<const std::byte*>(data);
  Bytes tx(p + 1, p + size);
  std::vector<Expected> expected = model(tx, limits);
  Bytes in = handshake_bytes(c);
  testing::append(in, tx);

  int sv[2];
  FUZZ_CHECK(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  UniqueFd client(sv[1]);
  Connection conn(UniqueFd(sv[0]), exports, pool());
  std::thread server([&] { conn.run(); });
  std::thread writer([&] {
    for (size_t done = 0; done < in.size();) {
      ssize_t n = ::send(client.get(), in.data() + done, in.size() - done, MSG_NOSIGNAL);
      if (n <= 0 && errno == EINTR) continue;
      if (n <= 0) break;  // the server stopped reading
      done += static_cast<size_t>(n);
    }
    ::shutdown(client.get(), SHUT_WR);
  });
  Bytes out;
  std::byte buf[65536];
  for (;;) {
    ssize_t n = ::recv(client.get(), buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.insert(out.end(), buf, buf + n);
  }
  writer.join();
  server.join();

  const size_t pos = handshake_reply_bytes(out, c, exports[0]);
  check_replies(out, pos, expected, c, contents);
  return 0;
}
