// The command-line front end: one file per command, each adding a CLI11 subcommand and
// running it. Exit status: 0 success, 1 runtime failure, 2 usage error (DESIGN.md).
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>

#include "base/result.h"

namespace imgstream::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// A registered command: run() is called when the user chose it; returns the exit status.
using Runner = std::function<int()>;

Runner add_serve(CLI::App& app);
Runner add_stream(CLI::App& app);
Runner add_status(CLI::App& app);
Runner add_ctl(CLI::App& app);
Runner add_profile(CLI::App& app);
Runner add_pack(CLI::App& app);
Runner add_unpack(CLI::App& app);
Runner add_verify(CLI::App& app);
Runner add_info(CLI::App& app);
Runner add_track(CLI::App& app);
Runner add_migrate(CLI::App& app);
Runner add_patch(CLI::App& app);
Runner add_ls(CLI::App& app);
Runner add_cat(CLI::App& app);

// Prints "imgstream: error: MESSAGE" on stderr.
void print_error(const std::string& message);

// CLI11 validator for sizes with suffixes ("64K", "1M").
CLI::Validator size_validator();

}  // namespace imgstream::cli
