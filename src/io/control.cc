#include "io/control.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <exception>

#include "base/log.h"
#include "io/socket.h"

namespace imgstream {

using nlohmann::json;

Result<std::unique_ptr<ControlServer>> ControlServer::start(const std::string& path, Handler h) {
  std::unique_ptr<ControlServer> s(new ControlServer());
  s->path_ = path;
  s->handler_ = std::move(h);
  Address a;
  a.kind = Address::Kind::Unix;
  a.path = path;
  s->fd_ = TRY_CTX(listen_on(a), "control socket " + path);
  s->wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!s->wake_.valid()) return Error::from_errno(errno, "eventfd");
  s->thread_ = std::thread([p = s.get()] { p->loop(); });
  return s;
}

ControlServer::~ControlServer() {
  uint64_t one = 1;
  (void)!::write(wake_.get(), &one, sizeof one);
  if (thread_.joinable()) thread_.join();
}

void ControlServer::loop() {
  pollfd fds[2] = {{fd_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}};
  for (;;) {
    if (::poll(fds, 2, -1) < 0 && errno != EINTR) return;
    if (fds[1].revents) return;
    if (!(fds[0].revents & POLLIN)) continue;
    UniqueFd c(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!c.valid()) continue;
    timeval tv{2, 0};
    ::setsockopt(c.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::string buf(kCommandBytesMax, '\0');
    size_t got = 0;
    bool complete = false;  // a newline, or the client's end of stream
    while (got < buf.size()) {
      ssize_t n = ::recv(c.get(), buf.data() + got, buf.size() - got, 0);
      if (n <= 0) {
        complete = n == 0;
        break;
      }
      got += static_cast<size_t>(n);
      if (std::memchr(buf.data(), '\n', got)) {
        complete = true;
        break;
      }
    }
    buf.resize(got);
    const std::string reply = control_reply(handler_, buf, complete);
    (void)!::send(c.get(), reply.data(), reply.size(), MSG_NOSIGNAL);
  }
}

Result<nlohmann::json> control_call(const std::string& path, const std::string& command,
                                    int timeout_s) {
  Address a;
  a.kind = Address::Kind::Unix;
  a.path = path;
  UniqueFd fd = TRY(connect_to(a));
  timeval tv{timeout_s, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  const std::string line = command + "\n";
  if (::send(fd.get(), line.data(), line.size(), MSG_NOSIGNAL) < 0)
    return Error::from_errno(errno, "send to " + path);
  std::string reply;
  char buf[4096];
  while (reply.find('\n') == std::string::npos && reply.size() < kReplyBytesMax) {
    ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return Error{ETIMEDOUT,
                   "no reply from " + path + " within " + std::to_string(timeout_s) + " s"};
    if (n < 0) return Error::from_errno(errno, "read from " + path);
    if (n == 0) break;
    reply.append(buf, static_cast<size_t>(n));
  }
  auto j = nlohmann::json::parse(reply, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Error::io("bad reply from " + path);
  return j;
}

namespace {

json error_reply(std::string message) {
  json j;
  j["error"] = std::move(message);
  return j;
}

// The field `key` of object `j`, or null.
const json* field(const json& j, std::string_view key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(std::string(key));
  return it == j.end() ? nullptr : &*it;
}

Error field_error(std::string_view key, const char* want, const json* f) {
  return Error::invalid(f ? "field '" + std::string(key) + "' is not " + want
                          : "field '" + std::string(key) + "' is missing");
}

// RFC 3629's table of well-formed sequences: for each lead byte, the length and the range
// of the second byte (so no overlong forms, no surrogates, nothing past U+10FFFF).
struct Utf8Lead {
  unsigned char first, last;  // lead bytes
  size_t length;
  unsigned char second_lo, second_hi;
};
constexpr Utf8Lead kUtf8Leads[] = {
    {0xc2, 0xdf, 2, 0x80, 0xbf}, {0xe0, 0xe0, 3, 0xa0, 0xbf}, {0xe1, 0xec, 3, 0x80, 0xbf},
    {0xed, 0xed, 3, 0x80, 0x9f}, {0xee, 0xef, 3, 0x80, 0xbf}, {0xf0, 0xf0, 4, 0x90, 0xbf},
    {0xf1, 0xf3, 4, 0x80, 0xbf}, {0xf4, 0xf4, 4, 0x80, 0x8f},
};

}  // namespace

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
      ++i;
      continue;
    }
    const Utf8Lead* lead = nullptr;
    for (const Utf8Lead& l : kUtf8Leads)
      if (b >= l.first && b <= l.last) lead = &l;
    if (!lead || s.size() - i < lead->length) return false;
    for (size_t k = 1; k < lead->length; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      const unsigned char lo = k == 1 ? lead->second_lo : 0x80,
                          hi = k == 1 ? lead->second_hi : 0xbf;
      if (c < lo || c > hi) return false;
    }
    i += lead->length;
  }
  return true;
}

std::string dump_json(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string control_reply(const ControlServer::Handler& h, std::string_view raw, bool complete) {
  const size_t nl = raw.find('\n');
  if (nl == std::string_view::npos && !complete)
    return dump_json(error_reply("command longer than " + std::to_string(kCommandBytesMax - 1) +
                                 " bytes")) +
           "\n";
  std::string_view line = raw.substr(0, nl);
  if (line.ends_with('\r')) line.remove_suffix(1);
  json reply;
  if (!valid_utf8(line)) {
    reply = error_reply("command is not valid UTF-8");
  } else if (std::any_of(line.begin(), line.end(), [](char c) {
               return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
             })) {
    reply = error_reply("command holds a control character");
  } else {
    // Our handlers do not throw; should one ever, the process (and the disk it serves)
    // must not go down with it: the client gets an error instead.
    try {
      reply = h(std::string(line));
    } catch (const std::exception& e) {
      LOG_ERROR("control command '{}' failed: {}", line, e.what());
      reply = error_reply(std::string("internal error: ") + e.what());
    }
  }
  return dump_json(reply) + "\n";
}

std::vector<std::string_view> command_words(std::string_view line) {
  std::vector<std::string_view> words;
  size_t i = 0;
  while (i < line.size()) {
    if (line[i] == ' ') {
      ++i;
      continue;
    }
    const size_t end = std::min(line.find(' ', i), line.size());
    words.push_back(line.substr(i, end - i));
    i = end;
  }
  return words;
}

Result<uint64_t> parse_u64_word(std::string_view word, std::string_view what) {
  uint64_t v = 0;
  const char* end = word.data() + word.size();
  auto [p, ec] = std::from_chars(word.data(), end, v);
  if (word.empty() || ec != std::errc() || p != end)
    return Error::invalid(std::string(what) + " '" + std::string(word) +
                          "' is not a number (0 to 18446744073709551615)");
  return v;
}

Result<uint64_t> get_u64(const json& j, std::string_view key) {
  const json* f = field(j, key);
  const auto* v = f ? f->get_ptr<const json::number_unsigned_t*>() : nullptr;
  if (!v) return field_error(key, "an unsigned integer", f);
  return static_cast<uint64_t>(*v);
}

Result<bool> get_bool(const json& j, std::string_view key) {
  const json* f = field(j, key);
  const auto* v = f ? f->get_ptr<const json::boolean_t*>() : nullptr;
  if (!v) return field_error(key, "true or false", f);
  return *v;
}

Result<double> get_double(const json& j, std::string_view key) {
  const json* f = field(j, key);
  if (f) {
    if (const auto* d = f->get_ptr<const json::number_float_t*>()) return *d;
    if (const auto* u = f->get_ptr<const json::number_unsigned_t*>()) return double(*u);
    if (const auto* i = f->get_ptr<const json::number_integer_t*>()) return double(*i);
  }
  return field_error(key, "a number", f);
}

Result<std::string> get_string(const json& j, std::string_view key) {
  const json* f = field(j, key);
  const auto* v = f ? f->get_ptr<const json::string_t*>() : nullptr;
  if (!v) return field_error(key, "a string", f);
  return *v;
}

Result<std::vector<std::pair<uint64_t, uint64_t>>> get_u64_pairs(const json& j,
                                                                 std::string_view key) {
  const json* f = field(j, key);
  if (!f || !f->is_array()) return field_error(key, "an array", f);
  std::vector<std::pair<uint64_t, uint64_t>> out;
  out.reserve(f->size());
  for (const json& e : *f) {
    const json::number_unsigned_t* a = nullptr;
    const json::number_unsigned_t* b = nullptr;
    if (e.is_array() && e.size() == 2) {
      a = e[0].get_ptr<const json::number_unsigned_t*>();
      b = e[1].get_ptr<const json::number_unsigned_t*>();
    }
    if (!a || !b) return field_error(key, "an array of [unsigned, unsigned] pairs", f);
    out.emplace_back(*a, *b);
  }
  return out;
}

uint64_t u64_or(const json& j, std::string_view key, uint64_t fallback) {
  return get_u64(j, key).value_or(fallback);
}
bool bool_or(const json& j, std::string_view key, bool fallback) {
  return get_bool(j, key).value_or(fallback);
}
double double_or(const json& j, std::string_view key, double fallback) {
  return get_double(j, key).value_or(fallback);
}
std::string string_or(const json& j, std::string_view key, std::string fallback) {
  return get_string(j, key).value_or(std::move(fallback));
}

}  // namespace imgstream
