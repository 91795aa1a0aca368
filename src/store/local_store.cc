#include "store/local_store.h"

#include <bit>
#include <ctime>

#include "base/check.h"
#include "base/endian.h"
#include "base/image_lock.h"
#include "base/log.h"

namespace imgstream::store {

namespace {

std::string meta_path(const std::string& dir) { return dir + "/meta"; }

// Generation g lives in slot (g - 1) mod 2: each commit overwrites the older slot.
int slot_index(uint64_t generation) { return static_cast<int>((generation - 1) % 2); }

// Reads and checks the header, and that the file is long enough for the geometry it
// claims (both slots), so that nothing is allocated for slots the file cannot hold.
Result<StoreHeader> read_header(File& meta, const std::string& dir) {
  std::vector<std::byte> hb(kHeaderBytes);
  const uint64_t size = TRY_CTX(meta.size(), "store " + dir);
  if (size < kHeaderBytes)
    return Error::invalid("store " + dir + " is corrupt: meta file is " + std::to_string(size) +
                          " bytes, shorter than its header");
  TRY_CTX(read_exact_at(meta, 0, hb), "store " + dir);
  StoreHeader h = TRY_CTX(decode_header(hb), "store " + dir);
  TRY_CTX(check_meta_size(h, size), "store " + dir + " is corrupt");
  return h;
}

// Reads both slots and returns the valid one with the higher generation.
Result<Slot> newest_slot(File& meta, const StoreHeader& h, const std::string& dir) {
  Result<Slot> best = Error::invalid("store " + dir + " has no valid bitmap slot: it is corrupt");
  for (int i = 0; i < 2; ++i) {
    std::vector<std::byte> buf(h.slot_bytes());
    auto r = read_exact_at(meta, h.slot_offset(i), buf);
    if (!r) {
      if (r.error().code != EIO) return std::move(r).error();
      continue;  // a slot cut short by a crash during the first commits
    }
    auto s = decode_slot(h, buf);
    if (!s) {
      LOG_INFO("store {}: slot {} ignored: {}", dir, i, s.error().message);
      continue;
    }
    if (!best || s->generation > best->generation) best = std::move(s);
  }
  return best;
}

}  // namespace

LocalStore::~LocalStore() = default;

uint64_t LocalStore::region_bytes(uint64_t r) const {
  IMG_CHECK(r < regions_);
  const uint64_t start = r * header_.region_size;
  return std::min<uint64_t>(header_.region_size, header_.image_size - start);
}

Result<void> LocalStore::check_dir(Env& env, const std::string& dir) {
  if (!TRY(env.exists(dir))) return ok();
  const std::vector<std::string> names = TRY_CTX(env.list_dir(dir), "store " + dir);
  for (const std::string& n : names)
    if (n == kStoreMetaName) return ok();  // a store: load() checks it is one, and whose
  for (const std::string& n : names) {
    bool ours = false;
    for (std::string_view s : kStoreNamesBeingMade) ours |= n == s;
    if (!ours)
      return Error{EEXIST, "store " + dir + " is not an imgstream store and not empty (it holds '" +
                               n + "'); not using it"};
  }
  return ok();
}

Result<std::unique_ptr<LocalStore>> LocalStore::open_or_create(Env& env, const StoreOptions& o) {
  std::unique_ptr<LocalStore> s(new LocalStore(env, o.dir));
  // Before anything is written in it (even the lock file): a user's directory stays as is.
  TRY(check_dir(env, o.dir));
  TRY_CTX(make_dirs(env, o.dir), "store " + o.dir);
  auto lock = env.lock(o.dir + "/lock");
  if (!lock) {
    if (lock.error().code == EWOULDBLOCK)
      return Error{EBUSY, "store " + o.dir + " is in use by another imgstream process"};
    return std::move(lock).error();
  }
  s->lock_ = std::move(*lock);
  if (TRY(env.exists(meta_path(o.dir)))) {
    TRY(s->load(o));
  } else {
    TRY(s->create(o));
    s->created_ = true;
  }
  return s;
}

Result<StoreStatus> LocalStore::read_status(Env& env, const std::string& dir) {
  if (!TRY(env.exists(meta_path(dir)))) return Error{ENOENT, dir + " is not an imgstream store"};
  auto meta = TRY(env.open(meta_path(dir), OpenMode::ReadOnly));
  StoreStatus st;
  st.header = TRY(read_header(*meta, dir));
  st.slot = TRY(newest_slot(*meta, st.header, dir));
  return st;
}

Result<void> LocalStore::create(const StoreOptions& o) {
  header_.image_size = o.image_size;
  header_.region_size = o.region_size;
  header_.external_device = !o.device_path.empty();
  header_.device_path = o.device_path;
  header_.source_uri = o.source_uri;
  header_.fingerprint = o.fingerprint;
  header_.fingerprint_kind = o.fingerprint_kind;
  header_.created_unix = static_cast<uint64_t>(std::time(nullptr));
  TRY_CTX(validate_header(header_), "store " + dir_);
  regions_ = header_.regions();
  TRY(open_data(true));

  // The meta file appears whole or not at all: written aside, synced, renamed.
  Slot first;
  first.generation = 1;
  first.bitmap.assign(header_.bitmap_bytes(), 0);
  const std::string tmp = meta_path(dir_) + ".tmp";
  {
    auto f = TRY(env_.open(tmp, OpenMode::CreateOrOpen));
    TRY(f->truncate(0));
    TRY(write_all_at(*f, 0, encode_header(header_)));
    TRY(write_all_at(*f, header_.slot_offset(slot_index(1)), encode_slot(header_, first)));
    TRY(f->truncate(header_.slot_offset(2)));
    TRY(f->sync());
  }
  TRY(env_.rename(tmp, meta_path(dir_)));
  TRY(env_.sync_dir(dir_));
  // The store directory itself is new too: its entry in the parent must be durable.
  TRY(env_.sync_dir(parent_dir(dir_)));
  meta_ = TRY(env_.open(meta_path(dir_), OpenMode::ReadWrite));
  adopt_slot(first);
  return ok();
}

Result<void> LocalStore::load(const StoreOptions& o) {
  meta_ = TRY(env_.open(meta_path(dir_), OpenMode::ReadWrite));
  header_ = TRY(read_header(*meta_, dir_));
  regions_ = header_.regions();
  // The store knows its image: never resume against another.
  const std::string other = "store " + dir_ + " was made for another image: ";
  if (o.image_size != header_.image_size)
    return Error{EEXIST, other + "its size is " + std::to_string(header_.image_size) +
                             " bytes, the source's " + std::to_string(o.image_size)};
  // (The caller took the fingerprint the store's way: StoreStatus tells it which.)
  if (o.fingerprint != header_.fingerprint || o.fingerprint_kind != header_.fingerprint_kind)
    return Error{EEXIST, other + "the source's content fingerprint differs (made from " +
                             header_.source_uri + ")"};
  if (o.region_size != 0 && o.region_size != header_.region_size)
    return Error{EEXIST, "store " + dir_ + " has region size " +
                             std::to_string(header_.region_size) + ", not " +
                             std::to_string(o.region_size)};
  if (o.device_path != header_.device_path)
    return Error{EEXIST, "store " + dir_ + " keeps its data on '" + header_.device_path +
                             "', not '" + o.device_path + "'"};
  TRY(open_data(false));
  adopt_slot(TRY(newest_slot(*meta_, header_, dir_)));
  return ok();
}

Result<void> LocalStore::open_data(bool creating) {
  if (header_.external_device) {
    data_ = TRY(env_.open(header_.device_path, OpenMode::ReadWrite));
    // The streamer writes the device: nobody else may (base/image_lock.h).
    TRY(lock_image(*data_, ImageUse::Write));
    const uint64_t size = TRY(data_->size());
    if (size < header_.image_size)
      return Error::invalid("device " + header_.device_path + " is smaller than the image");
    return ok();
  }
  data_ = TRY(env_.open(dir_ + "/data", OpenMode::CreateOrOpen));
  if (creating) {
    TRY(data_->truncate(0));  // a data file left by a crash before `meta` existed
    TRY(data_->truncate(header_.image_size));
    TRY(data_->sync());
  } else if (TRY(data_->size()) != header_.image_size) {
    return Error::invalid("store " + dir_ + ": data file has the wrong size");
  }
  return ok();
}

void LocalStore::adopt_slot(const Slot& s) {
  IMG_CHECK(s.bitmap.size() == header_.bitmap_bytes());
  word_count_ = (regions_ + 63) / 64;
  words_ = std::make_unique<std::atomic<uint64_t>[]>(word_count_);
  uint64_t count = 0;
  for (size_t w = 0; w < word_count_; ++w) {
    uint64_t v = 0;
    for (size_t b = 0; b < 8 && w * 8 + b < s.bitmap.size(); ++b)
      v |= uint64_t(s.bitmap[w * 8 + b]) << (8 * b);
    words_[w].store(v, std::memory_order_relaxed);
    count += static_cast<uint64_t>(std::popcount(v));
  }
  IMG_CHECK(count == s.count_present());
  present_count_ = count;
  const Counters& c = s.counters;
  fetched_demand_ = c.bytes_fetched_demand;
  fetched_background_ = c.bytes_fetched_background;
  fetched_prefetch_ = c.bytes_fetched_prefetch;
  prefetch_read_ = c.prefetch_bytes_read;
  reads_local_ = c.reads_local;
  reads_waited_ = c.reads_waited;
  wait_ns_ = c.wait_ns;
  seeded_ = c.bytes_seeded;
  reads_failed_ = c.reads_failed;
  committed_counters_ = c;
  state_ = s.state;
  error_message_ = s.error_message;
  generation_ = s.generation;
  changes_ = committed_changes_ = 0;
}

uint64_t LocalStore::next_missing(uint64_t from) const {
  for (uint64_t w = from / 64; w < word_count_; ++w) {
    uint64_t missing = ~words_[w].load(std::memory_order_acquire);
    if (w == from / 64) missing &= ~0ULL << (from % 64);
    if (missing) {
      const uint64_t r = w * 64 + static_cast<uint64_t>(std::countr_zero(missing));
      return std::min(r, regions_);
    }
  }
  return regions_;
}

void LocalStore::mark_present(uint64_t first, uint64_t count) {
  IMG_CHECK(first + count <= regions_);
  uint64_t added = 0;
  for (uint64_t r = first; r < first + count;) {
    const uint64_t w = r / 64, bit = r % 64;
    const uint64_t n = std::min<uint64_t>(64 - bit, first + count - r);
    const uint64_t mask = (n == 64 ? ~0ULL : ((1ULL << n) - 1)) << bit;
    const uint64_t old = words_[w].fetch_or(mask, std::memory_order_acq_rel);
    added += static_cast<uint64_t>(std::popcount(mask & ~old));
    r += n;
  }
  if (added) {
    present_count_.fetch_add(added, std::memory_order_relaxed);
    changes_.fetch_add(1, std::memory_order_release);
  }
}

namespace {

template <typename A>
A& by_kind(FetchKind k, A& demand, A& background, A& prefetch) {
  switch (k) {
    case FetchKind::Demand: return demand;
    case FetchKind::Background: return background;
    case FetchKind::Prefetch: return prefetch;
  }
  IMG_CHECK(false);
  return demand;
}

}  // namespace

void LocalStore::add_fetched(FetchKind k, uint64_t bytes) {
  by_kind(k, fetched_demand_, fetched_background_, fetched_prefetch_).fetch_add(bytes);
  changes_.fetch_add(1, std::memory_order_release);
}

uint64_t LocalStore::fetched(FetchKind k) const {
  return by_kind(k, fetched_demand_, fetched_background_, fetched_prefetch_).load();
}

Counters LocalStore::counters() const {
  Counters c;
  // prefetch_read_ first: a prefetched region is counted in fetched_prefetch_ before any
  // read can count it as read, so this order keeps read <= prefetched.
  c.prefetch_bytes_read = prefetch_read_.load();
  c.bytes_fetched_prefetch = fetched_prefetch_.load();
  c.bytes_fetched_demand = fetched_demand_.load();
  c.bytes_fetched_background = fetched_background_.load();
  c.reads_local = reads_local_.load(std::memory_order_relaxed);
  c.reads_waited = reads_waited_.load(std::memory_order_relaxed);
  c.wait_ns = wait_ns_.load(std::memory_order_relaxed);
  c.bytes_seeded = seeded_.load();
  c.reads_failed = reads_failed_.load(std::memory_order_relaxed);
  return c;
}

void LocalStore::set_state(StoreState s, std::string error_message) {
  std::lock_guard lock(state_mu_);
  if (error_message.size() > kErrorMessageBytesMax) error_message.resize(kErrorMessageBytesMax);
  state_ = s;
  error_message_ = std::move(error_message);
  changes_.fetch_add(1, std::memory_order_release);
}

StoreState LocalStore::state() const {
  std::lock_guard lock(state_mu_);
  return state_;
}

std::string LocalStore::error_message() const {
  std::lock_guard lock(state_mu_);
  return error_message_;
}

std::vector<uint8_t> LocalStore::snapshot_bitmap() const {
  std::vector<uint8_t> bytes(header_.bitmap_bytes());
  for (size_t w = 0; w < word_count_; ++w) {
    const uint64_t v = words_[w].load(std::memory_order_acquire);
    for (size_t b = 0; b < 8 && w * 8 + b < bytes.size(); ++b)
      bytes[w * 8 + b] = static_cast<uint8_t>(v >> (8 * b));
  }
  return bytes;
}

Result<void> LocalStore::commit(bool with_counters) {
  std::lock_guard lock(commit_mu_);
  const uint64_t changes = changes_.load(std::memory_order_acquire);
  const Counters counters = this->counters();
  if (changes == committed_changes_ && (!with_counters || counters == committed_counters_)) {
    // Nothing new for the bitmap, but a client FLUSH still needs its writes durable.
    return data_->sync();
  }
  if (generation_ >= kSlotGenerationMax)  // never in practice: decode_slot refuses more
    return Error::invalid("store " + dir_ + ": no generation left to commit");
  Slot s;
  s.generation = generation_ + 1;
  s.bitmap = snapshot_bitmap();  // only bits whose data was written before this point
  s.counters = counters;
  {
    std::lock_guard sl(state_mu_);
    s.state = state_;
    s.error_message = error_message_;
  }
  TRY_CTX(data_->sync(), "store " + dir_);  // data before the bits that claim it
  TRY_CTX(write_all_at(*meta_, header_.slot_offset(slot_index(s.generation)),
                       encode_slot(header_, s)),
          "store " + dir_);
  TRY_CTX(meta_->sync(), "store " + dir_);
  generation_ = s.generation;
  committed_changes_ = changes;
  committed_counters_ = counters;
  return ok();
}

}  // namespace imgstream::store
