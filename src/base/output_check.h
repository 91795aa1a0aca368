// Checks made before a command writes an output file, so that a mistyped path never
// destroys anything (issue 12): `pack golden.img -o golden.img` replaced the image,
// `serve ... --trace x.pack` truncated a pack, `pack -o DIR` compressed everything and
// only then failed at the rename. Every command with an output file calls check_output()
// before any work, and refuses what it reports.
//
// The checks use the real file system (stat, open): they are about the user's files,
// which an in-memory Env does not hold.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace imgstream {

// What a command writes: files of this kind start with `magic`. A kind without magic
// (raw images) cannot be told from any other file.
struct OutputKind {
  std::string_view name;   // "pack", "trace", "profile", "raw image"
  std::string_view magic;  // empty: none
};

enum class Overwrite {
  SameKind,  // an existing file is replaced only when it is of the output's kind
  Force,     // --force: any existing regular file is replaced
};

// Ok when `output` may be written. Refused (with one message naming the output):
//   - an output whose directory is missing, not a directory or not writable (ENOENT,
//     ENOTDIR, EACCES);
//   - an output that is a directory or another non-regular file (EISDIR, EINVAL);
//   - an output that is one of `inputs`, or whose OUTPUT.tmp is (the same file after
//     resolving links: st_dev and st_ino; EEXIST), even with Overwrite::Force;
//   - an existing non-empty file not of `kind` (no magic: any), unless Overwrite::Force
//     (EEXIST).
// `inputs` that do not exist locally (URLs, empty strings) are skipped.
Result<void> check_output(const std::string& output, const std::vector<std::string>& inputs,
                          const OutputKind& kind, Overwrite overwrite);

// Whether paths `a` and `b` name the same existing file (links resolved).
bool same_file(const std::string& a, const std::string& b);

}  // namespace imgstream
