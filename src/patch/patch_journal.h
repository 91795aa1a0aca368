// The patch journal (docs/patch-journal.md): how `imgstream patch` changes an image in
// place so that a kill -9 or a power cut at any moment leaves it either as it was or
// fully patched.
//
// The patch is built in memory (an OverlayDevice) and checked first; then its changed
// bytes are written to IMAGE.imgstream-journal, made durable, sealed by a commit record
// and made durable again; only then are they written into the image, which is synced
// before the journal is removed. Whoever opens the image for a patch next finds either
// no journal, an incomplete one (the crash came before the commit: the image was not
// touched; the journal is deleted) or a committed one (the crash came during or after
// the writes to the image: they are written again, which is harmless, and the journal
// deleted). `serve`, `stream` and `pack` refuse an image with a journal beside it.
//
// The journal is untrusted input (fuzz/patch_journal_fuzz.cc): every length is checked
// against its bound and the image's size before it is read.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/env.h"
#include "base/image_lock.h"
#include "base/limits.h"
#include "base/result.h"
#include "patch/overlay_device.h"

namespace imgstream::patch {

inline constexpr const char* kJournalSuffix = kPatchJournalSuffix;
// An entry's bytes: runs longer than this are written as several entries, so that
// reading one back needs a bounded buffer.
inline constexpr uint64_t kJournalEntryMax = limits::kJournalEntryBytesMax;
inline constexpr uint64_t kJournalHeaderBytes = 4096;
inline constexpr uint64_t kJournalEntryHeaderBytes = 24;
inline constexpr uint64_t kJournalCommitBytes = 64;

std::string journal_path(const std::string& image);

enum class JournalState { Absent, Incomplete, Committed };

struct JournalInfo {
  JournalState state = JournalState::Absent;
  uint64_t entries = 0;
  uint64_t bytes = 0;
  std::string why;  // Incomplete: what was missing or damaged
};

// Writes `runs` (offsets in the image) as the journal at `path`, which must not exist,
// and makes it durable with its commit record. `image_size` is recorded and checked
// on recovery.
Result<void> write_journal(Env& env, const std::string& path, uint64_t image_size,
                           const std::vector<OverlayDevice::Run>& runs);

// What the journal at `path` holds. A file there that is not a journal at all (wrong
// magic) is an error, never Incomplete: it is somebody's file, not ours to delete.
Result<JournalInfo> inspect_journal(Env& env, const std::string& path, uint64_t image_size);

// Brings `image` (open read-write, locked) to a consistent state: a committed journal is
// applied and the image synced; then the journal (committed or not) is removed and its
// directory synced. Absent: nothing done.
Result<JournalInfo> recover_journal(Env& env, const std::string& path, File& image,
                                    uint64_t image_size);

// Applies the committed journal and removes it: the last step of a patch in place.
inline Result<JournalInfo> apply_journal(Env& env, const std::string& path, File& image,
                                         uint64_t image_size) {
  return recover_journal(env, path, image, image_size);
}

}  // namespace imgstream::patch
