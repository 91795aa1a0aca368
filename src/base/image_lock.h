// Image locks in QEMU's own scheme, so that imgstream, qemu-img, qemu-nbd and qemu-system
// see one another (issue 12: two writable `serve`s of one image, or `serve` beside a
// running qemu-nbd of it, all started).
//
// QEMU (block/file-posix.c) puts shared OFD locks (fcntl F_OFD_SETLK, F_RDLCK) on single
// bytes of the image file: byte 100 + p says "I use permission p", byte 200 + p "I do not
// share permission p", for the permissions consistent-read (p = 0), write (1),
// write-unchanged (2) and resize (3). An opener takes the bytes of its own use, then
// tests (F_OFD_GETLK) that no other open file holds a byte that conflicts with it:
// 100 + p of a permission it does not share, 200 + p of one it uses. The locks belong to
// the open file description and go when its last descriptor closes (or the process dies).
//
// What the uses below take (bytes), next to what QEMU 7.2 takes:
//   Read        100, 203             as qemu-nbd -r: readers share writing
//   ReadStable  100, 201, 203        as a copy's source: nobody may write meanwhile
//   Write       100, 101, 201, 203   as a writable disk: no other writer; readers welcome
//   Exclusive   100, 101, 200-203    as an offline edit (patch): nobody else may even read
//   (qemu-nbd: 100, 101, 203; qemu-io: 100, 101; qemu-io -r and qemu-img compare: 100)
#pragma once

#include "base/env.h"
#include "base/result.h"

namespace imgstream {

// Beside an image being patched in place: its journal (patch/patch_journal.h). Whoever
// opens the image for use refuses it while the journal is there.
inline constexpr const char* kPatchJournalSuffix = ".imgstream-journal";

enum class ImageUse {
  Read,        // reads; others may write
  ReadStable,  // reads, and the image must not change meanwhile
  Write,       // reads and writes; no other writer
  Exclusive,   // reads and writes; no other opener at all (a patch in place)
};

// Takes the locks for `use` on `f`'s open file description. Refused with EBUSY and one
// line naming the image and the holder: "PATH is in use: locked by process N (NAME),
// which writes to it", or "... locked by another process, ..." when the holder cannot be
// found (Linux: /proc/locks, else the /proc/PID/fdinfo of the processes this one may
// read). Files without a descriptor (in-memory Envs) and file systems without OFD locks
// are let through, the latter with a warning.
Result<void> lock_image(File& f, ImageUse use);

}  // namespace imgstream
