#include "cli/cli.h"

#include <cstdio>

#include "base/units.h"

namespace imgstream::cli {

void print_error(const std::string& message) {
  std::fprintf(stderr, "imgstream: error: %s\n", message.c_str());
}

CLI::Validator size_validator() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        auto r = parse_size(s);
        return r ? std::string() : r.error().message;
      },
      "SIZE");
}

}  // namespace imgstream::cli
