// Fuzzes the server's side of the NBD handshake (nbd::negotiate): the input is everything
// a client sends, from its flags on. Two exports, one of them read-only.
//
// Invariants checked on every input, besides the sanitizers' own:
// - the output is the greeting, then whole option replies only, then (only after a
//   successful NBD_OPT_EXPORT_NAME) the 10- or 134-byte export answer;
// - what was agreed is self-consistent: a known export, its transmission flags, metadata
//   contexts only with structured replies and only ones the export's device has.
#include "fuzz_check.h"
#include <cstdio>
#include <cstdlib>

#include "base/log.h"
#include "nbd/handshake.h"
#include "nbd/testing.h"

namespace {

using namespace imgstream;
using namespace imgstream::nbd;

struct Exports {
  testing::MemoryDevice disk{
      1 << 20, testing::writable_caps(), {kBaseAllocation, "imgstream:dirty"}};
  testing::MemoryDevice ro{64 * 1024};
  std::vector<Export> list{Export{"disk", "the disk", &disk, false}, Export{"ro", "", &ro, true}};
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  set_log_level(LogLevel::Off);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Exports* exports = new Exports();  // lives for the process
  const auto* p = reinterpret_cast<const std::byte*>(data);
  testing::MemoryStream s(testing::Bytes(p, p + size));
  auto result = negotiate(s, exports->list);

  FUZZ_CHECK(s.read_pos <= size);
  FUZZ_CHECK(s.output.size() >= testing::kGreetingBytes);
  FUZZ_CHECK(get_u64(s.output.data()) == kNbdMagic);
  testing::Bytes rest;
  auto replies =
      testing::parse_option_replies(std::span(s.output).subspan(testing::kGreetingBytes), &rest);
  FUZZ_CHECK(replies.has_value());
  for (const auto& r : *replies) {
    FUZZ_CHECK(r.data.size() <= 2 * kStringBytesMax + 8);
    FUZZ_CHECK(r.type == kRepAck || r.type == kRepServer || r.type == kRepInfo ||
               r.type == kRepMetaContext || (r.type & kRepErrBit));
  }

  if (!result || !result->has_value()) {
    FUZZ_CHECK(rest.empty());
    return 0;
  }
  const Negotiated& n = **result;
  FUZZ_CHECK(n.exp == &exports->list[0] || n.exp == &exports->list[1]);
  FUZZ_CHECK(n.transmission_flags == transmission_flags(*n.exp, n.structured_replies));
  FUZZ_CHECK(n.transmission_flags & kFlagHasFlags);
  if (n.exp->read_only) FUZZ_CHECK(n.transmission_flags & kFlagReadOnly);
  FUZZ_CHECK(n.contexts.empty() || n.structured_replies);
  const size_t available = n.exp->device->meta_contexts().size();
  for (size_t c : n.contexts) FUZZ_CHECK(c < available);
  for (size_t i = 1; i < n.contexts.size(); ++i) FUZZ_CHECK(n.contexts[i - 1] < n.contexts[i]);
  // Either GO (the last reply is its ACK) or EXPORT_NAME (size and flags, maybe zeroes).
  if (rest.empty()) {
    FUZZ_CHECK(!replies->empty() && replies->back().option == kOptGo &&
               replies->back().type == kRepAck);
  } else {
    FUZZ_CHECK(rest.size() == 10 || rest.size() == 134);
    FUZZ_CHECK(get_u64(rest.data()) == n.exp->device->size());
    FUZZ_CHECK(get_u16(&rest[8]) == n.transmission_flags);
  }
  return 0;
}
