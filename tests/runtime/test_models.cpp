// Built-in models and the model registry: construction from the default config, output
// shapes, stable parameter names (checkpoint format), buffers, causality, registry errors,
// losses, and that a few SGD steps learn.
#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "collectives/error.h"
#include "runtime/models/model.h"

namespace ddp {
namespace {

DatasetInfo classification_info() { return {Task::kClassification, {64}, 10}; }
DatasetInfo image_info() { return {Task::kClassification, {1, 28, 28}, 10}; }
DatasetInfo regression_info() { return {Task::kRegression, {2, 3, 4}, 3}; }
DatasetInfo lm_info() { return {Task::kLanguageModel, {16}, 50}; }

ModelConfig config_for(const std::string& name) {
  ModelConfig config;
  config.name = name;
  return config;
}

std::shared_ptr<Model> create(const std::string& name, const DatasetInfo& info) {
  return ModelRegistry::global().create(config_for(name), info);
}

std::set<std::string> parameter_names(const Model& model) {
  std::set<std::string> names;
  for (const auto& item : model.named_parameters()) names.insert(item.key());
  return names;
}

// Runs `fn`, expecting a ddp::Error of `kind`; returns its message ("" if none was thrown).
template <typename Fn>
std::string error_message(Fn&& fn, ErrorKind kind = ErrorKind::kInvalidArgument) {
  try {
    fn();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected ddp::Error, got: " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected ddp::Error, nothing was thrown";
  return "";
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST(ModelRegistry, BuiltinsAreRegistered) {
  const auto names = ModelRegistry::global().names();
  for (const char* builtin : {"mlp", "cnn", "transformer"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), builtin), names.end()) << builtin;
  }
}

TEST(Models, MlpForwardShapes) {
  torch::manual_seed(0);
  auto model = create("mlp", classification_info());
  EXPECT_EQ(model->forward(torch::randn({4, 64})).sizes().vec(), (std::vector<int64_t>{4, 10}));
  // Any input shape is flattened.
  auto regression = create("mlp", regression_info());
  EXPECT_EQ(regression->forward(torch::randn({5, 2, 3, 4})).sizes().vec(),
            (std::vector<int64_t>{5, 3}));
}

TEST(Models, CnnForwardShapes) {
  torch::manual_seed(0);
  auto model = create("cnn", image_info());
  EXPECT_EQ(model->forward(torch::randn({4, 1, 28, 28})).sizes().vec(),
            (std::vector<int64_t>{4, 10}));
  // Odd sizes floor through the pools: 3x13x9 -> 6x4 -> 3x2.
  auto odd = create("cnn", {Task::kRegression, {3, 13, 9}, 2});
  EXPECT_EQ(odd->forward(torch::randn({2, 3, 13, 9})).sizes().vec(),
            (std::vector<int64_t>{2, 2}));
}

TEST(Models, TransformerForwardShape) {
  torch::manual_seed(0);
  auto model = create("transformer", lm_info());
  auto tokens = torch::randint(0, 50, {2, 16}, torch::kLong);
  EXPECT_EQ(model->forward(tokens).sizes().vec(), (std::vector<int64_t>{2, 16, 50}));
  // Shorter sequences are fine; longer than the context is an error.
  EXPECT_EQ(model->forward(tokens.narrow(1, 0, 5)).sizes().vec(),
            (std::vector<int64_t>{2, 5, 50}));
  error_message([&] { model->forward(torch::randint(0, 50, {2, 17}, torch::kLong)); });
}

TEST(Models, MlpParameterNamesAreStable) {
  auto model = create("mlp", classification_info());  // hidden_sizes {256, 256}
  EXPECT_EQ(parameter_names(*model),
            (std::set<std::string>{"layers.0.weight", "layers.0.bias", "layers.1.weight",
                                   "layers.1.bias", "layers.2.weight", "layers.2.bias"}));
  EXPECT_EQ(model->named_parameters()["layers.0.weight"].sizes().vec(),
            (std::vector<int64_t>{256, 64}));
  EXPECT_EQ(model->named_parameters()["layers.2.weight"].sizes().vec(),
            (std::vector<int64_t>{10, 256}));
  // Dropout must not renumber the layers: the names are the checkpoint format.
  ModelConfig with_dropout = config_for("mlp");
  with_dropout.dropout = 0.5;
  auto dropped = ModelRegistry::global().create(with_dropout, classification_info());
  EXPECT_EQ(parameter_names(*dropped), parameter_names(*model));
}

TEST(Models, CnnParameterNamesAndBuffers) {
  auto model = create("cnn", image_info());  // channels {16, 32}
  const auto names = parameter_names(*model);
  for (const char* name : {"convs.0.weight", "convs.1.weight", "convs.1.bias", "norm.weight",
                           "norm.bias", "head.weight", "head.bias"}) {
    EXPECT_EQ(names.count(name), 1u) << name;
  }
  EXPECT_EQ(model->named_parameters()["head.weight"].sizes().vec(),
            (std::vector<int64_t>{10, 32 * 7 * 7}));

  std::set<std::string> buffers;
  for (const auto& item : model->named_buffers()) buffers.insert(item.key());
  EXPECT_EQ(buffers.count("norm.running_mean"), 1u);
  EXPECT_EQ(buffers.count("norm.running_var"), 1u);

  // A training forward updates the running statistics.
  const auto before = model->named_buffers()["norm.running_mean"].clone();
  model->train();
  model->forward(torch::randn({8, 1, 28, 28}) + 3.0);
  EXPECT_FALSE(torch::equal(before, model->named_buffers()["norm.running_mean"]));
}

TEST(Models, TransformerParameterNames) {
  auto model = create("transformer", lm_info());  // n_layers 2
  const auto names = parameter_names(*model);
  for (const char* name :
       {"tok_embedding.weight", "pos_embedding.weight", "blocks.0.ln1.weight",
        "blocks.0.attn.qkv.weight", "blocks.0.attn.out.bias", "blocks.1.ln2.bias",
        "blocks.1.mlp.fc1.weight", "blocks.1.mlp.fc2.bias", "norm.weight", "head.weight"}) {
    EXPECT_EQ(names.count(name), 1u) << name;
  }
  EXPECT_EQ(names.count("blocks.2.ln1.weight"), 0u);
  EXPECT_EQ(model->named_parameters()["blocks.0.attn.qkv.weight"].sizes().vec(),
            (std::vector<int64_t>{3 * 128, 128}));
  EXPECT_EQ(model->named_parameters()["pos_embedding.weight"].sizes().vec(),
            (std::vector<int64_t>{16, 128}));
  EXPECT_TRUE(model->named_buffers().is_empty());
}

TEST(Models, TransformerIsCausal) {
  torch::manual_seed(1);
  auto model = create("transformer", lm_info());
  model->eval();
  torch::NoGradGuard no_grad;
  const auto tokens = torch::randint(0, 50, {3, 16}, torch::kLong);
  const auto out = model->forward(tokens);
  for (int64_t t : {0, 5, 15}) {
    auto changed = tokens.clone();
    changed.select(1, t).add_(1).remainder_(50);
    const auto out2 = model->forward(changed);
    if (t > 0) {
      EXPECT_TRUE(torch::allclose(out.narrow(1, 0, t), out2.narrow(1, 0, t), 1e-5, 1e-6))
          << "position " << t << " leaked into earlier positions";
    }
    EXPECT_FALSE(torch::allclose(out.select(1, t), out2.select(1, t)))
        << "position " << t << " does not depend on its own token";
  }
}

TEST(ModelRegistry, UnknownNameListsNamesAndSuggests) {
  const std::string typo = error_message([] { create("mpl", classification_info()); });
  EXPECT_TRUE(contains(typo, "unknown model 'mpl'")) << typo;
  for (const char* name : {"cnn", "mlp", "transformer"}) {
    EXPECT_TRUE(contains(typo, name)) << typo;
  }
  EXPECT_TRUE(contains(typo, "did you mean 'mlp'")) << typo;

  const std::string long_typo = error_message([] { create("transfomer", lm_info()); });
  EXPECT_TRUE(contains(long_typo, "did you mean 'transformer'")) << long_typo;

  const std::string far = error_message([] { create("resnet152", image_info()); });
  EXPECT_TRUE(contains(far, "transformer")) << far;
  EXPECT_FALSE(contains(far, "did you mean")) << far;
}

TEST(ModelRegistry, TaskMismatchIsAnError) {
  const std::string flat_cnn = error_message([] { create("cnn", classification_info()); });
  EXPECT_TRUE(contains(flat_cnn, "model 'cnn'")) << flat_cnn;
  EXPECT_TRUE(contains(flat_cnn, "{C, H, W}")) << flat_cnn;
  EXPECT_TRUE(contains(flat_cnn, "[64]")) << flat_cnn;

  const std::string cnn_lm = error_message([] { create("cnn", {Task::kLanguageModel, {1, 8, 8}, 10}); });
  EXPECT_TRUE(contains(cnn_lm, "model 'cnn'")) << cnn_lm;

  const std::string lm_on_images = error_message([] { create("transformer", image_info()); });
  EXPECT_TRUE(contains(lm_on_images, "model 'transformer'")) << lm_on_images;
  EXPECT_TRUE(contains(lm_on_images, task_name(Task::kClassification))) << lm_on_images;

  const std::string mlp_on_tokens = error_message([] { create("mlp", lm_info()); });
  EXPECT_TRUE(contains(mlp_on_tokens, "model 'mlp'")) << mlp_on_tokens;

  // The CNN's pools need room: 3 blocks halve 4x4 to nothing.
  ModelConfig deep = config_for("cnn");
  deep.channels = {4, 4, 4};
  const std::string tiny = error_message(
      [&] { ModelRegistry::global().create(deep, {Task::kClassification, {1, 4, 4}, 2}); });
  EXPECT_TRUE(contains(tiny, ">= 8")) << tiny;
}

TEST(ModelRegistry, BadConfigValuesAreErrors) {
  ModelConfig heads = config_for("transformer");
  heads.n_heads = 3;  // 128 % 3 != 0
  const std::string message =
      error_message([&] { ModelRegistry::global().create(heads, lm_info()); });
  EXPECT_TRUE(contains(message, "128")) << message;
  EXPECT_TRUE(contains(message, "3")) << message;

  ModelConfig dropout = config_for("mlp");
  dropout.dropout = 1.0;
  error_message([&] { ModelRegistry::global().create(dropout, classification_info()); });

  error_message([] { create("mlp", {Task::kClassification, {64}, 0}); });
}

TEST(ModelRegistry, DuplicateRegistrationIsAnError) {
  const std::string message = error_message([] {
    ModelRegistry::global().add("mlp", [](const ModelConfig& m, const DatasetInfo& d) {
      return ModelRegistry::global().create(m, d);
    });
  });
  EXPECT_TRUE(contains(message, "'mlp' is already registered")) << message;
}

// A user-style model, registered at run time.
class Doubler final : public Model {
 public:
  torch::Tensor forward(const torch::Tensor& x) override { return x * 2; }
};

TEST(ModelRegistry, UserModelsCanBeAdded) {
  ModelRegistry::global().add("test_doubler", [](const ModelConfig&, const DatasetInfo&) {
    return std::make_shared<Doubler>();
  });
  const auto names = ModelRegistry::global().names();
  EXPECT_NE(std::find(names.begin(), names.end(), "test_doubler"), names.end());
  auto model = create("test_doubler", regression_info());
  EXPECT_TRUE(torch::equal(model->forward(torch::ones({2})), torch::full({2}, 2.0)));

  // A factory's own ddp::Error keeps its kind and gains the model's name.
  ModelRegistry::global().add("test_picky", [](const ModelConfig&, const DatasetInfo&)
                                                -> std::shared_ptr<Model> {
    throw Error(ErrorKind::kInvalidArgument, "needs width >= 1");
  });
  const std::string message = error_message([] { create("test_picky", regression_info()); });
  EXPECT_EQ(message, "model 'test_picky': needs width >= 1");
}

TEST(Loss, MatchesTorchFunctions) {
  namespace F = torch::nn::functional;
  torch::manual_seed(2);
  const auto logits = torch::randn({4, 5});
  const auto labels = torch::tensor({0, 4, 2, 2}, torch::kLong);
  EXPECT_TRUE(torch::allclose(compute_loss(Task::kClassification, logits, labels),
                              F::cross_entropy(logits, labels)));

  const auto predictions = torch::randn({4, 3});
  const auto targets = torch::randn({4, 3});
  const auto mse = compute_loss(Task::kRegression, predictions, targets);
  EXPECT_TRUE(torch::allclose(mse, (predictions - targets).pow(2).mean()));

  const auto lm_logits = torch::randn({2, 3, 7});
  const auto next_tokens = torch::randint(0, 7, {2, 3}, torch::kLong);
  const auto lm = compute_loss(Task::kLanguageModel, lm_logits, next_tokens);
  // Per-token negative log-likelihood, averaged by hand.
  const auto log_probs = torch::log_softmax(lm_logits, -1);
  const auto nll = -log_probs.gather(-1, next_tokens.unsqueeze(-1)).mean();
  EXPECT_TRUE(torch::allclose(lm, nll));
  EXPECT_EQ(lm.dim(), 0);

  // Shape mismatches name both shapes.
  const std::string message = error_message(
      [&] { compute_loss(Task::kRegression, predictions, torch::randn({4})); });
  EXPECT_TRUE(contains(message, "[4, 3]")) << message;
  EXPECT_TRUE(contains(message, "[4]")) << message;
}

// A few SGD steps on one tiny batch must reduce that batch's loss.
void expect_learns(const std::string& name, const DatasetInfo& info, const torch::Tensor& x,
                   const torch::Tensor& y, double lr) {
  auto model = create(name, info);
  model->train();
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(lr).momentum(0.9));
  const double first = compute_loss(info.task, model->forward(x), y).item<double>();
  double last = first;
  for (int step = 0; step < 15; ++step) {
    optimizer.zero_grad();
    auto loss = compute_loss(info.task, model->forward(x), y);
    loss.backward();
    optimizer.step();
    last = loss.item<double>();
  }
  last = compute_loss(info.task, model->forward(x), y).item<double>();
  EXPECT_LT(last, 0.7 * first) << name << ": loss " << first << " -> " << last;
}

TEST(Models, SgdReducesLoss) {
  torch::manual_seed(3);
  expect_learns("mlp", classification_info(), torch::randn({8, 64}),
                torch::randint(0, 10, {8}, torch::kLong), 0.05);
  expect_learns("mlp", regression_info(), torch::randn({8, 2, 3, 4}), torch::randn({8, 3}),
                0.01);
  expect_learns("cnn", image_info(), torch::randn({8, 1, 28, 28}),
                torch::randint(0, 10, {8}, torch::kLong), 0.05);
  const auto tokens = torch::randint(0, 50, {4, 17}, torch::kLong);
  expect_learns("transformer", lm_info(), tokens.narrow(1, 0, 16), tokens.narrow(1, 1, 16),
                0.05);
}

}  // namespace
}  // namespace ddp
