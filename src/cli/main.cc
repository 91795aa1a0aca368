// imgstream: stream whole disk images to machines. See `imgstream --help`.
#include <csignal>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "base/log.h"
#include "cli/cli.h"
#include "cli/stop_signals.h"

namespace {

int run(int argc, char** argv) {
  using namespace imgstream;
  std::signal(SIGPIPE, SIG_IGN);
  // First, before any thread exists: every thread inherits the blocked stop signals.
  cli::StopSignals stop_signals;

  CLI::App app{
      "imgstream: moves whole disk images to machines by streaming. A machine boots from a\n"
      "remote image at once; every block it reads is fetched and kept on its own disk,\n"
      "the rest is copied in the background."};
  app.set_version_flag("--version", std::string("imgstream ") + IMGSTREAM_VERSION);
  app.require_subcommand(1);
  int verbose = 0;
  bool quiet = false;
  app.add_flag("-v,--verbose", verbose, "More messages on stderr (-vv for debug)");
  app.add_flag("-q,--quiet", quiet, "Only errors on stderr");

  std::vector<std::pair<CLI::App*, cli::Runner>> commands;
  commands.emplace_back(nullptr, cli::add_serve(app));
  commands.back().first = app.get_subcommand("serve");
  commands.emplace_back(nullptr, cli::add_stream(app));
  commands.back().first = app.get_subcommand("stream");
  commands.emplace_back(nullptr, cli::add_status(app));
  commands.back().first = app.get_subcommand("status");
  commands.emplace_back(nullptr, cli::add_ctl(app));
  commands.back().first = app.get_subcommand("ctl");
  commands.emplace_back(nullptr, cli::add_profile(app));
  commands.back().first = app.get_subcommand("profile");
  for (auto [name, add] :
       {std::pair{"pack", &cli::add_pack}, std::pair{"unpack", &cli::add_unpack},
        std::pair{"verify", &cli::add_verify}, std::pair{"info", &cli::add_info},
        std::pair{"track", &cli::add_track}, std::pair{"migrate", &cli::add_migrate},
        std::pair{"patch", &cli::add_patch}, std::pair{"ls", &cli::add_ls},
        std::pair{"cat", &cli::add_cat}}) {
    commands.emplace_back(nullptr, add(app));
    commands.back().first = app.get_subcommand(name);
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    cli::print_error(std::string(e.what()) + " (see 'imgstream --help')");
    return cli::kExitUsage;
  }
  set_log_level(quiet ? LogLevel::Error
                      : verbose >= 2 ? LogLevel::Debug
                      : verbose == 1 ? LogLevel::Info
                                     : LogLevel::Warn);
  for (auto& [sub, run] : commands)
    if (sub->parsed()) return run();
  return cli::kExitUsage;
}

}  // namespace

int main(int argc, char** argv) {
  // Our code throws nothing (errors are values); what could is CLI11 and the standard
  // library (std::bad_alloc): say so in one line, as any error, instead of aborting.
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    imgstream::cli::print_error(std::string("unexpected exception: ") + e.what());
  } catch (...) {
    imgstream::cli::print_error("unexpected exception");
  }
  return imgstream::cli::kExitFailure;
}
