// libFuzzer target: the config loader, ddp::load_config_from_string(text, overrides).
//
// Input: the YAML document, then optionally NUL-separated "dotted.key=value" overrides
// ("trainer:\n  max_steps: 5\n\0model.hidden_sizes=[4]"). At most kMaxOverrides are used.
//
// Properties checked (a violation aborts, so libFuzzer saves the input):
//  1. The only exception that may leave the loader is ddp::Error, and of a user-input kind
//     (kInvalidArgument or kNotFound); kInternal means "a bug in ddp-runtime" (error.h).
//     Anything else (YAML::Exception, std::out_of_range, std::bad_alloc, ...) is a bug.
//  2. No crash, no AddressSanitizer / UndefinedBehaviorSanitizer report.
//  3. Round trip: an accepted config's resolved_yaml loads again, to the same resolved_yaml
//     (what checkpoints store and `resume` reads back must mean the same run).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <typeinfo>
#include <vector>

#include "collectives/error.h"
#include "runtime/config.h"

namespace {

constexpr size_t kMaxOverrides = 8;

[[noreturn]] void fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_config: PROPERTY VIOLATED: %s\n%s\n", what, detail.c_str());
  std::fflush(stderr);
  std::abort();
}

// Control bytes as \xNN, so that a stray '\r' is visible in the report.
std::string escaped(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char buf[5];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

// "line N: \"<a's line>\" reads back as \"<b's line>\"" for the first line that differs.
std::string first_difference(const std::string& a, const std::string& b) {
  size_t line = 1, start = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()) && a[i] == b[i]; ++i) {
    if (a[i] == '\n') {
      ++line;
      start = i + 1;
    }
  }
  auto line_at = [start](const std::string& s) {
    return escaped(s.substr(start, s.find('\n', start) - start));
  };
  return "resolved_yaml line " + std::to_string(line) + ": \"" + line_at(a) +
         "\" reads back as \"" + line_at(b) + "\"";
}

// Loads; returns false when the loader rejected the input with an allowed ddp::Error.
bool load(const std::string& text, const std::vector<std::string>& overrides,
          ddp::Config* out, const char* stage) {
  try {
    *out = ddp::load_config_from_string(text, overrides);
    return true;
  } catch (const ddp::Error& e) {
    if (e.kind() == ddp::ErrorKind::kInvalidArgument || e.kind() == ddp::ErrorKind::kNotFound) {
      return false;
    }
    fail(stage, std::string("ddp::Error of kind ") + ddp::error_kind_name(e.kind()) + ": " +
                    e.what());
  } catch (const std::exception& e) {
    fail(stage, std::string("non-ddp exception ") + typeid(e).name() + ": " + e.what());
  } catch (...) {
    fail(stage, "unknown exception type");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  size_t end = input.find('\0');
  const std::string text = input.substr(0, end);
  std::vector<std::string> overrides;
  while (end != std::string::npos && overrides.size() < kMaxOverrides) {
    const size_t start = end + 1;
    end = input.find('\0', start);
    overrides.push_back(input.substr(start, end == std::string::npos ? end : end - start));
  }

  ddp::Config first;
  if (!load(text, overrides, &first, "load_config_from_string(input)")) return 0;

  ddp::Config again;
  if (!load(first.resolved_yaml, {}, &again, "load_config_from_string(resolved_yaml)")) {
    // Rejected: find out why, for the report.
    try {
      ddp::load_config_from_string(first.resolved_yaml, {});
    } catch (const std::exception& e) {
      fail("resolved_yaml of an accepted config is rejected",
           std::string(e.what()) + "\n--- resolved_yaml ---\n" + first.resolved_yaml);
    }
  }
  if (again.resolved_yaml != first.resolved_yaml) {
    fail("resolved_yaml does not round-trip", first_difference(first.resolved_yaml,
                                                               again.resolved_yaml));
  }
  return 0;
}
