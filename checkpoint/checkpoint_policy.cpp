#include "checkpoint/checkpoint_policy.h"

#include <algorithm>
#include <cmath>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "collectives/error.h"

namespace ddp::ckpt {
namespace {

using nlohmann::json;

constexpr const char* kLastName = "last";
// The fields a template may name: what ModelCheckpoint's monitor candidates hold here.
constexpr std::initializer_list<const char*> kTemplateFields = {"epoch", "step", "train_loss",
                                                                "val_loss"};

// A template's pieces: literal text, or a field {name} / {name:spec}.
struct Piece {
  std::string text;
  std::string field;  // empty: literal
  std::string spec;
};

std::vector<Piece> parse_template(const std::string& t) {
  std::vector<Piece> parts;
  size_t pos = 0;
  while (pos < t.size()) {
    const size_t open = t.find('{', pos);
    if (open == std::string::npos) {
      parts.push_back({t.substr(pos), "", ""});
      break;
    }
    const size_t close = t.find('}', open);
    if (close == std::string::npos) {
      throw Error(ErrorKind::kInvalidArgument,
                  fmt::format("config key 'checkpoint.filename': unmatched '{{' in '{}'", t));
    }
    if (open > pos) parts.push_back({t.substr(pos, open - pos), "", ""});
    const std::string body = t.substr(open + 1, close - open - 1);
    const size_t colon = body.find(':');
    Piece f{"", body.substr(0, colon), colon == std::string::npos ? "" : body.substr(colon + 1)};
    if (f.field.empty()) {
      throw Error(ErrorKind::kInvalidArgument,
                  fmt::format("config key 'checkpoint.filename': empty field name in '{}'", t));
    }
    parts.push_back(f);
    pos = close + 1;
  }
  return parts;
}

// Python's format(value, spec) for what Lightning formats: ints (epoch, step, a missing
// metric's 0) and floats. Python lets a float spec format an int (format(3, ".2f") is "3.00").
std::string format_int(int64_t v, const std::string& spec) {
  try {
    return fmt::format(fmt::runtime("{:" + spec + "}"), v);
  } catch (const fmt::format_error&) {
    return fmt::format(fmt::runtime("{:" + spec + "}"), static_cast<double>(v));
  }
}

std::string format_float(double v, const std::string& spec) {
  if (spec.empty()) {  // Python's repr: shortest round trip, "100.0" not "100"
    std::string s = fmt::format("{}", v);
    if (std::isfinite(v) && s.find_first_of(".e") == std::string::npos) s += ".0";
    return s;
  }
  return fmt::format(fmt::runtime("{:" + spec + "}"), v);
}

bool better(double a, double b, const std::string& mode) { return mode == "max" ? a > b : a < b; }

// Best first; equal scores keep their insertion order.
std::vector<std::pair<std::string, double>> ranked_by(
    std::vector<std::pair<std::string, double>> models, const std::string& mode) {
  std::stable_sort(models.begin(), models.end(),
                   [&](const auto& a, const auto& b) { return better(a.second, b.second, mode); });
  return models;
}

json score_json(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return v;
}

json optional_json(const std::optional<double>& v) { return v ? score_json(*v) : json(nullptr); }

std::optional<double> score_from(const json& v) {
  if (v.is_number()) return v.get<double>();
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s == "inf") return INFINITY;
    if (s == "-inf") return -INFINITY;
    if (s == "nan") return NAN;
  }
  return std::nullopt;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// Python dict assignment: update in place, else append.
void dict_set(std::vector<std::pair<std::string, double>>& d, const std::string& k, double v) {
  for (auto& e : d) {
    if (e.first == k) {
      e.second = v;
      return;
    }
  }
  d.emplace_back(k, v);
}

// Python's min/max(dict, key=dict.get): the first entry with the extreme value.
const std::pair<std::string, double>& extreme(const std::vector<std::pair<std::string, double>>& d,
                                              bool largest) {
  size_t best = 0;
  for (size_t i = 1; i < d.size(); ++i) {
    if (largest ? d[i].second > d[best].second : d[i].second < d[best].second) best = i;
  }
  return d[best];
}

}  // namespace

CheckpointPolicy::CheckpointPolicy(CheckpointPolicyOptions options, LoopFacts facts)
    : options_(std::move(options)) {
  validate(options_);
  every_n_epochs_ = options_.every_n_epochs >= 0 ? options_.every_n_epochs
                    : (options_.every_n_train_steps == 0 && options_.train_time_interval_s == 0)
                        ? 1
                        : 0;
  if (options_.save_on_train_epoch_end == "true") {
    save_on_train_epoch_end_ = true;
  } else if (options_.save_on_train_epoch_end == "false") {
    save_on_train_epoch_end_ = false;
  } else if (facts.check_val_every_n_epoch != 1 && facts.check_val_every_n_epoch != 0) {
    save_on_train_epoch_end_ = false;  // validation is not every epoch: save after it
  } else if (!facts.validates || facts.check_val_every_n_epoch == 0) {
    save_on_train_epoch_end_ = true;  // no validation: the epoch's end
  } else {
    save_on_train_epoch_end_ = facts.val_check_interval == 1.0;
  }
}

void CheckpointPolicy::validate(const CheckpointPolicyOptions& o) {
  auto fail = [](const std::string& key, const std::string& msg) {
    throw Error(ErrorKind::kInvalidArgument, fmt::format("config key '{}': {}", key, msg));
  };
  if (o.mode != "min" && o.mode != "max") {
    fail("checkpoint.mode", fmt::format("must be one of min, max, got '{}'", o.mode));
  }
  if (o.save_top_k < -1) {
    fail("checkpoint.save_top_k", fmt::format("must be >= -1, got {}", o.save_top_k));
  }
  if (o.save_top_k > 1 && o.monitor.empty()) {
    fail("checkpoint.monitor",
         fmt::format("must be set when checkpoint.save_top_k={} (which metric ranks the "
                     "checkpoints?), e.g. checkpoint.monitor=val_loss",
                     o.save_top_k));
  }
  if (o.every_n_train_steps < 0 || o.every_n_epochs < -1 || o.train_time_interval_s < 0 ||
      o.keep_last_n < -1) {
    fail("checkpoint",
         "every_n_train_steps and train_time_interval must be >= 0, every_n_epochs >= 0 or -1 "
         "(automatic), keep_last_n >= -1");
  }
  const int triggers = (o.every_n_train_steps >= 1) + (o.every_n_epochs >= 1) +
                       (o.train_time_interval_s > 0);
  if (triggers > 1) {
    fail("checkpoint.every_n_train_steps",
         fmt::format("every_n_train_steps ({}), every_n_epochs ({}) and train_time_interval ({}) "
                     "are mutually exclusive, as in Lightning: set one (every_n_epochs is 1 "
                     "only while the other two are 0)",
                     o.every_n_train_steps, o.every_n_epochs, o.train_time_interval_s));
  }
  if (o.save_on_train_epoch_end != "auto" && o.save_on_train_epoch_end != "true" &&
      o.save_on_train_epoch_end != "false") {
    fail("checkpoint.save_on_train_epoch_end",
         fmt::format("must be one of auto, true, false, got '{}'", o.save_on_train_epoch_end));
  }
  if (o.filename.empty() || o.filename.find('/') != std::string::npos) {
    fail("checkpoint.filename",
         fmt::format("must be a non-empty name without '/', got '{}'", o.filename));
  }
  for (const Piece& p : parse_template(o.filename)) {
    if (p.field.empty()) continue;
    if (std::find_if(kTemplateFields.begin(), kTemplateFields.end(), [&](const char* f) {
          return p.field == f;
        }) == kTemplateFields.end()) {
      fail("checkpoint.filename",
           fmt::format("'{{{}}}' in '{}' names no logged value; the fields are {}", p.field,
                       o.filename, fmt::join(kTemplateFields, ", ")));
    }
    try {  // an int spec (epoch, step) or a float one: Python accepts either for an int
      (void)format_int(1, p.spec);
    } catch (const fmt::format_error& e) {
      fail("checkpoint.filename",
           fmt::format("format spec ':{}' of '{{{}}}' is not valid: {}", p.spec, p.field,
                       e.what()));
    }
  }
}

std::string CheckpointPolicy::filename(int64_t epoch, int64_t step,
                                       const std::map<std::string, double>& metrics,
                                       int version) const {
  std::string out;
  for (const Piece& p : parse_template(options_.filename)) {
    if (p.field.empty()) {
      out += p.text;
      continue;
    }
    if (options_.auto_insert_metric_name) out += p.field + "=";
    if (p.field == "epoch") {
      out += format_int(epoch, p.spec);
    } else if (p.field == "step") {
      out += format_int(step, p.spec);
    } else if (auto it = metrics.find(p.field); it != metrics.end()) {
      out += format_float(it->second, p.spec);
    } else {
      out += format_int(0, p.spec);  // not logged yet: Lightning formats a 0
    }
  }
  if (version > 0) out += fmt::format("-v{}", version);
  return out + ".h5";
}

bool CheckpointPolicy::skip(int64_t step) const {
  return !options_.enabled || step == state_.last_global_step_saved;
}

bool CheckpointPolicy::due_after_batch(int64_t step, bool time_due) const {
  if (!options_.enabled) return false;
  const bool step_due = options_.every_n_train_steps >= 1 &&
                        step % options_.every_n_train_steps == 0;
  return step_due || (time_due && options_.train_time_interval_s > 0);
}

bool CheckpointPolicy::due_after_validation(const SavePoint&) const {
  return options_.enabled && !save_on_train_epoch_end_;
}

bool CheckpointPolicy::due_after_epoch(const SavePoint&) const {
  return options_.enabled && save_on_train_epoch_end_;
}

SavePlan CheckpointPolicy::plan_after_batch(const SavePoint& p, bool time_due,
                                            const ExistsFn& exists) const {
  SavePlan plan;
  plan.after = state_;
  if (skip(p.step) || !due_after_batch(p.step, time_due)) return plan;
  save_topk(p, exists, plan);
  save_last(p, exists, plan);
  finish_plan(p, plan, {});
  return plan;
}

// on_validation_end and on_train_epoch_end do the same, at the point save_on_train_epoch_end
// picks: the top-k on every n-th epoch, `last` at every one.
SavePlan CheckpointPolicy::plan_epoch_trigger(const SavePoint& p, bool due,
                                              const ExistsFn& exists) const {
  SavePlan plan;
  plan.after = state_;
  if (skip(p.step) || !due) return plan;
  if (every_n_epochs_ >= 1 && (p.epoch + 1) % every_n_epochs_ == 0) save_topk(p, exists, plan);
  save_last(p, exists, plan);
  finish_plan(p, plan, {});
  return plan;
}

SavePlan CheckpointPolicy::plan_after_validation(const SavePoint& p,
                                                 const ExistsFn& exists) const {
  return plan_epoch_trigger(p, due_after_validation(p), exists);
}

SavePlan CheckpointPolicy::plan_after_epoch(const SavePoint& p, const ExistsFn& exists) const {
  return plan_epoch_trigger(p, due_after_epoch(p), exists);
}

SavePlan CheckpointPolicy::plan_forced(const SavePoint& p, const ExistsFn& exists) const {
  SavePlan plan;
  plan.after = state_;
  if (options_.save_last) {
    save_last(p, exists, plan);
    finish_plan(p, plan, {});
    return plan;
  }
  plan.file = versioned(p, options_.filename, "", exists, plan);
  finish_plan(p, plan, {});
  plan.after.unranked = plan.file;
  return plan;
}

// Lightning's _get_metric_interpolated_filepath_name: the template's name, or with "-vN" while
// that name exists and is not `allowed` (the file this save replaces).
std::string CheckpointPolicy::versioned(const SavePoint& p, const std::string& base_template,
                                        const std::string& allowed, const ExistsFn& exists,
                                        const SavePlan& plan) const {
  auto name_for = [&](int version) {
    if (base_template == kLastName) {
      return std::string(kLastName) + (version > 0 ? fmt::format("-v{}", version) : "") + ".h5";
    }
    return filename(p.epoch, p.step, p.metrics, version);
  };
  // Files that keep_last_n still holds are gone as far as Lightning's names are concerned.
  auto taken = [&](const std::string& name) {
    if (name == plan.file) return true;
    return !contains(state_.retiring, name) && exists && exists(name);
  };
  std::string name = name_for(0);
  if (!options_.enable_version_counter) return name;
  for (int v = 1; taken(name) && name != allowed; ++v) name = name_for(v);
  return name;
}

void CheckpointPolicy::save_topk(const SavePoint& p, const ExistsFn& exists,
                                 SavePlan& plan) const {
  if (options_.save_top_k == 0) return;
  PolicyState& s = plan.after;
  std::vector<std::string>& removed = plan.drop;  // candidates; finish_plan decides
  if (options_.monitor.empty()) {  // _save_none_monitor_checkpoint
    const std::string file = versioned(p, options_.filename, s.best_model_path, exists, plan);
    const std::string previous = s.best_model_path;
    s.best_model_path = file;
    plan.file = file;
    if (options_.save_top_k == 1 && !previous.empty() && previous != file) {
      removed.push_back(previous);
    }
    return;
  }
  const auto it = p.metrics.find(options_.monitor);
  if (it == p.metrics.end()) {
    std::vector<std::string> keys{"epoch", "step"};
    for (const auto& [k, v] : p.metrics) keys.push_back(k);
    plan.warnings.push_back(fmt::format(
        "checkpoint.monitor={} could not find the monitored key in the logged metrics: [{}] "
        "(no top-k checkpoint at step {})",
        options_.monitor, fmt::join(keys, ", "), p.step));
    return;
  }
  double current = it->second;
  const bool min_mode = options_.mode == "min";
  // check_monitor_top_k
  if (options_.save_top_k != -1 &&
      static_cast<int64_t>(s.best_k_models.size()) >= options_.save_top_k) {
    double kth = NAN;
    for (const auto& e : s.best_k_models) {
      if (e.first == s.kth_best_model_path) kth = e.second;
    }
    if (!better(current, kth, options_.mode)) return;  // NaN is never better
  }
  // _update_best_and_save
  const size_t k = options_.save_top_k == -1 ? s.best_k_models.size() + 1
                                             : static_cast<size_t>(options_.save_top_k);
  std::string del;
  if (s.best_k_models.size() == k && k > 0) {
    del = s.kth_best_model_path;
    s.best_k_models.erase(std::remove_if(s.best_k_models.begin(), s.best_k_models.end(),
                                         [&](const auto& e) { return e.first == del; }),
                          s.best_k_models.end());
  }
  if (std::isnan(current)) current = min_mode ? INFINITY : -INFINITY;
  const std::string file = versioned(p, options_.filename, del, exists, plan);
  s.current_score = current;
  dict_set(s.best_k_models, file, current);
  if (s.best_k_models.size() == k) {
    const auto& kth = extreme(s.best_k_models, /*largest=*/min_mode);
    s.kth_best_model_path = kth.first;
    s.kth_value = kth.second;
  }
  const auto& best = extreme(s.best_k_models, /*largest=*/!min_mode);
  s.best_model_path = best.first;
  s.best_model_score = best.second;
  plan.file = file;
  if (!del.empty() && del != file) removed.push_back(del);
}

void CheckpointPolicy::save_last(const SavePoint& p, const ExistsFn& exists,
                                 SavePlan& plan) const {
  if (!options_.save_last) return;
  PolicyState& s = plan.after;
  const std::string file = versioned(p, kLastName, s.last_model_path, exists, plan);
  const std::string previous = s.last_model_path;
  s.last_model_path = file;
  if (plan.file.empty()) {
    plan.file = file;
  } else if (plan.file != file) {
    plan.link_last = file;
  }
  if (!previous.empty() && previous != file) plan.drop.push_back(previous);
}

// Records the save in the plan's state and turns the deletions Lightning's rules asked for
// into the deletions that happen: nothing still referenced, nothing keep_last_n holds.
void CheckpointPolicy::finish_plan(const SavePoint& p, SavePlan& plan,
                                   std::vector<std::string> removed) const {
  for (auto& f : plan.drop) removed.push_back(f);
  plan.drop.clear();
  if (plan.file.empty()) return;
  PolicyState& s = plan.after;
  s.last_global_step_saved = p.step;
  if (!s.unranked.empty()) {
    removed.push_back(s.unranked);
    s.unranked.clear();
  }
  s.recent.erase(std::remove(s.recent.begin(), s.recent.end(), plan.file), s.recent.end());
  s.recent.push_back(plan.file);
  if (options_.keep_last_n >= 0 && static_cast<int64_t>(s.recent.size()) > options_.keep_last_n) {
    s.recent.erase(s.recent.begin(),
                   s.recent.end() - static_cast<std::ptrdiff_t>(options_.keep_last_n));
  }
  std::set<std::string> referenced{plan.file, s.best_model_path, s.last_model_path,
                                   plan.link_last, resumed_from_};
  for (const auto& e : s.best_k_models) referenced.insert(e.first);
  std::vector<std::string> candidates = s.retiring;
  for (const auto& f : removed) {
    if (!contains(candidates, f)) candidates.push_back(f);
  }
  s.retiring.clear();
  for (const auto& f : candidates) {
    if (f.empty() || referenced.count(f)) continue;
    (contains(s.recent, f) ? s.retiring : plan.drop).push_back(f);
  }
}

void CheckpointPolicy::commit(const SavePlan& plan) {
  if (!plan.empty()) state_ = plan.after;
}

std::vector<std::pair<std::string, double>> CheckpointPolicy::ranked() const {
  return ranked_by(state_.best_k_models, options_.mode);
}

std::string CheckpointPolicy::to_json(const PolicyState& s, const CheckpointPolicyOptions& o) {
  json j;
  j["monitor"] = o.monitor;
  j["mode"] = o.mode;
  json models = json::array();
  for (const auto& [f, v] : s.best_k_models) models.push_back({f, score_json(v)});
  j["best_k_models"] = models;
  // Best first, for readers of the older table (ddp-checkpoint ls, resume=best).
  json best_k = json::array();
  for (const auto& [f, v] : ranked_by(s.best_k_models, o.mode)) best_k.push_back({{"file", f}, {"score", score_json(v)}});
  if (best_k.empty() && !s.best_model_path.empty() && o.monitor.empty()) {
    best_k.push_back({{"file", s.best_model_path}, {"score", nullptr}});
  }
  j["best_k"] = best_k;
  j["best_model_path"] = s.best_model_path;
  j["best_model_score"] = optional_json(s.best_model_score);
  j["kth_best_model_path"] = s.kth_best_model_path;
  j["kth_value"] = optional_json(s.kth_value);
  j["current_score"] = optional_json(s.current_score);
  j["last_model_path"] = s.last_model_path;
  j["last_global_step_saved"] = s.last_global_step_saved;
  j["recent"] = s.recent;
  j["retiring"] = s.retiring;
  j["unranked"] = s.unranked;
  return j.dump();
}

PolicyState CheckpointPolicy::from_json(const std::string& text) {
  PolicyState s;
  if (text.empty()) return s;
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    throw Error(ErrorKind::kCorruption, "checkpoint callback state is not valid JSON");
  }
  auto str = [&](const char* key) {
    return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : std::string();
  };
  auto names = [&](const json& a) {
    std::vector<std::string> v;
    if (!a.is_array()) return v;
    for (const auto& e : a) {
      if (e.is_string()) v.push_back(e.get<std::string>());
      if (e.is_object() && e.contains("file") && e["file"].is_string()) v.push_back(e["file"]);
    }
    return v;
  };
  if (j.contains("best_k_models") && j["best_k_models"].is_array()) {
    for (const auto& e : j["best_k_models"]) {
      if (!e.is_array() || e.size() != 2 || !e[0].is_string()) continue;
      const auto v = score_from(e[1]);
      s.best_k_models.emplace_back(e[0].get<std::string>(), v ? *v : NAN);
    }
    s.best_model_path = str("best_model_path");
    s.best_model_score = score_from(j.value("best_model_score", json()));
    s.kth_best_model_path = str("kth_best_model_path");
    s.kth_value = score_from(j.value("kth_value", json()));
    s.current_score = score_from(j.value("current_score", json()));
    s.last_model_path = str("last_model_path");
    s.last_global_step_saved = j.value("last_global_step_saved", int64_t{-1});
    s.recent = names(j.value("recent", json::array()));
    s.retiring = names(j.value("retiring", json::array()));
    s.unranked = str("unranked");
    return s;
  }
  // The table written before Lightning's state (ddp-runtime 0.1): best_k best first with
  // scores, recent newest last, saved = every file kept; last.h5 was always the link's name.
  const json best_k = j.value("best_k", json::array());
  if (best_k.is_array()) {
    for (const auto& e : best_k) {
      if (!e.is_object() || !e.contains("file")) continue;
      const auto v = score_from(e.value("score", json()));
      s.best_k_models.emplace_back(e.value("file", ""), v ? *v : NAN);
    }
  }
  if (!s.best_k_models.empty()) {
    s.best_model_path = s.best_k_models.front().first;
    s.best_model_score = s.best_k_models.front().second;
    s.kth_best_model_path = s.best_k_models.back().first;
    s.kth_value = s.best_k_models.back().second;
  }
  s.last_model_path = "last.h5";
  s.recent = names(j.value("recent", json::array()));
  for (const auto& f : names(j.value("saved", json::array()))) {
    const bool ranked = std::any_of(s.best_k_models.begin(), s.best_k_models.end(),
                                    [&](const auto& e) { return e.first == f; });
    if (!ranked && !contains(s.recent, f)) s.retiring.push_back(f);
  }
  return s;
}

std::string CheckpointPolicy::plan_json(const SavePlan& plan, const CheckpointPolicyOptions& o) {
  json j{{"file", plan.file},
         {"link_last", plan.link_last},
         {"drop", plan.drop},
         {"warnings", plan.warnings},
         {"after", to_json(plan.after, o)}};
  return j.dump();
}

SavePlan CheckpointPolicy::plan_from_json(const std::string& text) {
  const json j = json::parse(text);
  SavePlan plan;
  plan.file = j.at("file").get<std::string>();
  plan.link_last = j.at("link_last").get<std::string>();
  plan.drop = j.at("drop").get<std::vector<std::string>>();
  plan.warnings = j.at("warnings").get<std::vector<std::string>>();
  plan.after = from_json(j.at("after").get<std::string>());
  return plan;
}

}  // namespace ddp::ckpt
