#include "checkpoint/checkpoint_policy.h"

#include <algorithm>
#include <cmath>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "collectives/error.h"

namespace ddp::ckpt {
namespace {

// Fields of a template: {name} or {name:spec}.
struct Field {
  std::string name;
  std::string spec;
};

std::vector<std::pair<std::string, std::optional<Field>>> parse_template(const std::string& t) {
  std::vector<std::pair<std::string, std::optional<Field>>> parts;
  size_t pos = 0;
  while (pos < t.size()) {
    const size_t open = t.find('{', pos);
    if (open == std::string::npos) {
      parts.push_back({t.substr(pos), std::nullopt});
      break;
    }
    const size_t close = t.find('}', open);
    if (close == std::string::npos) {
      throw Error(ErrorKind::kInvalidArgument,
                  fmt::format("checkpoint.filename '{}': unmatched '{{'", t));
    }
    if (open > pos) parts.push_back({t.substr(pos, open - pos), std::nullopt});
    const std::string body = t.substr(open + 1, close - open - 1);
    const size_t colon = body.find(':');
    Field f{body.substr(0, colon), colon == std::string::npos ? "" : body.substr(colon + 1)};
    if (f.name.empty()) {
      throw Error(ErrorKind::kInvalidArgument,
                  fmt::format("checkpoint.filename '{}': empty field name", t));
    }
    parts.push_back({"", f});
    pos = close + 1;
  }
  return parts;
}

bool better(double a, double b, const std::string& mode) { return mode == "max" ? a > b : a < b; }

}  // namespace

CheckpointPolicy::CheckpointPolicy(CheckpointPolicyOptions options) : options_(std::move(options)) {
  validate(options_);
}

void CheckpointPolicy::validate(const CheckpointPolicyOptions& o) {
  if (o.mode != "min" && o.mode != "max") {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("checkpoint.mode must be 'min' or 'max', got '{}'", o.mode));
  }
  if (o.save_top_k < -1) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("checkpoint.save_top_k must be >= -1, got {}", o.save_top_k));
  }
  if (o.save_top_k > 1 && o.monitor.empty()) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("checkpoint.save_top_k={} needs checkpoint.monitor (which metric "
                            "ranks the checkpoints?), e.g. checkpoint.monitor=val_loss",
                            o.save_top_k));
  }
  if (o.every_n_train_steps < 0 || o.every_n_epochs < 0 || o.train_time_interval_s < 0 ||
      o.keep_last_n < -1) {
    throw Error(ErrorKind::kInvalidArgument,
                "checkpoint.every_n_train_steps, every_n_epochs and train_time_interval must "
                "be >= 0, keep_last_n >= -1");
  }
  if (o.filename.empty() || o.filename.find('/') != std::string::npos) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("checkpoint.filename '{}' must be a non-empty name without '/'",
                            o.filename));
  }
  parse_template(o.filename);
}

bool CheckpointPolicy::due_after_step(int64_t step, double since_last_s) const {
  if (!options_.enabled) return false;
  if (options_.every_n_train_steps > 0 && step % options_.every_n_train_steps == 0) return true;
  return options_.train_time_interval_s > 0 && since_last_s >= options_.train_time_interval_s;
}

bool CheckpointPolicy::due_after_epoch(int64_t epochs_completed) const {
  return options_.enabled && options_.every_n_epochs > 0 &&
         epochs_completed % options_.every_n_epochs == 0;
}

std::string CheckpointPolicy::filename(int64_t epoch, int64_t step,
                                       const std::map<std::string, double>& metrics) const {
  std::string out;
  for (const auto& [text, field] : parse_template(options_.filename)) {
    if (!field) {
      out += text;
      continue;
    }
    const std::string spec = field->spec.empty() ? "" : ":" + field->spec;
    if (field->name == "epoch") {
      out += fmt::format(fmt::runtime("{" + spec + "}"), epoch);
    } else if (field->name == "step") {
      out += fmt::format(fmt::runtime("{" + spec + "}"), step);
    } else if (auto it = metrics.find(field->name); it != metrics.end()) {
      out += fmt::format(fmt::runtime("{" + spec + "}"), it->second);
    } else {
      out += "na";  // metric not computed yet at this step
    }
  }
  return out + ".h5";
}

std::vector<std::string> CheckpointPolicy::on_committed(
    const std::string& file, int64_t step, const std::map<std::string, double>& metrics) {
  double score = static_cast<double>(step);
  std::string mode = "max";
  if (!options_.monitor.empty()) {
    auto it = metrics.find(options_.monitor);
    score = it != metrics.end() ? it->second : NAN;
    mode = options_.mode;
  }
  all_saved_.erase(std::remove(all_saved_.begin(), all_saved_.end(), file), all_saved_.end());
  all_saved_.push_back(file);
  best_k_.erase(std::remove_if(best_k_.begin(), best_k_.end(),
                               [&](const BestEntry& e) { return e.file == file; }),
                best_k_.end());
  if (!std::isnan(score)) {
    best_k_.push_back({file, score, step});
    std::stable_sort(best_k_.begin(), best_k_.end(), [&](const BestEntry& a, const BestEntry& b) {
      return better(a.score, b.score, mode);
    });
  }
  if (options_.save_top_k >= 0 && static_cast<int64_t>(best_k_.size()) > options_.save_top_k) {
    best_k_.resize(static_cast<size_t>(options_.save_top_k));
  }
  recent_.erase(std::remove_if(recent_.begin(), recent_.end(),
                               [&](const BestEntry& e) { return e.file == file; }),
                recent_.end());
  recent_.push_back({file, score, step});
  if (options_.keep_last_n >= 0 && static_cast<int64_t>(recent_.size()) > options_.keep_last_n) {
    recent_.erase(recent_.begin(),
                  recent_.end() - static_cast<std::ptrdiff_t>(options_.keep_last_n));
  }
  if (options_.save_top_k == -1) return {};

  std::set<std::string> keep{file};  // never drop the newest (latest.json points at it)
  for (const auto& e : best_k_) keep.insert(e.file);
  for (const auto& e : recent_) keep.insert(e.file);
  std::vector<std::string> drop;
  std::vector<std::string> kept;
  for (const auto& f : all_saved_) (keep.count(f) ? kept : drop).push_back(f);
  all_saved_ = kept;
  return drop;
}

std::optional<BestEntry> CheckpointPolicy::best() const {
  if (best_k_.empty()) return std::nullopt;
  return best_k_.front();
}

std::string CheckpointPolicy::state_json() const {
  nlohmann::json j;
  j["monitor"] = options_.monitor;
  j["mode"] = options_.mode;
  auto list = [](const std::vector<BestEntry>& v) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& e : v) a.push_back({{"file", e.file}, {"score", e.score}, {"step", e.step}});
    return a;
  };
  j["best_k"] = list(best_k_);
  j["recent"] = list(recent_);
  j["saved"] = all_saved_;
  return j.dump();
}

void CheckpointPolicy::load_state_json(const std::string& text) {
  if (text.empty()) return;
  const auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    throw Error(ErrorKind::kCorruption, "checkpoint callback state is not valid JSON");
  }
  auto read = [](const nlohmann::json& a) {
    std::vector<BestEntry> v;
    if (!a.is_array()) return v;
    for (const auto& e : a) {
      v.push_back({e.value("file", ""), e.value("score", 0.0), e.value("step", int64_t{0})});
    }
    return v;
  };
  best_k_ = read(j.value("best_k", nlohmann::json::array()));
  recent_ = read(j.value("recent", nlohmann::json::array()));
  all_saved_ = j.value("saved", std::vector<std::string>{});
}

}  // namespace ddp::ckpt
