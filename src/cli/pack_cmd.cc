// imgstream pack / pack diff / unpack / verify / info: the pack format's tools
// (docs/pack-format.md).
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstring>
#include <unordered_set>

#include "base/env.h"
#include "base/log.h"
#include "base/output_check.h"
#include "base/stop.h"
#include "base/units.h"
#include "cli/cli.h"
#include "cli/progress.h"
#include "cli/stop_signals.h"
#include "device/file_device.h"
#include "io/control.h"
#include "pack/pack_reader.h"
#include "pack/pack_tools.h"
#include "pack/pack_writer.h"
#include "profile/profile.h"

namespace imgstream::cli {

namespace {

int fail(const std::string& what, const Error& e) {
  print_error(what + ": " + e.message);
  return kExitFailure;
}

// An output refused before any work (base/output_check.h): the command line's mistake.
int refuse(const std::string& what, const Error& e) {
  print_error(what + ": " + e.message);
  return kExitUsage;
}

Overwrite overwrite_mode(bool force) {
  return force ? Overwrite::Force : Overwrite::SameKind;
}

// --- pack ---------------------------------------------------------------------------

struct PackArgs {
  std::string image, output, chunk_size = "128K", profile, base;
  int level = pack::kLevelDefault;
  unsigned threads = 0;
  bool quiet = false;
  bool force = false;
};

// Before any work: the output is none of the inputs (image, profile, base chain), not a
// directory, in a writable directory, and a pack if it exists (unless --force).
int check_pack_output(const PackArgs& a) {
  std::vector<std::string> inputs{a.image, a.profile};
  if (!a.base.empty()) {
    auto b = pack::Pack::open(*Env::posix(), a.base);
    if (!b) return fail("pack --base " + a.base, b.error());
    for (std::string& f : pack::chain_files(**b)) inputs.push_back(std::move(f));
  }
  auto r = check_output(a.output, inputs, pack::kPackOutput, overwrite_mode(a.force));
  return r ? kExitOk : refuse("pack " + a.image, r.error());
}

int run_pack(const PackArgs& a) {
  if (int rc = check_pack_output(a); rc != kExitOk) return rc;
  // The first SIGINT stops the work within a chunk and removes OUTPUT.tmp.
  set_graceful_stop();
  pack::PackWriteOptions o;
  o.image = a.image;
  o.output = a.output;
  o.level = a.level;
  o.threads = a.threads;
  o.base = a.base;
  o.chunk_size = static_cast<uint32_t>(parse_size(a.chunk_size).value());
  if (!a.profile.empty()) {
    auto p = profile::read_profile(*Env::posix(), a.profile);
    if (!p) return fail("pack", p.error());
    for (const profile::ProfileRun& run : p->runs)
      o.boot_ranges.emplace_back(run.first_region * p->region_size, run.count * p->region_size);
  }
  Progress progress("pack", a.quiet);
  o.progress = [&](uint64_t done, uint64_t total) { progress.update(done, total); };
  auto r = pack::write_pack(*Env::posix(), o);
  progress.finish();
  if (!r) return fail("pack " + a.image, r.error());
  const pack::PackHeader& h = r->header;
  const double secs = progress.seconds();
  std::printf("%s: %s image in %llu chunks of %s -> %s pack (%.1f%%) in %.1f s (%.0f MB/s)\n",
              a.output.c_str(), format_size(h.image_size).c_str(),
              static_cast<unsigned long long>(r->chunks), format_size(h.chunk_size).c_str(),
              format_size(r->file_bytes).c_str(), 100.0 * double(r->file_bytes) / double(h.image_size),
              secs, double(h.image_size) / secs / 1e6);
  std::printf("chunks: %llu stored (%llu uncompressed), %llu zero, %llu duplicate, %llu in the base\n",
              static_cast<unsigned long long>(r->stored_chunks),
              static_cast<unsigned long long>(r->raw_chunks),
              static_cast<unsigned long long>(r->zero_chunks),
              static_cast<unsigned long long>(r->duplicate_chunks),
              static_cast<unsigned long long>(r->base_chunks));
  if (h.boot_chunks)
    std::printf("boot set: %llu chunks first, bytes %llu to %llu of the pack (%s)\n",
                static_cast<unsigned long long>(h.boot_chunks),
                static_cast<unsigned long long>(h.boot_begin),
                static_cast<unsigned long long>(h.boot_end),
                format_size(h.boot_end - h.boot_begin).c_str());
  std::printf("identity: %s\n", to_hex(h.identity).c_str());
  return kExitOk;
}

// --- pack diff ----------------------------------------------------------------------

int run_diff(const std::string& old_path, const std::string& new_path, bool json) {
  auto o = pack::Pack::open(*Env::posix(), old_path);
  if (!o) return fail("pack diff", o.error());
  auto n = pack::Pack::open(*Env::posix(), new_path);
  if (!n) return fail("pack diff", n.error());
  const pack::PackDiff d = pack::diff_packs(**o, **n);
  if (json) {
    std::printf("%s\n", dump_json(d.to_json()).c_str());
    return kExitOk;
  }
  std::printf("%s -> %s: %llu of %llu distinct chunks are new: %s to fetch (%s of image data); "
              "%llu shared\n",
              old_path.c_str(), new_path.c_str(), static_cast<unsigned long long>(d.new_chunks),
              static_cast<unsigned long long>(d.distinct_chunks),
              format_size(d.new_bytes_stored).c_str(), format_size(d.new_bytes_image).c_str(),
              static_cast<unsigned long long>(d.shared_chunks));
  return kExitOk;
}

// --- unpack -------------------------------------------------------------------------

int run_unpack(const std::string& where, const std::string& output, bool quiet, bool force) {
  auto p = pack::Pack::open(*Env::posix(), where);
  if (!p) return fail("unpack", p.error());
  pack::UnpackOptions o;
  o.output = output;
  o.overwrite = overwrite_mode(force);
  if (auto r = pack::check_unpack_output(**p, o); !r) return refuse("unpack " + where, r.error());
  set_graceful_stop();  // the first SIGINT stops within a batch and removes OUTPUT.tmp
  Progress progress("unpack", quiet);
  o.progress = [&](uint64_t done, uint64_t total) { progress.update(done, total); };
  auto r = pack::unpack(*Env::posix(), **p, o);
  progress.finish();
  if (!r) return fail("unpack " + where, r.error());
  if (!quiet)
    std::printf("%s: %s written from %s\n", output.c_str(), format_size(*r).c_str(), where.c_str());
  return kExitOk;
}

// --- verify -------------------------------------------------------------------------

int run_verify(const std::string& where, bool quiet) {
  set_graceful_stop();  // Pack::verify stops between chunks on the first SIGINT
  auto p = pack::Pack::open(*Env::posix(), where);
  if (!p) return fail("verify", p.error());  // header, index and chain checked on open
  Progress progress("verify", quiet);
  const pack::PackHeader& h = (*p)->header();
  // verify counts chunks; the progress line shows bytes: the image bytes checked so far.
  auto bad = (*p)->verify([&](uint64_t chunks_done, uint64_t) {
    progress.update(std::min(chunks_done * h.chunk_size, h.image_size), h.image_size);
  });
  progress.finish();
  if (!bad) return fail("verify " + where, bad.error());
  for (uint64_t c : *bad) {
    const pack::IndexEntry& e = (*p)->index()[c];
    std::printf("%s: chunk %llu (image bytes %llu+%u, pack bytes %llu+%u): corrupt\n",
                where.c_str(), static_cast<unsigned long long>(c),
                static_cast<unsigned long long>(c) * (*p)->header().chunk_size,
                (*p)->header().chunk_bytes(c), static_cast<unsigned long long>(e.offset), e.length);
  }
  if (!bad->empty()) {
    print_error("verify " + where + ": " + std::to_string(bad->size()) + " corrupt chunks");
    return kExitFailure;
  }
  if (!quiet) std::printf("%s: ok (%zu chunks, identity %s)\n", where.c_str(),
                          (*p)->index().size(), to_hex((*p)->header().identity).c_str());
  return kExitOk;
}

// --- info ---------------------------------------------------------------------------

int run_info(const std::string& where, bool json) {
  auto p = pack::Pack::open(*Env::posix(), where);
  if (!p) return fail("info", p.error());
  const pack::PackHeader& h = (*p)->header();
  uint64_t kinds[4] = {0, 0, 0, 0}, stored = 0, data_bytes = 0;
  std::unordered_set<uint64_t> offsets;
  for (uint64_t i = 0; i < (*p)->index().size(); ++i) {
    const pack::IndexEntry& e = (*p)->index()[i];
    ++kinds[static_cast<int>(e.kind)];
    if (e.kind != pack::ChunkKind::Zero) data_bytes += h.chunk_bytes(i);
    if (e.stored() && offsets.insert(e.offset).second) stored += e.length;
  }
  nlohmann::json chain = nlohmann::json::array();
  for (const pack::Pack* b = (*p)->base(); b; b = b->base())
    chain.push_back({{"uri", b->uri()}, {"identity", to_hex(b->header().identity)}});
  nlohmann::json j{{"pack", where},
                   {"identity", to_hex(h.identity)},
                   {"image_size", h.image_size},
                   {"chunk_size", h.chunk_size},
                   {"chunks", h.chunk_count()},
                   {"chunks_zstd", kinds[1]},
                   {"chunks_raw", kinds[2]},
                   {"chunks_zero", kinds[0]},
                   {"chunks_in_base", kinds[3]},
                   {"chunks_stored_distinct", offsets.size()},
                   {"stored_bytes", stored},
                   {"file_size", (*p)->file_size()},
                   {"level", h.level},
                   {"compression_ratio", stored ? double(data_bytes) / double(stored) : 0.0},
                   {"boot_chunks", h.boot_chunks},
                   {"boot_range", {h.boot_begin, h.boot_end}},
                   {"base_chain", chain}};
  if (json) {
    std::printf("%s\n", dump_json(j).c_str());
    return kExitOk;
  }
  std::printf("pack: %s (%s)\nidentity: %s\nimage: %s in %llu chunks of %s\n", where.c_str(),
              format_size((*p)->file_size()).c_str(), to_hex(h.identity).c_str(),
              format_size(h.image_size).c_str(), static_cast<unsigned long long>(h.chunk_count()),
              format_size(h.chunk_size).c_str());
  std::printf("chunks: %llu zstd, %llu raw, %llu zero, %llu in the base chain; %zu stored once\n",
              static_cast<unsigned long long>(kinds[1]), static_cast<unsigned long long>(kinds[2]),
              static_cast<unsigned long long>(kinds[0]), static_cast<unsigned long long>(kinds[3]),
              offsets.size());
  std::printf("compression: %s of data in %s stored (%.2fx, zstd level %u)\n",
              format_size(data_bytes).c_str(), format_size(stored).c_str(),
              stored ? double(data_bytes) / double(stored) : 0.0, h.level);
  if (h.boot_chunks)
    std::printf("boot set: %llu chunks first in the pack, bytes %llu to %llu (%s)\n",
                static_cast<unsigned long long>(h.boot_chunks),
                static_cast<unsigned long long>(h.boot_begin),
                static_cast<unsigned long long>(h.boot_end),
                format_size(h.boot_end - h.boot_begin).c_str());
  else
    std::printf("boot set: none (packed without --profile)\n");
  if (h.has_base()) {
    std::printf("base chain:");
    for (const pack::Pack* b = (*p)->base(); b; b = b->base())
      std::printf(" -> %s (%s)", b->uri().c_str(), to_hex(b->header().identity, 8).c_str());
    std::printf("\n");
  }
  return kExitOk;
}

}  // namespace

Runner add_pack(CLI::App& app) {
  auto a = std::make_shared<PackArgs>();
  struct DiffArgs {
    std::string old_pack, new_pack;
    bool json = false;
  };
  auto d = std::make_shared<DiffArgs>();
  CLI::App* cmd = app.add_subcommand(
      "pack",
      "Write a pack: the image in fixed-size chunks, each compressed with zstd and\n"
      "addressed by its SHA-256 (identical chunks stored once, zero chunks not at all),\n"
      "with an index, so that any HTTP server can serve it for streaming\n"
      "(docs/pack-format.md). With --profile the boot set comes first, in one range.\n"
      "With --base only the chunks the base does not have are written.");
  cmd->add_option("IMAGE", a->image, "Raw disk image to pack");
  cmd->add_option("-o,--output", a->output, "The pack to write (NAME.pack)");
  cmd->add_option("--chunk-size", a->chunk_size,
                  "Chunk size, a power of two from 4K to 16M: smaller makes updates cheaper, "
                  "larger compresses better")
      ->check(size_validator())
      ->capture_default_str();
  cmd->add_option("--profile", a->profile, "Boot profile (imgstream profile merge): its regions first");
  cmd->add_option("--level", a->level, "zstd level (1-19)")->check(CLI::Range(1, 19))->capture_default_str();
  cmd->add_option("--base", a->base, "An older pack to build on: write only the chunks it lacks");
  cmd->add_option("--threads", a->threads, "Compression threads (default: one per core)")
      ->check(CLI::Range(1u, 256u));
  cmd->add_flag("-q,--quiet", a->quiet, "No progress line");
  cmd->add_flag("--force", a->force,
                "Replace an existing output file that is not a pack (never an input)");
  CLI::App* diff = cmd->add_subcommand(
      "diff", "What moving a store from OLD to NEW costs: the chunks NEW has that OLD lacks.");
  diff->add_option("OLD", d->old_pack, "The pack a store holds now")->required();
  diff->add_option("NEW", d->new_pack, "The pack to move to")->required();
  diff->add_flag("--json", d->json, "One JSON object");
  return [a, d, diff]() -> int {
    if (diff->parsed()) return run_diff(d->old_pack, d->new_pack, d->json);
    if (a->image.empty() || a->output.empty()) {
      print_error("pack needs IMAGE and -o NAME.pack (see 'imgstream pack --help')");
      return kExitUsage;
    }
    const uint64_t cs = parse_size(a->chunk_size).value();
    if (cs < pack::kChunkBytesMin || cs > pack::kChunkBytesMax || (cs & (cs - 1))) {
      print_error("--chunk-size " + a->chunk_size + ": must be a power of two from 4K to 16M");
      return kExitUsage;
    }
    return run_pack(*a);
  };
}

Runner add_unpack(CLI::App& app) {
  struct Args {
    std::string pack, output;
    bool quiet = false;
    bool force = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "unpack", "Write the raw image a pack holds (every chunk checked against its hash).");
  cmd->add_option("PACK", a->pack, "NAME.pack or an http(s) URL of one")->required();
  cmd->add_option("-o,--output", a->output, "Raw image to write")->required();
  cmd->add_flag("-q,--quiet", a->quiet, "No progress line or summary");
  cmd->add_flag("--force", a->force,
                "Replace an existing non-empty output file (never the pack or its base chain)");
  return [a] { return run_unpack(a->pack, a->output, a->quiet, a->force); };
}

Runner add_verify(CLI::App& app) {
  struct Args {
    std::string pack;
    bool quiet = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "verify",
      "Check a pack: its header, its index and identity, its base chain, and every chunk\n"
      "it stores against its hash; names the bad ones. Exit status 1 when any is bad.");
  cmd->add_option("PACK", a->pack, "NAME.pack or an http(s) URL of one")->required();
  cmd->add_flag("-q,--quiet", a->quiet, "Only errors");
  return [a] { return run_verify(a->pack, a->quiet); };
}

Runner add_info(CLI::App& app) {
  struct Args {
    std::string pack;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "info", "Show a pack: sizes, compression, boot set, base chain, identity.");
  cmd->add_option("PACK", a->pack, "NAME.pack or an http(s) URL of one")->required();
  cmd->add_flag("--json", a->json, "One JSON object");
  return [a] { return run_info(a->pack, a->json); };
}

}  // namespace imgstream::cli
