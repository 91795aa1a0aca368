#include "patch/patch_journal.h"

#include <algorithm>
#include <functional>

#include "base/check.h"
#include "base/codec.h"
#include "base/crc32c.h"

namespace imgstream::patch {

namespace {

// docs/patch-journal.md has the byte tables.
constexpr Frame kHeader{"IMGPJRN1",
                        kJournalHeaderBytes,
                        1,
                        true,
                        {"patch journal is truncated ({} bytes)", "not an imgstream patch journal",
                         "patch journal header is damaged (CRC mismatch)",
                         "patch journal version {} is not supported", "patch journal size {}"}};
constexpr Frame kCommit{"IMGPCMT1",
                        kJournalCommitBytes,
                        1,
                        true,
                        {"commit record is truncated ({} bytes)", "no commit record",
                         "commit record is damaged (CRC mismatch)",
                         "commit record version {} is not supported", "commit record size {}"}};
constexpr size_t kHeaderImageSizeAt = 16;
constexpr size_t kHeaderEntriesAt = 24;
constexpr size_t kHeaderBytesAt = 32;
constexpr size_t kCommitEntriesAt = 16;
constexpr size_t kCommitBytesAt = 24;
constexpr size_t kCommitChainAt = 32;
constexpr size_t kEntryCrcAt = 20;
// Entries a journal may claim: a 2 GiB patch in single pages.
constexpr uint64_t kJournalEntriesMax = kOverlayBytesMax / kOverlayPageBytes;

std::vector<std::byte> entry_header(uint64_t offset, uint32_t length, uint32_t data_crc) {
  std::vector<std::byte> h(kJournalEntryHeaderBytes);
  ByteWriter w(h);
  w.u64(offset);
  w.u32(length);
  w.u32(data_crc);
  w.u32(0);
  w.u32_at(kEntryCrcAt, crc32c(std::span(h).first(kEntryCrcAt)));
  return h;
}

struct Piece {
  uint64_t offset;
  std::span<const std::byte> bytes;
};

std::vector<Piece> pieces_of(const std::vector<OverlayDevice::Run>& runs) {
  std::vector<Piece> out;
  for (const auto& r : runs)
    for (uint64_t at = 0; at < r.bytes.size(); at += kJournalEntryMax)
      out.push_back(
          Piece{r.offset + at, std::span(r.bytes).subspan(
                                   at, std::min<uint64_t>(kJournalEntryMax, r.bytes.size() - at))});
  return out;
}

using OnEntry = std::function<Result<void>(uint64_t offset, std::span<const std::byte>)>;

// Reads the entries after a valid header and the commit record. Damage after the header
// makes the journal Incomplete (a crash cut it before its commit was durable).
Result<JournalInfo> walk(File& f, uint64_t file_size, uint64_t image_size, uint64_t entries,
                         const OnEntry& on_entry) {
  JournalInfo info;
  info.state = JournalState::Incomplete;
  auto incomplete = [&](std::string why) {
    info.why = std::move(why);
    return info;
  };
  if (entries > kJournalEntriesMax) return incomplete("it claims too many entries");
  uint64_t at = kJournalHeaderBytes, bytes = 0;
  uint32_t chain = 0;
  std::vector<std::byte> head(kJournalEntryHeaderBytes), data;
  for (uint64_t i = 0; i < entries; ++i) {
    if (file_size - at < kJournalEntryHeaderBytes) return incomplete("it ends inside an entry");
    TRY(read_exact_at(f, at, head));
    ByteReader r(head);
    const uint64_t offset = r.u64();
    const uint32_t length = r.u32(), data_crc = r.u32();
    if (r.u32_at(kEntryCrcAt) != crc32c(std::span(head).first(kEntryCrcAt)))
      return incomplete("entry " + std::to_string(i) + " is damaged");
    if (length == 0 || length > kJournalEntryMax || offset > image_size ||
        length > image_size - offset)
      return incomplete("entry " + std::to_string(i) + " lies outside the image");
    at += kJournalEntryHeaderBytes;
    if (file_size - at < length) return incomplete("it ends inside an entry's bytes");
    data.resize(length);
    TRY(read_exact_at(f, at, data));
    if (crc32c(data) != data_crc)
      return incomplete("entry " + std::to_string(i) + "'s bytes are damaged");
    chain = crc32c(data, crc32c(head, chain));
    if (on_entry) TRY(on_entry(offset, data));
    at += length;
    bytes += length;
  }
  if (file_size - at < kJournalCommitBytes) return incomplete("it has no commit record");
  std::vector<std::byte> commit(kJournalCommitBytes);
  TRY(read_exact_at(f, at, commit));
  auto c = open_frame(commit, kCommit);
  if (!c) return incomplete(c.error().message);
  if (c->u64_at(kCommitEntriesAt) != entries || c->u64_at(kCommitBytesAt) != bytes ||
      c->u32_at(kCommitChainAt) != chain)
    return incomplete("its commit record does not match its entries");
  info.state = JournalState::Committed;
  info.entries = entries;
  info.bytes = bytes;
  return info;
}

Result<JournalInfo> walk_file(Env& env, const std::string& path, uint64_t image_size,
                              const OnEntry& on_entry) {
  JournalInfo info;
  auto there = TRY(env.exists(path));
  if (!there) return info;
  auto f = TRY(env.open(path, OpenMode::ReadOnly));
  const uint64_t size = TRY(f->size());
  info.state = JournalState::Incomplete;
  if (size == 0) return info;  // created, nothing written yet
  std::vector<std::byte> head(std::min<uint64_t>(size, kJournalHeaderBytes));
  TRY(read_exact_at(*f, 0, head));
  // A crash may cut the magic itself: what is there must be its beginning.
  const size_t magic_there = std::min(head.size(), kHeader.magic.size());
  if (ByteReader(head).string_at(0, magic_there) != kHeader.magic.substr(0, magic_there))
    return Error{EINVAL, path + " is not an imgstream patch journal: move it away"};
  if (head.size() < kJournalHeaderBytes) {
    info.why = "its header is cut short";
    return info;
  }
  auto h = open_frame(head, kHeader);
  if (!h) {
    info.why = h.error().message;
    return info;
  }
  if (h->u64_at(kHeaderImageSizeAt) != image_size)
    return Error{EINVAL, path + " is the journal of an image of " +
                             std::to_string(h->u64_at(kHeaderImageSizeAt)) +
                             " bytes, not of this one (" + std::to_string(image_size) +
                             "): move it away"};
  auto out = TRY(walk(*f, size, image_size, h->u64_at(kHeaderEntriesAt), on_entry));
  if (out.state == JournalState::Committed && out.bytes != h->u64_at(kHeaderBytesAt)) {
    out.state = JournalState::Incomplete;
    out.why = "its header and commit record disagree";
  }
  return out;
}

}  // namespace

std::string journal_path(const std::string& image) {
  return image + kJournalSuffix;
}

Result<void> write_journal(Env& env, const std::string& path, uint64_t image_size,
                           const std::vector<OverlayDevice::Run>& runs) {
  if (TRY(env.exists(path))) return Error{EEXIST, path + " exists already"};
  const auto pieces = pieces_of(runs);
  uint64_t bytes = 0;
  for (const auto& p : pieces) bytes += p.bytes.size();
  auto f = TRY(env.open(path, OpenMode::CreateOrOpen));
  auto header = new_frame(kHeader);
  ByteWriter hw(header);
  hw.u64_at(kHeaderImageSizeAt, image_size);
  hw.u64_at(kHeaderEntriesAt, pieces.size());
  hw.u64_at(kHeaderBytesAt, bytes);
  seal_frame(header, kHeader);
  TRY(write_all_at(*f, 0, header));
  uint64_t at = kJournalHeaderBytes;
  uint32_t chain = 0;
  for (const auto& p : pieces) {
    IMG_CHECK(p.offset <= image_size && p.bytes.size() <= image_size - p.offset);
    auto head = entry_header(p.offset, uint32_t(p.bytes.size()), crc32c(p.bytes));
    TRY(write_all_at(*f, at, head));
    TRY(write_all_at(*f, at + head.size(), p.bytes));
    chain = crc32c(p.bytes, crc32c(head, chain));
    at += head.size() + p.bytes.size();
  }
  // The entries are durable before the record that makes them count.
  TRY(f->sync());
  auto commit = new_frame(kCommit);
  ByteWriter cw(commit);
  cw.u64_at(kCommitEntriesAt, pieces.size());
  cw.u64_at(kCommitBytesAt, bytes);
  cw.u32_at(kCommitChainAt, chain);
  seal_frame(commit, kCommit);
  TRY(write_all_at(*f, at, commit));
  TRY(f->sync());
  return env.sync_dir(parent_dir(path));
}

Result<JournalInfo> inspect_journal(Env& env, const std::string& path, uint64_t image_size) {
  return walk_file(env, path, image_size, nullptr);
}

Result<JournalInfo> recover_journal(Env& env, const std::string& path, File& image,
                                    uint64_t image_size) {
  // Checked whole before the first byte goes into the image.
  auto info = TRY(walk_file(env, path, image_size, nullptr));
  if (info.state == JournalState::Absent) return info;
  if (info.state == JournalState::Committed) {
    TRY(walk_file(env, path, image_size, [&](uint64_t offset, std::span<const std::byte> data) {
      return write_all_at(image, offset, data);
    }));
    TRY(image.sync());
  }
  TRY(env.remove(path));
  TRY(env.sync_dir(parent_dir(path)));
  return info;
}

}  // namespace imgstream::patch
