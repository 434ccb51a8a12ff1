// runtime/config: layering (defaults, file, overrides), unknown keys with suggestions, type
// and range errors, error kinds, resolved_yaml round trip, and the shipped configs/*.yaml.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include "collectives/error.h"
#include "runtime/config.h"
#include "tests/test_util.h"

namespace ddp {
namespace {

namespace fs = std::filesystem;

std::string write_file(const std::string& dir, const std::string& name, const std::string& text) {
  const std::string path = (fs::path(dir) / name).string();
  std::ofstream(path) << text;
  return path;
}

// Runs `fn`, expects a ddp::Error of `kind`, returns its message ("" and a failure otherwise).
std::string error_of(const std::function<void()>& fn,
                     ErrorKind kind = ErrorKind::kInvalidArgument) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(error_kind_name(e.kind()), std::string(error_kind_name(kind))) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected a ddp::Error, none was thrown";
  return "";
}

std::string override_error(const std::vector<std::string>& overrides) {
  return error_of([&] { load_config("", overrides); });
}

// Dotted leaf keys of a YAML document, in document order (model.options counts as one leaf).
void collect_keys(const YAML::Node& node, const std::string& prefix,
                  std::vector<std::string>* out) {
  for (const auto& kv : node) {
    const std::string key = prefix.empty() ? kv.first.Scalar() : prefix + "." + kv.first.Scalar();
    if (kv.second.IsMap() && key != "model.options") {
      collect_keys(kv.second, key, out);
    } else {
      out->push_back(key);
    }
  }
}

std::vector<std::string> keys_of(const std::string& yaml_text) {
  std::vector<std::string> keys;
  collect_keys(YAML::Load(yaml_text), "", &keys);
  return keys;
}

void expect_same_fields(const Config& a, const Config& b) {
  EXPECT_EQ(a.trainer.max_epochs, b.trainer.max_epochs);
  EXPECT_EQ(a.trainer.max_steps, b.trainer.max_steps);
  EXPECT_EQ(a.trainer.batch_size, b.trainer.batch_size);
  EXPECT_EQ(a.trainer.log_every_n_steps, b.trainer.log_every_n_steps);
  EXPECT_EQ(a.trainer.val_check_interval, b.trainer.val_check_interval);
  EXPECT_EQ(a.trainer.check_val_every_n_epoch, b.trainer.check_val_every_n_epoch);
  EXPECT_EQ(a.trainer.limit_val_batches, b.trainer.limit_val_batches);
  EXPECT_EQ(a.trainer.accumulate_grad_batches, b.trainer.accumulate_grad_batches);
  EXPECT_EQ(a.trainer.gradient_clip_val, b.trainer.gradient_clip_val);
  EXPECT_EQ(a.trainer.seed, b.trainer.seed);
  EXPECT_EQ(a.trainer.default_root_dir, b.trainer.default_root_dir);
  EXPECT_EQ(a.trainer.name, b.trainer.name);
  EXPECT_EQ(a.trainer.precision, b.trainer.precision);
  EXPECT_EQ(a.trainer.progress_bar, b.trainer.progress_bar);
  EXPECT_EQ(a.optimizer.name, b.optimizer.name);
  EXPECT_EQ(a.optimizer.lr, b.optimizer.lr);
  EXPECT_EQ(a.optimizer.momentum, b.optimizer.momentum);
  EXPECT_EQ(a.optimizer.nesterov, b.optimizer.nesterov);
  EXPECT_EQ(a.optimizer.weight_decay, b.optimizer.weight_decay);
  EXPECT_EQ(a.optimizer.beta1, b.optimizer.beta1);
  EXPECT_EQ(a.optimizer.beta2, b.optimizer.beta2);
  EXPECT_EQ(a.optimizer.eps, b.optimizer.eps);
  EXPECT_EQ(a.scheduler.name, b.scheduler.name);
  EXPECT_EQ(a.scheduler.step_size, b.scheduler.step_size);
  EXPECT_EQ(a.scheduler.gamma, b.scheduler.gamma);
  EXPECT_EQ(a.scheduler.warmup_steps, b.scheduler.warmup_steps);
  EXPECT_EQ(a.scheduler.min_lr, b.scheduler.min_lr);
  EXPECT_EQ(a.ddp.backend, b.ddp.backend);
  EXPECT_EQ(a.ddp.bucket_cap_mb, b.ddp.bucket_cap_mb);
  EXPECT_EQ(a.ddp.compression, b.ddp.compression);
  EXPECT_EQ(a.ddp.timeout_s, b.ddp.timeout_s);
  EXPECT_EQ(a.ddp.zero_stage, b.ddp.zero_stage);
  EXPECT_EQ(a.data.name, b.data.name);
  EXPECT_EQ(a.data.path, b.data.path);
  EXPECT_EQ(a.data.val_path, b.data.val_path);
  EXPECT_EQ(a.data.val_fraction, b.data.val_fraction);
  EXPECT_EQ(a.data.num_samples, b.data.num_samples);
  EXPECT_EQ(a.data.val_samples, b.data.val_samples);
  EXPECT_EQ(a.data.num_features, b.data.num_features);
  EXPECT_EQ(a.data.num_classes, b.data.num_classes);
  EXPECT_EQ(a.data.noise, b.data.noise);
  EXPECT_EQ(a.data.label_column, b.data.label_column);
  EXPECT_EQ(a.data.task, b.data.task);
  EXPECT_EQ(a.data.seq_len, b.data.seq_len);
  EXPECT_EQ(a.data.shuffle, b.data.shuffle);
  EXPECT_EQ(a.data.drop_last, b.data.drop_last);
  EXPECT_EQ(a.model.name, b.model.name);
  EXPECT_EQ(a.model.device, b.model.device);
  EXPECT_EQ(a.model.hidden_sizes, b.model.hidden_sizes);
  EXPECT_EQ(a.model.channels, b.model.channels);
  EXPECT_EQ(a.model.dropout, b.model.dropout);
  EXPECT_EQ(a.model.d_model, b.model.d_model);
  EXPECT_EQ(a.model.n_layers, b.model.n_layers);
  EXPECT_EQ(a.model.n_heads, b.model.n_heads);
  EXPECT_EQ(a.model.d_ff, b.model.d_ff);
  EXPECT_EQ(a.model.options, b.model.options);
  EXPECT_EQ(a.checkpoint.enabled, b.checkpoint.enabled);
  EXPECT_EQ(a.checkpoint.dirpath, b.checkpoint.dirpath);
  EXPECT_EQ(a.checkpoint.every_n_train_steps, b.checkpoint.every_n_train_steps);
  EXPECT_EQ(a.checkpoint.every_n_epochs, b.checkpoint.every_n_epochs);
  EXPECT_EQ(a.checkpoint.train_time_interval, b.checkpoint.train_time_interval);
  EXPECT_EQ(a.checkpoint.save_last, b.checkpoint.save_last);
  EXPECT_EQ(a.checkpoint.save_top_k, b.checkpoint.save_top_k);
  EXPECT_EQ(a.checkpoint.monitor, b.checkpoint.monitor);
  EXPECT_EQ(a.checkpoint.mode, b.checkpoint.mode);
  EXPECT_EQ(a.checkpoint.filename, b.checkpoint.filename);
  EXPECT_EQ(a.checkpoint.save_weights_only, b.checkpoint.save_weights_only);
  EXPECT_EQ(a.checkpoint.keep_last_n, b.checkpoint.keep_last_n);
  EXPECT_EQ(a.checkpoint.async, b.checkpoint.async);
  EXPECT_EQ(a.checkpoint.async_nice, b.checkpoint.async_nice);
  EXPECT_EQ(a.checkpoint.chunk_mb, b.checkpoint.chunk_mb);
  EXPECT_EQ(a.checkpoint.on_error, b.checkpoint.on_error);
  EXPECT_EQ(a.checkpoint.resume, b.checkpoint.resume);
  EXPECT_EQ(a.preemption.signals, b.preemption.signals);
  EXPECT_EQ(a.preemption.exit_code, b.preemption.exit_code);
  EXPECT_EQ(a.preemption.save, b.preemption.save);
}

// ---- Defaults and shipped configs

TEST(Config, DefaultsEqualTheStructDefaults) {
  const Config loaded = load_config("", {});
  expect_same_fields(loaded, Config{});
  EXPECT_FALSE(loaded.resolved_yaml.empty());
}

TEST(Config, DefaultYamlHasEveryKeyInResolvedOrder) {
  const std::vector<std::string> defaults = keys_of(kDefaultConfigYaml);
  EXPECT_EQ(keys_of(load_config("", {}).resolved_yaml), defaults);
  // Each key is accepted as an override with its own default value.
  const YAML::Node root = YAML::Load(kDefaultConfigYaml);
  for (const std::string& key : defaults) {
    const size_t dot = key.find('.');
    YAML::Emitter value;
    value << YAML::Flow << root[key.substr(0, dot)][key.substr(dot + 1)];
    EXPECT_NO_THROW(load_config("", {key + "=" + value.c_str()})) << key;
  }
}

TEST(Config, EveryShippedConfigLoads) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(test::source_path("configs"))) {
    if (entry.path().extension() != ".yaml") continue;
    names.push_back(entry.path().filename().string());
    EXPECT_NO_THROW({
      try {
        load_config(entry.path().string(), {});
      } catch (const Error& e) {
        ADD_FAILURE() << e.what();
        throw;
      }
    }) << entry.path();
  }
  for (const char* expected :
       {"default.yaml", "mlp.yaml", "cnn.yaml", "transformer.yaml", "regression.yaml"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), expected), names.end()) << expected;
  }
}

TEST(Config, ShippedConfigsPickTheirModelAndData) {
  const auto load = [](const std::string& name) {
    return load_config(test::source_path("configs/" + name), {});
  };
  EXPECT_EQ(load("cnn.yaml").model.name, "cnn");
  EXPECT_EQ(load("cnn.yaml").data.name, "mnist");
  EXPECT_EQ(load("transformer.yaml").model.name, "transformer");
  EXPECT_EQ(load("transformer.yaml").data.name, "tokens");
  EXPECT_EQ(load("regression.yaml").data.name, "synthetic_regression");
  const Config main_job = load("default.yaml");
  EXPECT_EQ(main_job.model.name, "mlp");
  EXPECT_EQ(main_job.data.name, "synthetic_classification");
  EXPECT_EQ(main_job.model.device, "cpu");
}

TEST(Config, DefaultYamlFileDocumentsEveryKey) {
  const std::string path = test::source_path("configs/default.yaml");
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_EQ(keys_of(text.str()), keys_of(kDefaultConfigYaml));
  // Every key line carries a comment, on the line itself or just above it.
  std::string line, previous;
  std::istringstream lines(text.str());
  while (std::getline(lines, line)) {
    const bool key_line = line.rfind("  ", 0) == 0 && line.find(':') != std::string::npos &&
                          line.find_first_not_of(' ') < line.find('#');
    const bool comment_above = previous.find('#') != std::string::npos &&
                               previous.find_first_not_of(' ') == previous.find('#');
    const bool commented = line.find('#') != std::string::npos || comment_above;
    if (key_line) {
      EXPECT_TRUE(commented) << "undocumented: " << line;
    }
    previous = line;
  }
}

// ---- Layering

TEST(Config, FileOverridesDefaultsAndOverridesWinOverFile) {
  const std::string dir = test::temp_dir("config_layers");
  const std::string path = write_file(dir, "run.yaml",
                                      "trainer:\n  max_steps: 500\n  batch_size: 32\n"
                                      "model:\n  options: {a: '1', b: two}\n");
  const Config file_only = load_config(path, {});
  EXPECT_EQ(file_only.trainer.max_steps, 500);
  EXPECT_EQ(file_only.trainer.batch_size, 32);
  EXPECT_EQ(file_only.trainer.max_epochs, 10);  // untouched default
  const Config both = load_config(path, {"trainer.max_steps=7", "trainer.max_steps=9",
                                         "model.options.b=three", "model.options.c=4"});
  EXPECT_EQ(both.trainer.max_steps, 9);  // the last override wins
  EXPECT_EQ(both.trainer.batch_size, 32);
  const std::map<std::string, std::string> options{{"a", "1"}, {"b", "three"}, {"c", "4"}};
  EXPECT_EQ(both.model.options, options);  // maps merge entry by entry
}

TEST(Config, OverrideValuesAreParsedAsYaml) {
  const Config c = load_config(
      "", {"trainer.max_steps=1000", "optimizer.lr=1e-3", "optimizer.lr = 2.5e-4",
           "model.hidden_sizes=[512, 128]", "data.shuffle=false", "optimizer.nesterov=true",
           "trainer.name=my run", "model.options={k: v}", "trainer={batch_size: 8, seed: -3}",
           "data.label_column=", "model.options.expr=a=b"});
  EXPECT_EQ(c.trainer.max_steps, 1000);
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 2.5e-4);
  EXPECT_EQ(c.model.hidden_sizes, (std::vector<int64_t>{512, 128}));
  EXPECT_FALSE(c.data.shuffle);
  EXPECT_TRUE(c.optimizer.nesterov);
  EXPECT_EQ(c.trainer.name, "my run");
  EXPECT_EQ(c.trainer.batch_size, 8);
  EXPECT_EQ(c.trainer.seed, -3);
  EXPECT_EQ(c.data.label_column, "");
  const std::map<std::string, std::string> options{{"k", "v"}, {"expr", "a=b"}};
  EXPECT_EQ(c.model.options, options);
}

TEST(Config, ListsReplaceRatherThanMerge) {
  EXPECT_EQ(load_config("", {"model.hidden_sizes=[7]"}).model.hidden_sizes,
            std::vector<int64_t>{7});
}

TEST(Config, MalformedOverridesAreRejected) {
  EXPECT_NE(override_error({"trainer.max_steps"}).find("expected dotted.key=value"),
            std::string::npos);
  EXPECT_NE(override_error({"=5"}).find("expected dotted.key=value"), std::string::npos);
  EXPECT_NE(override_error({"trainer..max_steps=5"}).find("empty part"), std::string::npos);
  EXPECT_NE(override_error({"trainer.max_steps=[1"}).find("YAML syntax error"), std::string::npos);
}

// ---- Unknown keys

TEST(Config, UnknownKeyInFileSuggestsTheClosestKey) {
  const std::string dir = test::temp_dir("config_unknown");
  const std::string path = write_file(dir, "typo.yaml", "trainer:\n  max_step: 5\n");
  const std::string message = error_of([&] { load_config(path, {}); });
  EXPECT_NE(message.find("unknown config key 'trainer.max_step'"), std::string::npos) << message;
  EXPECT_NE(message.find("did you mean 'trainer.max_steps'?"), std::string::npos) << message;
  EXPECT_NE(message.find("typo.yaml:2:3)"), std::string::npos) << message;  // at the key
}

TEST(Config, UnknownKeySuggestions) {
  struct Case {
    std::string override_text, suggestion;
  };
  const std::vector<Case> cases{
      {"trainer.max_step=5", "trainer.max_steps"},
      {"trainer.Batch_Size=5", "trainer.batch_size"},  // case only
      {"trainer.lr=0.1", "optimizer.lr"},              // same key, other section
      {"trainr.max_steps=5", "trainer.max_steps"},     // section typo
      {"trainr={max_steps: 5}", "trainer"},
      {"model.hiden_sizes=[4]", "model.hidden_sizes"},
      {"optimizer.weight_decy=0.1", "optimizer.weight_decay"},
  };
  for (const Case& c : cases) {
    const std::string message = override_error({c.override_text});
    EXPECT_NE(
        message.find("unknown config key '" + c.override_text.substr(0, c.override_text.find('='))),
        std::string::npos)
        << message;
    EXPECT_NE(message.find("did you mean '" + c.suggestion + "'?"), std::string::npos) << message;
  }
}

TEST(Config, UnknownKeyWithNothingCloseListsTheSection) {
  const std::string message = override_error({"trainer.completely_unrelated=1"});
  EXPECT_NE(message.find("unknown config key 'trainer.completely_unrelated'"), std::string::npos);
  EXPECT_EQ(message.find("did you mean"), std::string::npos) << message;
  EXPECT_NE(message.find("max_epochs"), std::string::npos) << message;
}

TEST(Config, UnknownTopLevelKeyInStringSuggestsItsSection) {
  const std::string message = error_of([] { load_config_from_string("max_steps: 5\n", {}); });
  EXPECT_NE(message.find("did you mean 'trainer.max_steps'?"), std::string::npos) << message;
}

TEST(Config, KeysBelowAScalarAreUnknown) {
  const std::string message = override_error({"trainer.max_steps.x=1"});
  EXPECT_NE(message.find("unknown config key 'trainer.max_steps.x'"), std::string::npos);
  EXPECT_NE(message.find("'trainer.max_steps' takes a value, not keys"), std::string::npos);
}

TEST(Config, DuplicateKeyIsRejected) {
  const std::string message =
      error_of([] { load_config_from_string("trainer:\n  seed: 1\n  seed: 2\n", {}); });
  EXPECT_NE(message.find("'trainer.seed' is set twice"), std::string::npos) << message;
}

// ---- Types

TEST(Config, WrongTypesNameKeyExpectedTypeAndValue) {
  const std::vector<std::pair<std::string, std::string>> cases{
      {"trainer.max_steps=abc", "config key 'trainer.max_steps': expected an integer, got 'abc'"},
      {"trainer.max_steps=1.5", "config key 'trainer.max_steps': expected an integer, got '1.5'"},
      {"trainer.batch_size=1e3", "expected an integer, got '1e3'"},
      {"trainer.max_steps=99999999999999999999", "expected an integer"},
      {"trainer.batch_size={a: 1}",
       "config key 'trainer.batch_size': expected an integer, got a map"},
      {"trainer.max_steps=", "expected an integer, got nothing"},
      {"optimizer.lr=fast", "config key 'optimizer.lr': expected a number, got 'fast'"},
      {"optimizer.lr=.nan", "expected a number, got '.nan'"},
      {"optimizer.lr=[1]", "expected a number, got a list"},
      {"data.shuffle=maybe",
       "config key 'data.shuffle': expected a boolean (true or false), got 'maybe'"},
      {"data.shuffle=1", "expected a boolean"},
      {"model.hidden_sizes=[256, x]",
       "config key 'model.hidden_sizes[1]': expected an integer, got 'x'"},
      {"model.hidden_sizes=[2.5]", "'model.hidden_sizes[0]': expected an integer, got '2.5'"},
      {"model.hidden_sizes=256",
       "config key 'model.hidden_sizes': expected a list of integers, got '256'"},
      {"model.name=[a]", "config key 'model.name': expected a string, got a list"},
      {"model.options=[a]", "config key 'model.options': expected a map of strings, got a list"},
      {"model.options={a: [1]}", "config key 'model.options.a': expected a string, got a list"},
      {"trainer=5", "config key 'trainer': expected a map of keys, got '5'"},
  };
  for (const auto& [override_text, expected] : cases) {
    const std::string message = override_error({override_text});
    EXPECT_NE(message.find(expected), std::string::npos) << override_text << " -> " << message;
  }
}

TEST(Config, WrongTypeInFileNamesFileAndLine) {
  const std::string dir = test::temp_dir("config_type");
  const std::string path = write_file(dir, "bad.yaml", "trainer:\n  seed: 1\n  max_steps: abc\n");
  const std::string message = error_of([&] { load_config(path, {}); });
  EXPECT_NE(message.find("config key 'trainer.max_steps': expected an integer, got 'abc'"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("bad.yaml:3:"), std::string::npos) << message;
}

TEST(Config, ScalarSpellingsThatAreAccepted) {
  const Config c =
      load_config("", {"optimizer.lr=+5e-1", "trainer.gradient_clip_val=1", "data.shuffle=no",
                       "data.drop_last=On", "trainer.max_steps=+12", "optimizer.eps=.5"});
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 0.5);
  EXPECT_DOUBLE_EQ(c.trainer.gradient_clip_val, 1.0);  // an integer is a valid number
  EXPECT_FALSE(c.data.shuffle);
  EXPECT_TRUE(c.data.drop_last);
  EXPECT_EQ(c.trainer.max_steps, 12);
  EXPECT_DOUBLE_EQ(c.optimizer.eps, 0.5);
}

// ---- Ranges and cross-key rules

TEST(Config, OutOfRangeValuesNameKeyValueAndRange) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases{
      {{"trainer.max_epochs=0"}, "'trainer.max_epochs': must be >= 1 or -1, got 0"},
      {{"trainer.max_steps=-2"}, "'trainer.max_steps': must be >= 1 or -1, got -2"},
      {{"trainer.max_epochs=-1"}, "both -1"},
      {{"trainer.batch_size=0"}, "'trainer.batch_size': must be >= 1, got 0"},
      {{"trainer.log_every_n_steps=0"}, "'trainer.log_every_n_steps': must be >= 1"},
      {{"trainer.val_check_interval=0"}, "'trainer.val_check_interval': must be a fraction"},
      {{"trainer.val_check_interval=2.5"}, "whole number of optimizer steps > 1, got 2.5"},
      {{"trainer.check_val_every_n_epoch=-1"}, "'trainer.check_val_every_n_epoch': must be >= 0"},
      {{"trainer.limit_val_batches=0"}, "'trainer.limit_val_batches': must be >= 1 or -1, got 0"},
      {{"trainer.accumulate_grad_batches=0"}, "'trainer.accumulate_grad_batches': must be >= 1"},
      {{"trainer.gradient_clip_val=-0.5"}, "'trainer.gradient_clip_val': must be >= 0, got -0.5"},
      {{"trainer.precision=16"},
       "'trainer.precision': must be one of 32, bf16-mixed, 16-mixed, got '16'"},
      {{"trainer.progress_bar=maybe"}, "'trainer.progress_bar': must be one of auto, on, off"},
      {{"optimizer.name=rmsprop"},
       "'optimizer.name': must be one of sgd, adam, adamw, got 'rmsprop'"},
      {{"optimizer.lr=0"}, "'optimizer.lr': must be > 0, got 0"},
      {{"optimizer.momentum=1"}, "'optimizer.momentum': must be in [0, 1), got 1"},
      {{"optimizer.weight_decay=-1"}, "'optimizer.weight_decay': must be >= 0"},
      {{"optimizer.beta1=-0.1"}, "'optimizer.beta1': must be in [0, 1)"},
      {{"optimizer.beta2=1.0"}, "'optimizer.beta2': must be in [0, 1), got 1"},
      {{"optimizer.eps=0"}, "'optimizer.eps': must be > 0"},
      {{"scheduler.name=linear"}, "'scheduler.name': must be one of none, step, cosine"},
      {{"scheduler.step_size=0"}, "'scheduler.step_size': must be >= 1"},
      {{"scheduler.gamma=0"}, "'scheduler.gamma': must be in (0, 1], got 0"},
      {{"scheduler.gamma=1.5"}, "'scheduler.gamma': must be in (0, 1], got 1.5"},
      {{"scheduler.warmup_steps=-1"}, "'scheduler.warmup_steps': must be >= 0"},
      {{"scheduler.min_lr=-1e-5"}, "'scheduler.min_lr': must be >= 0"},
      {{"scheduler.name=cosine"}, "'cosine' requires trainer.max_steps >= 1"},
      {{"ddp.backend=gloo"}, "'ddp.backend': must be one of auto, mpi, nccl, got 'gloo'"},
      {{"ddp.backend=nccl"}, "'nccl' requires model.device = cuda"},
      {{"ddp.bucket_cap_mb=-1"}, "'ddp.bucket_cap_mb': must be >= 0"},
      {{"ddp.compression=int8"}, "'ddp.compression': must be one of none, fp16, bf16"},
      {{"ddp.zero_stage=2"}, "'ddp.zero_stage': must be 0 (replicated optimizer state) or 1"},
      {{"ddp.timeout_s=0"}, "'ddp.timeout_s': must be > 0"},
      {{"data.name=imagenet"}, "'data.name': must be one of synthetic_classification,"},
      {{"data.name=csv"}, "data.path is required for data.name=csv"},
      {{"data.name=mnist"}, "data.path is required for data.name=mnist"},
      {{"data.name=tokens"}, "data.path is required for data.name=tokens"},
      {{"data.val_fraction=1"}, "'data.val_fraction': must be in [0, 1)"},
      {{"data.num_samples=0"}, "'data.num_samples': must be >= 1"},
      {{"data.val_samples=-1"}, "'data.val_samples': must be >= 0"},
      {{"data.num_features=0"}, "'data.num_features': must be >= 1"},
      {{"data.num_classes=1"}, "'data.num_classes': must be >= 2, got 1"},
      {{"data.noise=-0.1"}, "'data.noise': must be >= 0"},
      {{"data.task=ranking"}, "'data.task': must be one of classification, regression"},
      {{"data.seq_len=0"}, "'data.seq_len': must be >= 1"},
      {{"model.name="}, "'model.name': must be a non-empty model name"},
      {{"model.device=tpu"}, "'model.device': must be one of cpu, cuda, got 'tpu'"},
      {{"model.hidden_sizes=[]"},
       "'model.hidden_sizes': must be a non-empty list of integers >= 1, got []"},
      {{"model.hidden_sizes=[8, 0]"}, "got [8, 0]"},
      {{"model.channels=[]"}, "'model.channels': must be a non-empty list"},
      {{"model.dropout=1"}, "'model.dropout': must be in [0, 1)"},
      {{"model.d_model=0"}, "'model.d_model': must be >= 1"},
      {{"model.n_layers=0"}, "'model.n_layers': must be >= 1"},
      {{"model.n_heads=0"}, "'model.n_heads': must be >= 1"},
      {{"model.d_ff=0"}, "'model.d_ff': must be >= 1"},
      {{"model.d_model=130"}, "'model.d_model': must be divisible by model.n_heads (4), got 130"},
      {{"checkpoint.async_nice=20"}, "'checkpoint.async_nice': must be in [0, 19]"},
      {{"checkpoint.async_nice=-1"}, "got -1"},
  };
  for (const auto& [overrides, expected] : cases) {
    const std::string message = override_error(overrides);
    EXPECT_NE(message.find(expected), std::string::npos) << overrides[0] << " -> " << message;
  }
}

TEST(Config, BoundaryValuesThatAreAccepted) {
  EXPECT_EQ(load_config("", {"trainer.precision=32"}).trainer.precision, "32");
  EXPECT_EQ(load_config("", {"trainer.precision='32'"}).trainer.precision, "32");
  EXPECT_EQ(load_config("", {"trainer.precision=bf16-mixed"}).trainer.precision, "bf16-mixed");
  EXPECT_DOUBLE_EQ(load_config("", {"trainer.val_check_interval=0.25"}).trainer.val_check_interval,
                   0.25);
  EXPECT_DOUBLE_EQ(load_config("", {"trainer.val_check_interval=200"}).trainer.val_check_interval,
                   200);
  EXPECT_NO_THROW(load_config("", {"trainer.max_epochs=-1", "trainer.max_steps=10"}));
  EXPECT_NO_THROW(load_config(
      "", {"trainer.check_val_every_n_epoch=0", "optimizer.momentum=0", "scheduler.gamma=1",
           "ddp.bucket_cap_mb=0", "data.val_samples=0", "model.dropout=0"}));
  EXPECT_NO_THROW(load_config("", {"scheduler.name=cosine", "trainer.max_steps=100"}));
  EXPECT_NO_THROW(load_config("", {"ddp.backend=nccl", "model.device=cuda"}));
  EXPECT_NO_THROW(load_config("", {"data.name=csv", "data.path=train.csv"}));
  EXPECT_NO_THROW(load_config("", {"checkpoint.async_nice=0"}));
  EXPECT_NO_THROW(load_config("", {"checkpoint.async_nice=19"}));
}

TEST(Config, RulesApplyToTheMergedConfig) {
  // The file asks for cosine without max_steps; an override supplies it.
  const std::string dir = test::temp_dir("config_merged");
  const std::string path = write_file(dir, "cos.yaml", "scheduler:\n  name: cosine\n");
  EXPECT_NE(error_of([&] { load_config(path, {}); }).find("requires trainer.max_steps"),
            std::string::npos);
  EXPECT_EQ(load_config(path, {"trainer.max_steps=50"}).scheduler.name, "cosine");
}

// ---- Files

TEST(Config, MissingFileIsNotFound) {
  const std::string message =
      error_of([] { load_config("/nonexistent/x.yaml", {}); }, ErrorKind::kNotFound);
  EXPECT_NE(message.find("config file '/nonexistent/x.yaml' not found"), std::string::npos)
      << message;
}

TEST(Config, SyntaxErrorNamesFileLineAndColumn) {
  const std::string dir = test::temp_dir("config_syntax");
  const std::string path = write_file(dir, "broken.yaml", "trainer:\n  max_steps: [1, 2\n");
  const std::string message = error_of([&] { load_config(path, {}); });
  EXPECT_NE(message.find("broken.yaml"), std::string::npos) << message;
  EXPECT_NE(message.find("YAML syntax error at line "), std::string::npos) << message;
  EXPECT_NE(message.find("column"), std::string::npos) << message;
  const std::string inline_error = error_of([] { load_config_from_string("a: 1\nb: c: d\n", {}); });
  EXPECT_NE(inline_error.find("line 2, column"), std::string::npos) << inline_error;
}

TEST(Config, EmptyOrNonMapDocumentsAreRejected) {
  const std::string dir = test::temp_dir("config_empty");
  EXPECT_NE(error_of([&] { load_config(write_file(dir, "empty.yaml", ""), {}); }).find("is empty"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              load_config(write_file(dir, "comments.yaml", "# nothing\n"), {});
            }).find("is empty"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              load_config_from_string("- a\n- b\n", {});
            }).find("the top level must be a map of sections"),
            std::string::npos);
  EXPECT_NE(
      error_of([] { load_config_from_string("just a string", {}); }).find("got 'just a string'"),
      std::string::npos);
}

TEST(Config, EmptySectionIsAllowed) {
  expect_same_fields(load_config_from_string("trainer:\nmodel: {}\n", {}), Config{});
}

// ---- resolved_yaml

TEST(Config, ResolvedYamlRoundTrips) {
  const Config original = load_config(
      "", {"trainer.max_steps=123", "trainer.val_check_interval=0.1", "trainer.name=true",
           "trainer.precision=32", "trainer.default_root_dir=' /tmp/with space '",
           "optimizer.name=sgd", "optimizer.lr=3.3e-7", "optimizer.nesterov=true",
           "optimizer.eps=1e-12", "scheduler.name=cosine", "scheduler.min_lr=1e-6", "data.name=csv",
           "data.path='data/train: v2.csv'", "data.label_column='null'", "data.val_path=123",
           "data.noise=0.30000000000000004", "model.hidden_sizes=[3, 1, 4]", "model.channels=[8]",
           "model.options={a: '1', 'b c': 'x: y', empty: ''}"});
  const Config again = load_config_from_string(original.resolved_yaml, {});
  expect_same_fields(again, original);
  EXPECT_EQ(again.resolved_yaml, original.resolved_yaml);
  EXPECT_EQ(again.trainer.name, "true");  // a string, not a boolean
  EXPECT_EQ(again.data.label_column, "null");
  EXPECT_EQ(again.trainer.default_root_dir, " /tmp/with space ");
}

TEST(Config, ResolvedYamlOfDefaultsLoadsToDefaults) {
  const Config defaults = load_config("", {});
  expect_same_fields(load_config_from_string(defaults.resolved_yaml, {}), Config{});
  EXPECT_NE(defaults.resolved_yaml.find("precision: \"32\""), std::string::npos)
      << defaults.resolved_yaml;
}

}  // namespace
}  // namespace ddp

namespace ddp {
namespace {

TEST(ConfigPreemption, SignalsAndExitCodeAreValidated) {
  EXPECT_NO_THROW(load_config_from_string("{}", {"preemption.signals=USR1, sigterm"}));
  try {
    load_config_from_string("{}", {"preemption.signals=SIGTERM,SIGFOO"});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("FOO"), std::string::npos) << e.what();
  }
  try {
    load_config_from_string("{}", {"preemption.exit_code=2"});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("preemption.exit_code"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ddp
