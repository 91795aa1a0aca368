#include "nbd/handshake.h"

#include <array>
#include <cstring>
#include <string_view>

#include "nbd/protocol.h"

namespace imgstream::nbd {

namespace {

using Bytes = std::vector<std::byte>;

Result<void> send_reply(Stream& s, uint32_t option, uint32_t type,
                        std::span<const std::byte> data) {
  std::array<std::byte, 20> h;
  put_u64(&h[0], kOptReplyMagic);
  put_u32(&h[8], option);
  put_u32(&h[12], type);
  put_u32(&h[16], static_cast<uint32_t>(data.size()));
  // One write per reply: header and data together, so the client sees whole replies.
  Bytes msg(h.begin(), h.end());
  msg.insert(msg.end(), data.begin(), data.end());
  return s.write_all(msg);
}

Result<void> send_error(Stream& s, uint32_t option, uint32_t type, std::string_view why) {
  auto p = reinterpret_cast<const std::byte*>(why.data());
  return send_reply(s, option, type, std::span<const std::byte>(p, why.size()));
}

// A cursor over an option's data that never reads past its end.
class Reader {
 public:
  explicit Reader(std::span<const std::byte> d) : d_(d) {}
  bool u16(uint16_t& v) { return take(2) ? (v = get_u16(&d_[pos_ - 2]), true) : false; }
  bool u32(uint32_t& v) { return take(4) ? (v = get_u32(&d_[pos_ - 4]), true) : false; }
  bool str(uint32_t len, std::string& out) {
    if (len > kStringBytesMax || !take(len)) return false;
    // data() + offset, not &d_[...]: an empty string may end the data (index == size()).
    out.assign(reinterpret_cast<const char*>(d_.data() + (pos_ - len)), len);
    return true;
  }
  size_t left() const { return d_.size() - pos_; }

 private:
  bool take(size_t n) {
    if (n > left()) return false;
    pos_ += n;
    return true;
  }
  std::span<const std::byte> d_;
  size_t pos_ = 0;
};

const Export* find_export(std::span<const Export> exports, const std::string& name) {
  for (const Export& e : exports)
    if (e.name == name) return &e;
  // The empty name asks for the default export: the first.
  if (name.empty() && !exports.empty()) return &exports[0];
  return nullptr;
}

struct State {
  bool no_zeroes = false;
  bool structured = false;
  std::vector<size_t> contexts;  // selected by the last SET_META_CONTEXT
  std::string contexts_export;   // ... for this export
};

void append_u16(Bytes& b, uint16_t v) { b.resize(b.size() + 2); put_u16(&b[b.size() - 2], v); }
void append_u32(Bytes& b, uint32_t v) { b.resize(b.size() + 4); put_u32(&b[b.size() - 4], v); }
void append_u64(Bytes& b, uint64_t v) { b.resize(b.size() + 8); put_u64(&b[b.size() - 8], v); }
void append_str(Bytes& b, std::string_view s) {
  auto p = reinterpret_cast<const std::byte*>(s.data());
  b.insert(b.end(), p, p + s.size());
}

// NBD_OPT_INFO / NBD_OPT_GO. Returns the export when GO succeeded.
Result<const Export*> handle_info_go(Stream& s, uint32_t opt, std::span<const std::byte> data,
                                     std::span<const Export> exports, State& st) {
  Reader r(data);
  uint32_t name_len = 0;
  std::string name;
  uint16_t n_info = 0;
  if (!r.u32(name_len) || !r.str(name_len, name) || !r.u16(n_info) || r.left() != 2u * n_info) {
    TRY(send_error(s, opt, kRepErrInvalid, "malformed NBD_OPT_INFO/GO request"));
    return nullptr;
  }
  const Export* e = find_export(exports, name);
  if (!e) {
    TRY(send_error(s, opt, kRepErrUnknown, "no export named '" + name + "'"));
    return nullptr;
  }
  bool want_name = false, want_description = false;
  for (uint16_t i = 0; i < n_info; ++i) {
    uint16_t t = 0;
    r.u16(t);
    want_name |= t == kInfoName;
    want_description |= t == kInfoDescription;
  }
  const DeviceCaps caps = e->device->caps();
  Bytes b;
  append_u16(b, kInfoExport);
  append_u64(b, e->device->size());
  append_u16(b, transmission_flags(*e, st.structured));
  TRY(send_reply(s, opt, kRepInfo, b));
  // Block size is always sent: clients that did not ask ignore it.
  b.clear();
  append_u16(b, kInfoBlockSize);
  append_u32(b, caps.block_size_min);
  append_u32(b, caps.block_size_preferred);
  append_u32(b, std::min(caps.block_size_max, kPayloadMax));
  TRY(send_reply(s, opt, kRepInfo, b));
  if (want_name) {
    b.clear();
    append_u16(b, kInfoName);
    append_str(b, e->name);
    TRY(send_reply(s, opt, kRepInfo, b));
  }
  if (want_description && !e->description.empty()) {
    b.clear();
    append_u16(b, kInfoDescription);
    append_str(b, e->description);
    TRY(send_reply(s, opt, kRepInfo, b));
  }
  TRY(send_reply(s, opt, kRepAck, {}));
  return opt == kOptGo ? e : nullptr;
}

// Whether a query selects (SET, exact name) or lists (LIST, "ns:" wildcard too) a context.
bool query_matches(std::string_view query, std::string_view context, bool listing) {
  if (query == context) return true;
  if (!listing || query.empty() || query.back() != ':') return false;
  return context.substr(0, query.size()) == query;
}

Result<void> handle_meta_context(Stream& s, uint32_t opt, std::span<const std::byte> data,
                                 std::span<const Export> exports, State& st) {
  const bool listing = opt == kOptListMetaContext;
  if (!listing) st.contexts.clear();  // SET replaces the selection even when it fails
  if (!st.structured)
    return send_error(s, opt, kRepErrInvalid, "structured replies must be negotiated first");
  Reader r(data);
  uint32_t name_len = 0, n_queries = 0;
  std::string name;
  if (!r.u32(name_len) || !r.str(name_len, name) || !r.u32(n_queries))
    return send_error(s, opt, kRepErrInvalid, "malformed meta context request");
  if (n_queries > kMetaQueriesMax)
    return send_error(s, opt, kRepErrTooBig, "too many meta context queries");
  std::vector<std::string> queries(n_queries);
  for (auto& q : queries) {
    uint32_t len = 0;
    if (!r.u32(len) || !r.str(len, q))
      return send_error(s, opt, kRepErrInvalid, "malformed meta context query");
  }
  if (r.left() != 0) return send_error(s, opt, kRepErrInvalid, "trailing bytes in request");
  const Export* e = find_export(exports, name);
  if (!e) return send_error(s, opt, kRepErrUnknown, "no export named '" + name + "'");

  const std::vector<std::string> names = e->device->meta_contexts();
  std::vector<size_t> chosen;
  for (size_t i = 0; i < names.size(); ++i) {
    bool match = listing && queries.empty();
    for (const auto& q : queries) match |= query_matches(q, names[i], listing);
    if (match) chosen.push_back(i);
  }
  for (size_t k = 0; k < chosen.size(); ++k) {
    Bytes b;
    append_u32(b, listing ? 0 : static_cast<uint32_t>(k));  // id: index in the selection
    append_str(b, names[chosen[k]]);
    TRY(send_reply(s, opt, kRepMetaContext, b));
  }
  if (!listing) {
    st.contexts = std::move(chosen);
    st.contexts_export = e->name;
  }
  return send_reply(s, opt, kRepAck, {});
}

Result<void> handle_list(Stream& s, std::span<const std::byte> data,
                         std::span<const Export> exports) {
  if (!data.empty()) return send_error(s, kOptList, kRepErrInvalid, "NBD_OPT_LIST takes no data");
  for (const Export& e : exports) {
    Bytes b;
    append_u32(b, static_cast<uint32_t>(e.name.size()));
    append_str(b, e.name);
    append_str(b, e.description);
    TRY(send_reply(s, kOptList, kRepServer, b));
  }
  return send_reply(s, kOptList, kRepAck, {});
}

Negotiated finish(const Export* e, State& st) {
  Negotiated n;
  n.exp = e;
  n.structured_replies = st.structured;
  n.transmission_flags = transmission_flags(*e, st.structured);
  // Contexts count only when they were selected for the export now chosen.
  if (st.contexts_export == e->name) n.contexts = st.contexts;
  return n;
}

}  // namespace

uint16_t transmission_flags(const Export& e, bool structured) {
  const DeviceCaps c = e.device->caps();
  const bool writable = c.writable && !e.read_only;
  uint16_t f = kFlagHasFlags;
  if (!writable) f |= kFlagReadOnly;
  if (c.can_flush || !writable) f |= kFlagSendFlush;  // harmless on read-only: a no-op
  if (writable && c.can_fua) f |= kFlagSendFua;
  if (writable && c.can_trim) f |= kFlagSendTrim;
  if (writable && c.can_zero) f |= kFlagSendWriteZeroes;
  if (writable && c.can_zero && c.can_fast_zero) f |= kFlagSendFastZero;
  if (c.can_cache) f |= kFlagSendCache;
  if (c.can_multi_conn) f |= kFlagCanMultiConn;
  if (c.rotational) f |= kFlagRotational;
  if (structured) f |= kFlagSendDf;  // we always answer a read in one chunk
  return f;
}

Result<std::optional<Negotiated>> negotiate(Stream& s, std::span<const Export> exports) {
  std::array<std::byte, 18> greeting;
  put_u64(&greeting[0], kNbdMagic);
  put_u64(&greeting[8], kIHaveOpt);
  put_u16(&greeting[16], kFlagFixedNewstyle | kFlagNoZeroes);
  TRY(s.write_all(greeting));

  std::array<std::byte, 4> cf;
  TRY(s.read_exact(cf));
  const uint32_t client_flags = get_u32(cf.data());
  if (client_flags & ~(kClientFlagFixedNewstyle | kClientFlagNoZeroes))
    return Error::invalid("client sent unknown handshake flags");
  State st;
  st.no_zeroes = client_flags & kClientFlagNoZeroes;

  for (uint32_t n = 0; n < kOptionsPerConnectionMax; ++n) {
    std::array<std::byte, 16> h;
    TRY(s.read_exact(h));
    if (get_u64(&h[0]) != kIHaveOpt) return Error::invalid("bad option magic from client");
    const uint32_t opt = get_u32(&h[8]);
    const uint32_t len = get_u32(&h[12]);
    if (len > kOptionBytesMax) return Error::invalid("option data too large");
    Bytes data(len);
    TRY(s.read_exact(data));

    switch (opt) {
      case kOptExportName: {
        const Export* e = find_export(exports, std::string(reinterpret_cast<char*>(data.data()), len));
        if (!e) return Error::invalid("client asked for an unknown export");
        std::array<std::byte, 10 + 124> reply{};
        put_u64(&reply[0], e->device->size());
        put_u16(&reply[8], transmission_flags(*e, st.structured));
        TRY(s.write_all(std::span(reply).first(st.no_zeroes ? 10 : reply.size())));
        return std::optional<Negotiated>(finish(e, st));
      }
      case kOptAbort:
        // The client may already have closed: a failed reply is not an error here.
        (void)send_reply(s, opt, kRepAck, {});
        return std::optional<Negotiated>{};
      case kOptList: TRY(handle_list(s, data, exports)); break;
      case kOptInfo:
      case kOptGo: {
        const Export* e = TRY(handle_info_go(s, opt, data, exports, st));
        if (e) return std::optional<Negotiated>(finish(e, st));
        break;
      }
      case kOptStructuredReply:
        if (!data.empty()) {
          TRY(send_error(s, opt, kRepErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data"));
        } else {
          st.structured = true;
          TRY(send_reply(s, opt, kRepAck, {}));
        }
        break;
      case kOptListMetaContext:
      case kOptSetMetaContext: TRY(handle_meta_context(s, opt, data, exports, st)); break;
      case kOptStartTls:
        TRY(send_error(s, opt, kRepErrPolicy, "TLS is not configured on this server"));
        break;
      default: TRY(send_error(s, opt, kRepErrUnsup, "unsupported option")); break;
    }
  }
  return Error::invalid("too many options during handshake");
}

}  // namespace imgstream::nbd
