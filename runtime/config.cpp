// Loading the run configuration: built-in defaults, then the user's YAML, then "a.b=value"
// overrides, each applied onto a typed Config as it is read (so type errors point at the file
// line or the override that caused them), then the range rules of config_validate.cpp once on
// the merged result.
#include "runtime/config.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <string_view>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in format.h before fmt 11)
#include <yaml-cpp/yaml.h>

#include "collectives/error.h"
#include "runtime/config_internal.h"

namespace ddp {

// kDefaultConfigYaml lives beside the key table, in config_validate.cpp.

namespace {

using config_internal::Field;
using config_internal::FieldRef;
using config_internal::schema;

// Where a layer of values came from; used to point messages at the culprit.
struct Source {
  std::string label;  // file path, "override 'a.b=1'", "built-in defaults"
  bool has_lines;     // nodes carry positions within `label`
};

std::string where(const Source& src, const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  if (!src.has_lines || mark.is_null()) return fmt::format(" ({})", src.label);
  return fmt::format(" ({}:{}:{})", src.label, mark.line + 1, mark.column + 1);
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Levenshtein distance: insertions, deletions and substitutions each cost 1.
size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];  // row[i-1][j-1]
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      const size_t substitute = diagonal + (a[i - 1] == b[j - 1] ? 0 : 1);
      row[j] = std::min({above + 1, row[j - 1] + 1, substitute});
      diagonal = above;
    }
  }
  return row[b.size()];
}

bool is_section(std::string_view name) {
  return std::any_of(schema().begin(), schema().end(),
                     [&](const Field& f) { return name == f.section; });
}

// The keys one level below `parent`: section names for the top level, else the section's keys.
std::vector<std::string> children_of(std::string_view parent) {
  std::vector<std::string> out;
  for (const Field& f : schema()) {
    std::string child = parent.empty() ? f.section : (parent == f.section ? f.name : "");
    if (!child.empty() && std::find(out.begin(), out.end(), child) == out.end())
      out.push_back(child);
  }
  return out;
}

// The closest valid key to the unknown `parent.leaf`, or "" if none is close: a sibling within
// edit distance 3 (case ignored), or the same key in another section ("trainer.lr" ->
// "optimizer.lr"), which beats any sibling that needs an edit.
std::string closest_key(const std::string& parent, const std::string& leaf) {
  std::string best;
  double best_score = 4;
  const std::string wanted = lower(leaf);
  for (const std::string& sibling : children_of(parent)) {
    const double d = static_cast<double>(edit_distance(wanted, lower(sibling)));
    if (d < best_score) {
      best_score = d;
      best = parent.empty() ? sibling : parent + "." + sibling;
    }
  }
  for (const Field& f : schema()) {
    if (lower(f.name) != wanted || parent == f.section) continue;
    // Among sections, prefer the one spelled most like the given parent ("trainr").
    const double d = 0.5 + 0.01 * std::min<size_t>(edit_distance(parent, f.section), 49);
    if (d < best_score) {
      best_score = d;
      best = f.key();
    }
  }
  return best;
}

const Field* find_field(const std::string& key) {
  for (const Field& f : schema()) {
    if (key == f.key()) return &f;
  }
  return nullptr;
}

// The free-form map that `key` is an entry of ("model.options.foo" -> model.options), or null.
const Field* find_map_field(const std::string& key) {
  Config probe;
  for (const Field& f : schema()) {
    const std::string prefix = f.key() + ".";
    const bool is_map = std::holds_alternative<std::map<std::string, std::string>*>(f.get(probe));
    if (is_map && key.size() > prefix.size() && key.compare(0, prefix.size(), prefix) == 0)
      return &f;
  }
  return nullptr;
}

[[noreturn]] void fail_unknown_key(const std::string& key, const YAML::Node& node,
                                   const Source& src) {
  const size_t dot = key.rfind('.');
  const std::string parent = dot == std::string::npos ? "" : key.substr(0, dot);
  const std::string leaf = dot == std::string::npos ? key : key.substr(dot + 1);
  std::string message = fmt::format("unknown config key '{}'{}", key, where(src, node));
  const std::string suggestion = closest_key(parent, leaf);
  if (!suggestion.empty()) {
    message += fmt::format("; did you mean '{}'?", suggestion);
  } else if (find_field(parent)) {
    message += fmt::format("; '{}' takes a value, not keys", parent);
  } else if (parent.empty() || !is_section(parent)) {
    message += fmt::format("; sections are: {}", fmt::join(children_of(""), ", "));
  } else {
    message += fmt::format("; keys of '{}' are: {}", parent, fmt::join(children_of(parent), ", "));
  }
  throw Error(ErrorKind::kInvalidArgument, message);
}

// ---- Scalars. Parsed from the YAML text ourselves: yaml-cpp's as<int64_t>() and as<bool>()
// do not give the strict, explainable answers wanted here.

std::string describe(const YAML::Node& node) {
  if (node.IsMap()) return "a map";
  if (node.IsSequence()) return "a list";
  if (node.IsScalar()) return fmt::format("'{}'", node.Scalar());
  return "nothing (null)";
}

[[noreturn]] void fail_type(const std::string& key, std::string_view expected,
                            const YAML::Node& node, const Source& src) {
  throw Error(ErrorKind::kInvalidArgument,
              fmt::format("config key '{}': expected {}, got {}{}", key, expected, describe(node),
                          where(src, node)));
}

std::string_view strip_plus(std::string_view s) {
  return (s.size() > 1 && s[0] == '+') ? s.substr(1) : s;
}

std::optional<int64_t> parse_int(std::string_view text) {
  text = strip_plus(text);
  int64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

std::optional<double> parse_double(std::string_view text) {
  text = strip_plus(text);
  double value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() ||
      !std::isfinite(value)) {
    return std::nullopt;
  }
  return value;
}

std::optional<bool> parse_bool(std::string_view text) {
  const std::string s = lower(text);
  if (s == "true" || s == "yes" || s == "on") return true;
  if (s == "false" || s == "no" || s == "off") return false;
  return std::nullopt;
}

int64_t to_int(const YAML::Node& node, const std::string& key, const Source& src) {
  const auto v = node.IsScalar() ? parse_int(node.Scalar()) : std::nullopt;
  if (!v) fail_type(key, "an integer", node, src);
  return *v;
}

// Strings accept any scalar (model.name: 123 is "123") and null (an empty value, "").
std::string to_string(const YAML::Node& node, const std::string& key, const Source& src) {
  if (node.IsNull()) return "";
  if (!node.IsScalar()) fail_type(key, "a string", node, src);
  return node.Scalar();
}

template <class... F>
struct Overloaded : F... {
  using F::operator()...;
};
template <class... F>
Overloaded(F...) -> Overloaded<F...>;

void assign(const FieldRef& ref, const YAML::Node& node, const std::string& key,
            const Source& src) {
  std::visit(
      Overloaded{
          [&](int64_t* out) { *out = to_int(node, key, src); },
          [&](double* out) {
            const auto v = node.IsScalar() ? parse_double(node.Scalar()) : std::nullopt;
            if (!v) fail_type(key, "a number", node, src);
            *out = *v;
          },
          [&](bool* out) {
            const auto v = node.IsScalar() ? parse_bool(node.Scalar()) : std::nullopt;
            if (!v) fail_type(key, "a boolean (true or false)", node, src);
            *out = *v;
          },
          [&](std::string* out) { *out = to_string(node, key, src); },
          [&](std::vector<int64_t>* out) {
            if (!node.IsSequence()) fail_type(key, "a list of integers", node, src);
            std::vector<int64_t> values;
            for (size_t i = 0; i < node.size(); ++i) {
              values.push_back(to_int(node[i], fmt::format("{}[{}]", key, i), src));
            }
            *out = std::move(values);  // lists replace, they do not merge
          },
          [&](std::map<std::string, std::string>* out) {
            if (node.IsNull()) return;  // "options:" with nothing under it
            if (!node.IsMap()) fail_type(key, "a map of strings", node, src);
            for (const auto& kv : node) {  // maps merge: later sources add or replace entries
              const std::string name = to_string(kv.first, key, src);
              (*out)[name] = to_string(kv.second, key + "." + name, src);
            }
          },
      },
      ref);
}

// ---- Applying a (sub)tree of values at a dotted key: "" is the top level.

void apply(const std::string& key, const YAML::Node& node, Config& config, const Source& src);

// A section (or the top level): a map whose entries are applied one by one.
void apply_children(const std::string& key, const YAML::Node& node, Config& config,
                    const Source& src) {
  if (node.IsNull()) return;  // "trainer:" with every key commented out
  if (!node.IsMap()) fail_type(key, "a map of keys", node, src);
  std::set<std::string> seen;
  for (const auto& kv : node) {
    if (!kv.first.IsScalar() || kv.first.Scalar().empty()) {
      fail_type(key.empty() ? "<top level>" : key, "plain key names", kv.first, src);
    }
    const std::string name = kv.first.Scalar();
    const std::string child = key.empty() ? name : key + "." + name;
    if (!seen.insert(name).second) {
      throw Error(ErrorKind::kInvalidArgument,
                  fmt::format("config key '{}' is set twice{}", child, where(src, kv.first)));
    }
    // Checked here rather than in apply() so that the message points at the key, not its value.
    if (!is_section(child) && !find_field(child) && !find_map_field(child)) {
      fail_unknown_key(child, kv.first, src);
    }
    apply(child, kv.second, config, src);
  }
}

void apply(const std::string& key, const YAML::Node& node, Config& config, const Source& src) {
  if (key.empty() || is_section(key)) return apply_children(key, node, config, src);
  if (const Field* field = find_field(key)) return assign(field->get(config), node, key, src);
  if (const Field* field = find_map_field(key)) {  // "model.options.foo": one map entry
    auto* map = std::get<std::map<std::string, std::string>*>(field->get(config));
    (*map)[key.substr(field->key().size() + 1)] = to_string(node, key, src);
    return;
  }
  fail_unknown_key(key, node, src);
}

// `what` names the text in messages: "config 'x.yaml'", "config override 'a=[1'".
YAML::Node parse_yaml(const std::string& text, const std::string& what) {
  try {
    return YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("{}: YAML syntax error at line {}, column {}: {}", what,
                            e.mark.line + 1, e.mark.column + 1, e.msg));
  }
}

// A whole document (the defaults or the user's file): must be a non-empty map of sections.
void apply_document(const std::string& text, const std::string& label, Config& config) {
  const YAML::Node root = parse_yaml(text, fmt::format("config '{}'", label));
  if (root.IsNull()) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("config '{}' is empty: expected a map of sections ({})", label,
                            fmt::join(children_of(""), ", ")));
  }
  if (!root.IsMap()) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("config '{}': the top level must be a map of sections ({}), got {}",
                            label, fmt::join(children_of(""), ", "), describe(root)));
  }
  apply_children("", root, config, Source{label, true});
}

std::string trim(std::string_view s) {
  const auto first = s.find_first_not_of(" \t");
  if (first == std::string_view::npos) return "";
  return std::string(s.substr(first, s.find_last_not_of(" \t") - first + 1));
}

// "trainer.max_steps=500": the value is YAML ("[1,2]" a list, "1e-3" a number, "" null).
void apply_override(const std::string& text, Config& config) {
  const size_t eq = text.find('=');
  const std::string key = trim(std::string_view(text).substr(0, eq));
  if (eq == std::string::npos || key.empty()) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("config override '{}': expected dotted.key=value", text));
  }
  if (key.front() == '.' || key.back() == '.' || key.find("..") != std::string::npos) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("config override '{}': empty part in key '{}'", text, key));
  }
  const std::string label = fmt::format("override '{}'", text);
  apply(key, parse_yaml(text.substr(eq + 1), "config " + label), config, Source{label, false});
}

// ---- resolved_yaml: typed values back to YAML, in schema order.

// Shortest text that reads back as the same double, always recognisable as a float.
std::string format_double(double v) {
  std::string s = fmt::format("{}", v);
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

// Strings that a YAML reader would take for something else are written quoted.
void emit_string(YAML::Emitter& out, const std::string& s) {
  const std::string l = lower(s);
  // Control characters too: yaml-cpp writes a trailing '\r' raw into a plain scalar, which a
  // reader takes for a line break (the value would read back without it).
  const bool control = std::any_of(s.begin(), s.end(), [](unsigned char c) {
    return c < 0x20 || c == 0x7f;
  });
  const bool ambiguous = s.empty() || l == "null" || l == "~" || parse_bool(s) || parse_double(s) ||
                         parse_int(s) || s != trim(s) || control;
  if (ambiguous) out << YAML::DoubleQuoted;
  out << s;
}

std::string emit_yaml(Config config) {  // by value: Field::get wants a mutable Config
  YAML::Emitter out;
  out << YAML::BeginMap;
  std::string_view section;
  for (const Field& f : schema()) {
    if (section != f.section) {
      if (!section.empty()) out << YAML::EndMap;
      section = f.section;
      out << YAML::Key << f.section << YAML::Value << YAML::BeginMap;
    }
    out << YAML::Key << f.name << YAML::Value;
    std::visit(Overloaded{
                   [&](int64_t* v) { out << *v; },
                   [&](double* v) { out << format_double(*v); },
                   [&](bool* v) { out << (*v ? "true" : "false"); },
                   [&](std::string* v) { emit_string(out, *v); },
                   [&](std::vector<int64_t>* v) {
                     out << YAML::Flow << YAML::BeginSeq;
                     for (int64_t x : *v) out << x;
                     out << YAML::EndSeq;
                   },
                   [&](std::map<std::string, std::string>* v) {
                     out << YAML::Flow << YAML::BeginMap;
                     for (const auto& [k, x] : *v) {
                       out << YAML::Key;
                       emit_string(out, k);
                       out << YAML::Value;
                       emit_string(out, x);
                     }
                     out << YAML::EndMap;
                   },
               },
               f.get(config));
  }
  if (!section.empty()) out << YAML::EndMap;
  out << YAML::EndMap;
  if (!out.good()) {
    throw Error(ErrorKind::kInternal,
                fmt::format("emitting the resolved config: {}", out.GetLastError()));
  }
  return std::string(out.c_str()) + "\n";
}

// `text` is null for "defaults only".
Config load(const std::string* text, const std::string& label,
            const std::vector<std::string>& overrides) {
  Config config;
  apply_document(kDefaultConfigYaml, "built-in defaults", config);
  if (text) apply_document(*text, label, config);
  for (const std::string& o : overrides) apply_override(o, config);
  config_internal::validate(config);
  config.resolved_yaml = emit_yaml(config);
  return config;
}

}  // namespace

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  if (path.empty()) return load(nullptr, "", overrides);
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    throw Error(ErrorKind::kNotFound, fmt::format("config file '{}' not found", path));
  }
  if (fs::is_directory(path, ec)) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("config file '{}' is a directory, expected a YAML file", path));
  }
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  if (in.is_open()) text << in.rdbuf();  // an empty file leaves `text` failed, not `in`
  if (!in.is_open() || in.bad()) {
    throw Error(ErrorKind::kIOError, fmt::format("config file '{}' could not be read", path));
  }
  const std::string contents = text.str();
  return load(&contents, path, overrides);
}

Config load_config_from_string(const std::string& yaml_text,
                               const std::vector<std::string>& overrides) {
  return load(&yaml_text, "<string>", overrides);
}

}  // namespace ddp
