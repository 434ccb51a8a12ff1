// Internal to runtime/config*.cpp: the key schema shared by the loader (config.cpp) and the
// range rules (config_validate.cpp). Not installed, not for other folders.
//
// Thread-safety: schema() is an immutable table built on first use (thread-safe static).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "runtime/config.h"

namespace ddp::config_internal {

// Where a key's value lives inside a Config. The alternative also fixes the YAML type the key
// accepts: integer, number, boolean, string, list of integers, map of strings.
using FieldRef = std::variant<int64_t*, double*, bool*, std::string*, std::vector<int64_t>*,
                              std::map<std::string, std::string>*>;

struct Field {
  const char* section;       // "trainer"
  const char* name;          // "max_steps"
  FieldRef (*get)(Config&);  // the member it sets
  std::string key() const { return std::string(section) + "." + name; }
};

// Every accepted key, in the order of kDefaultConfigYaml (which is also the order of
// Config::resolved_yaml). Sections appear as contiguous runs.
const std::vector<Field>& schema();

// The range and cross-key rules, run once on the fully merged config. Throws
// ddp::Error(kInvalidArgument) naming the key, the given value and the allowed range/choices.
void validate(const Config& config);

}  // namespace ddp::config_internal
