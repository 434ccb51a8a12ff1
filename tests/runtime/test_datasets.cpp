// Built-in datasets: synthetic determinism and learnability, CSV / MNIST / token parsing and
// every malformed-input error (kind, and a message naming the file and the place).
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "collectives/error.h"
#include "runtime/data/dataset.h"
#include "tests/test_util.h"

namespace ddp {
namespace {

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// Runs fn, which must throw ddp::Error of `kind` whose message contains every needle.
void expect_error(const std::function<void()>& fn, ErrorKind kind,
                  const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "expected ddp::Error(" << error_kind_name(kind) << "), nothing thrown";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    for (const std::string& needle : needles) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
          << "message lacks '" << needle << "': " << e.what();
    }
  }
}

std::vector<int64_t> iota(int64_t n) {
  std::vector<int64_t> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = i;
  return v;
}

Batch all_of(const Dataset& d) { return d.get(iota(d.size())); }

// ---------------------------------------------------------------------------- synthetic

DataConfig small_classification() {
  DataConfig c;
  c.name = "synthetic_classification";
  c.num_samples = 600;
  c.val_samples = 200;
  c.num_features = 16;
  c.num_classes = 5;
  return c;
}

TEST(SyntheticClassification, ShapesAndLabelRange) {
  const DataSplits d = make_datasets(small_classification(), 1);
  ASSERT_EQ(d.train->size(), 600);
  ASSERT_EQ(d.val->size(), 200);
  EXPECT_EQ(d.train->info().task, Task::kClassification);
  EXPECT_EQ(d.train->info().input_shape, std::vector<int64_t>{16});
  EXPECT_EQ(d.train->info().num_outputs, 5);
  const Batch b = all_of(*d.train);
  EXPECT_EQ(b.x.sizes(), (std::vector<int64_t>{600, 16}));
  EXPECT_EQ(b.x.scalar_type(), torch::kFloat);
  EXPECT_EQ(b.y.sizes(), (std::vector<int64_t>{600}));
  EXPECT_EQ(b.y.scalar_type(), torch::kLong);
  EXPECT_GE(b.y.min().item<int64_t>(), 0);
  EXPECT_LT(b.y.max().item<int64_t>(), 5);
  // Every class is present (the teacher's logits are centred).
  const torch::Tensor counts = torch::bincount(b.y, {}, 5);
  EXPECT_GT(counts.min().item<int64_t>(), 600 / 5 / 5) << counts;
}

TEST(SyntheticClassification, DeterministicFromTheSeed) {
  const DataSplits a = make_datasets(small_classification(), 7);
  const DataSplits b = make_datasets(small_classification(), 7);
  const DataSplits c = make_datasets(small_classification(), 8);
  EXPECT_TRUE(torch::equal(all_of(*a.train).x, all_of(*b.train).x));
  EXPECT_TRUE(torch::equal(all_of(*a.train).y, all_of(*b.train).y));
  EXPECT_TRUE(torch::equal(all_of(*a.val).x, all_of(*b.val).x));
  EXPECT_TRUE(torch::equal(all_of(*a.val).y, all_of(*b.val).y));
  EXPECT_FALSE(torch::equal(all_of(*a.train).x, all_of(*c.train).x));
  EXPECT_FALSE(torch::equal(all_of(*a.train).y, all_of(*c.train).y));
  // Train and validation are different draws.
  EXPECT_FALSE(torch::equal(all_of(*a.train).x.narrow(0, 0, 200), all_of(*a.val).x));
}

TEST(SyntheticClassification, GetGathersRows) {
  const DataSplits d = make_datasets(small_classification(), 3);
  const Batch all = all_of(*d.train);
  const Batch some = d.train->get({5, 0, 5, 599});
  ASSERT_EQ(some.x.size(0), 4);
  EXPECT_TRUE(torch::equal(some.x[0], all.x[5]));
  EXPECT_TRUE(torch::equal(some.x[1], all.x[0]));
  EXPECT_TRUE(torch::equal(some.x[3], all.x[599]));
  EXPECT_EQ(some.y[2].item<int64_t>(), all.y[5].item<int64_t>());
  EXPECT_EQ(d.train->get({}).x.size(0), 0);
  EXPECT_THROW(d.train->get({600}), Error);
}

TEST(SyntheticClassification, IsLearnable) {
  // The defaults' shape (64 features, 10 classes); a small MLP must beat chance (10%) clearly
  // on the validation set (it reaches ~0.68 here; a bound of 4x chance leaves room for other
  // LibTorch versions' RNG and kernels).
  DataConfig config;
  config.num_samples = 4096;
  config.val_samples = 1024;
  const DataSplits d = make_datasets(config, 42);
  const Batch train = all_of(*d.train);
  const Batch val = all_of(*d.val);
  torch::manual_seed(0);
  torch::nn::Sequential mlp(torch::nn::Linear(64, 128), torch::nn::ReLU(),
                            torch::nn::Linear(128, 10));
  torch::optim::Adam opt(mlp->parameters(), torch::optim::AdamOptions(3e-3));
  for (int step = 0; step < 300; ++step) {
    const torch::Tensor idx = torch::randint(train.x.size(0), {256}, torch::kLong);
    opt.zero_grad();
    torch::nn::functional::cross_entropy(mlp->forward(train.x.index_select(0, idx)),
                                         train.y.index_select(0, idx))
        .backward();
    opt.step();
  }
  torch::NoGradGuard no_grad;
  const double acc =
      mlp->forward(val.x).argmax(1).eq(val.y).to(torch::kDouble).mean().item<double>();
  EXPECT_GT(acc, 0.4) << "validation accuracy " << acc;
}

TEST(SyntheticRegression, ShapesDeterminismAndNoiseLevel) {
  DataConfig config;
  config.name = "synthetic_regression";
  config.num_samples = 2000;
  config.val_samples = 500;
  config.num_features = 8;
  config.noise = 0.1;
  const DataSplits a = make_datasets(config, 5);
  const DataSplits b = make_datasets(config, 5);
  EXPECT_EQ(a.train->info().task, Task::kRegression);
  EXPECT_EQ(a.train->info().num_outputs, 1);
  const Batch t = all_of(*a.train);
  EXPECT_EQ(t.x.sizes(), (std::vector<int64_t>{2000, 8}));
  EXPECT_EQ(t.y.sizes(), (std::vector<int64_t>{2000, 1}));
  EXPECT_EQ(t.y.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(t.y, all_of(*b.train).y));
  EXPECT_FALSE(torch::equal(t.y, all_of(*make_datasets(config, 6).train).y));
  // y is linear in x up to the noise: least squares leaves residuals of std ~ noise.
  const torch::Tensor x = t.x.to(torch::kDouble);
  const torch::Tensor y = t.y.to(torch::kDouble);
  const torch::Tensor w = torch::linalg_solve(x.t().matmul(x), x.t().matmul(y));
  const double residual = (x.matmul(w) - y).std().item<double>();
  EXPECT_NEAR(residual, 0.1, 0.02);
  EXPECT_GT(y.std().item<double>(), 0.5);
}

TEST(SyntheticDatasets, RejectBadConfig) {
  DataConfig c = small_classification();
  c.num_classes = 1;
  expect_error([&] { make_datasets(c, 0); }, ErrorKind::kInvalidArgument, {"num_classes"});
  c = small_classification();
  c.num_features = 0;
  expect_error([&] { make_datasets(c, 0); }, ErrorKind::kInvalidArgument, {"num_features"});
}

TEST(MakeDatasets, UnknownNameListsTheValidOnes) {
  DataConfig c;
  c.name = "imagenet";
  expect_error([&] { make_datasets(c, 0); }, ErrorKind::kInvalidArgument,
               {"imagenet", "synthetic_classification", "csv", "mnist", "tokens"});
  c = DataConfig();
  c.val_fraction = 1.0;
  expect_error([&] { make_datasets(c, 0); }, ErrorKind::kInvalidArgument, {"val_fraction"});
}

// ---------------------------------------------------------------------------------- csv

DataConfig csv_config(const std::string& path) {
  DataConfig c;
  c.name = "csv";
  c.path = path;
  c.val_fraction = 0.25;
  return c;
}

TEST(CsvDataset, ClassificationWithLastColumnLabel) {
  const std::string dir = test::temp_dir("csv_ok");
  const std::string path = dir + "/train.csv";
  write_file(path, "f1,f2,label\n1,2,0\n3.5,-4,2\r\n\n5,6e-1,1\n7,8,0\n");
  const DataSplits d = make_datasets(csv_config(path), 0);
  EXPECT_EQ(d.train->info().task, Task::kClassification);
  EXPECT_EQ(d.train->info().input_shape, std::vector<int64_t>{2});
  EXPECT_EQ(d.train->info().num_outputs, 3);
  ASSERT_EQ(d.train->size(), 3);  // 4 rows, the last quarter held out
  ASSERT_EQ(d.val->size(), 1);
  const Batch t = all_of(*d.train);
  EXPECT_TRUE(torch::equal(t.x, torch::tensor({1.f, 2.f, 3.5f, -4.f, 5.f, 0.6f}).reshape({3, 2})));
  EXPECT_TRUE(torch::equal(t.y, torch::tensor({0, 2, 1}, torch::kLong)));
  const Batch v = all_of(*d.val);
  EXPECT_TRUE(torch::equal(v.x, torch::tensor({7.f, 8.f}).reshape({1, 2})));
  EXPECT_EQ(v.y.item<int64_t>(), 0);
}

TEST(CsvDataset, NamedLabelColumnRegressionAndValPath) {
  const std::string dir = test::temp_dir("csv_reg");
  write_file(dir + "/train.csv", "a, target ,b\n1,0.5,2\n3,-1.25,4\n");
  write_file(dir + "/val.csv", "a,target,b\n5,2.5,6\n");
  DataConfig c = csv_config(dir + "/train.csv");
  c.val_path = dir + "/val.csv";
  c.task = "regression";
  c.label_column = "target";
  const DataSplits d = make_datasets(c, 0);
  EXPECT_EQ(d.train->info().task, Task::kRegression);
  EXPECT_EQ(d.train->info().num_outputs, 1);
  ASSERT_EQ(d.train->size(), 2);
  ASSERT_EQ(d.val->size(), 1);
  const Batch t = all_of(*d.train);
  EXPECT_TRUE(torch::equal(t.x, torch::tensor({1.f, 2.f, 3.f, 4.f}).reshape({2, 2})));
  EXPECT_TRUE(torch::equal(t.y, torch::tensor({0.5f, -1.25f}).reshape({2, 1})));
  const Batch v = all_of(*d.val);
  EXPECT_TRUE(torch::equal(v.x, torch::tensor({5.f, 6.f}).reshape({1, 2})));
  EXPECT_TRUE(torch::equal(v.y, torch::tensor({2.5f}).reshape({1, 1})));
}

TEST(CsvDataset, Errors) {
  const std::string dir = test::temp_dir("csv_err");
  const std::string missing = dir + "/missing.csv";
  expect_error([&] { make_datasets(csv_config(missing), 0); }, ErrorKind::kNotFound, {missing});

  const std::string bad_cell = dir + "/bad_cell.csv";
  write_file(bad_cell, "x,y,label\n1,2,0\n3,abc,1\n");
  expect_error([&] { make_datasets(csv_config(bad_cell), 0); }, ErrorKind::kInvalidArgument,
               {bad_cell, "line 3", "column 2", "'y'", "abc"});

  const std::string empty_cell = dir + "/empty_cell.csv";
  write_file(empty_cell, "x,y,label\n1,,0\n");
  expect_error([&] { make_datasets(csv_config(empty_cell), 0); }, ErrorKind::kInvalidArgument,
               {empty_cell, "line 2", "column 2"});

  const std::string ragged = dir + "/ragged.csv";
  write_file(ragged, "x,y,label\n1,2,0\n3,4,1\n5,6\n");
  expect_error([&] { make_datasets(csv_config(ragged), 0); }, ErrorKind::kInvalidArgument,
               {ragged, "line 4", "2 columns", "header has 3"});

  const std::string ok = dir + "/ok.csv";
  write_file(ok, "x,y,label\n1,2,0\n3,4,1\n5,6,1\n7,8,0\n");
  DataConfig c = csv_config(ok);
  c.label_column = "klass";
  expect_error([&] { make_datasets(c, 0); }, ErrorKind::kInvalidArgument,
               {ok, "line 1", "klass", "x, y, label"});

  const std::string fractional = dir + "/fractional.csv";
  write_file(fractional, "x,label\n1,0\n2,1.5\n");
  expect_error([&] { make_datasets(csv_config(fractional), 0); }, ErrorKind::kInvalidArgument,
               {fractional, "line 3", "column 2", "1.5"});

  const std::string negative = dir + "/negative.csv";
  write_file(negative, "x,label\n1,-1\n");
  expect_error([&] { make_datasets(csv_config(negative), 0); }, ErrorKind::kInvalidArgument,
               {negative, "line 2", "-1"});

  const std::string empty = dir + "/empty.csv";
  write_file(empty, "");
  expect_error([&] { make_datasets(csv_config(empty), 0); }, ErrorKind::kInvalidArgument,
               {empty, "header"});

  const std::string header_only = dir + "/header_only.csv";
  write_file(header_only, "x,label\n");
  expect_error([&] { make_datasets(csv_config(header_only), 0); },
               ErrorKind::kInvalidArgument, {header_only});

  c = csv_config(ok);
  c.val_path = dir + "/other_header.csv";
  write_file(c.val_path, "x,z,label\n1,2,0\n");
  expect_error([&] { make_datasets(c, 0); }, ErrorKind::kInvalidArgument, {c.val_path, ok});

  c = csv_config(ok);
  c.task = "ranking";
  expect_error([&] { make_datasets(c, 0); }, ErrorKind::kInvalidArgument, {"ranking"});
}

// -------------------------------------------------------------------------------- mnist

std::string be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
          static_cast<char>(v)};
}

// n images of 28x28; image i has pixel (r, c) = (i * 50 + r + c) % 256.
std::string idx_images(uint32_t n, uint32_t magic = 2051) {
  std::string s = be32(magic) + be32(n) + be32(28) + be32(28);
  for (uint32_t i = 0; i < n; ++i) {
    for (uint32_t r = 0; r < 28; ++r) {
      for (uint32_t c = 0; c < 28; ++c) s.push_back(static_cast<char>((i * 50 + r + c) % 256));
    }
  }
  return s;
}

std::string idx_labels(const std::vector<uint8_t>& labels, uint32_t magic = 2049) {
  std::string s = be32(magic) + be32(static_cast<uint32_t>(labels.size()));
  for (uint8_t l : labels) s.push_back(static_cast<char>(l));
  return s;
}

float normalised(int pixel) { return (pixel / 255.0f - 0.1307f) / 0.3081f; }

DataConfig mnist_config(const std::string& dir) {
  DataConfig c;
  c.name = "mnist";
  c.path = dir;
  return c;
}

TEST(MnistDataset, ReadsTrainAndT10k) {
  const std::string dir = test::temp_dir("mnist_ok");
  write_file(dir + "/train-images-idx3-ubyte", idx_images(3));
  write_file(dir + "/train-labels-idx1-ubyte", idx_labels({7, 0, 9}));
  write_file(dir + "/t10k-images-idx3-ubyte", idx_images(2));
  write_file(dir + "/t10k-labels-idx1-ubyte", idx_labels({1, 2}));
  const DataSplits d = make_datasets(mnist_config(dir), 0);
  EXPECT_EQ(d.train->info().task, Task::kClassification);
  EXPECT_EQ(d.train->info().input_shape, (std::vector<int64_t>{1, 28, 28}));
  EXPECT_EQ(d.train->info().num_outputs, 10);
  ASSERT_EQ(d.train->size(), 3);
  ASSERT_EQ(d.val->size(), 2);
  const Batch t = all_of(*d.train);
  EXPECT_EQ(t.x.sizes(), (std::vector<int64_t>{3, 1, 28, 28}));
  EXPECT_EQ(t.x.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(t.y, torch::tensor({7, 0, 9}, torch::kLong)));
  EXPECT_FLOAT_EQ(t.x[0][0][0][0].item<float>(), normalised(0));
  EXPECT_FLOAT_EQ(t.x[2][0][3][4].item<float>(), normalised(107));
  EXPECT_FLOAT_EQ(t.x[2][0][27][27].item<float>(), normalised(154));
  const Batch v = all_of(*d.val);
  EXPECT_TRUE(torch::equal(v.y, torch::tensor({1, 2}, torch::kLong)));
  EXPECT_FLOAT_EQ(v.x[1][0][0][1].item<float>(), normalised(51));
}

TEST(MnistDataset, SplitsTrainWithoutT10k) {
  const std::string dir = test::temp_dir("mnist_split");
  write_file(dir + "/train-images-idx3-ubyte", idx_images(4));
  write_file(dir + "/train-labels-idx1-ubyte", idx_labels({1, 2, 3, 4}));
  DataConfig c = mnist_config(dir);
  c.val_fraction = 0.25;
  const DataSplits d = make_datasets(c, 0);
  ASSERT_EQ(d.train->size(), 3);
  ASSERT_EQ(d.val->size(), 1);
  EXPECT_EQ(all_of(*d.val).y.item<int64_t>(), 4);
}

TEST(MnistDataset, Errors) {
  const std::string dir = test::temp_dir("mnist_err");
  const std::string images = dir + "/train-images-idx3-ubyte";
  const std::string labels = dir + "/train-labels-idx1-ubyte";
  expect_error([&] { make_datasets(mnist_config(dir), 0); }, ErrorKind::kNotFound, {images});
  expect_error([&] { make_datasets(mnist_config(dir + "/nope"), 0); }, ErrorKind::kNotFound,
               {dir + "/nope"});

  write_file(images, idx_images(3, /*magic=*/2049));
  write_file(labels, idx_labels({1, 2, 3}));
  expect_error([&] { make_datasets(mnist_config(dir), 0); }, ErrorKind::kInvalidArgument,
               {images, "magic", "2049", "2051"});

  write_file(images, idx_images(3));
  write_file(labels, idx_labels({1, 2, 3}, /*magic=*/2051));
  expect_error([&] { make_datasets(mnist_config(dir), 0); }, ErrorKind::kInvalidArgument,
               {labels, "magic"});

  write_file(images, idx_images(3).substr(0, 16 + 2 * 784 + 10));  // truncated
  write_file(labels, idx_labels({1, 2, 3}));
  expect_error([&] { make_datasets(mnist_config(dir), 0); }, ErrorKind::kInvalidArgument,
               {images, "1594 bytes", "3 x 28 x 28", "2368"});

  write_file(images, std::string("\x1f\x8b\x08\x08", 4) + std::string(40, 'z'));
  expect_error([&] { make_datasets(mnist_config(dir), 0); }, ErrorKind::kInvalidArgument,
               {images, "gzip"});

  write_file(images, idx_images(3));
  write_file(labels, idx_labels({1, 2}));
  expect_error([&] { make_datasets(mnist_config(dir), 0); }, ErrorKind::kInvalidArgument,
               {images, "3 images", labels, "2 labels"});

  write_file(labels, idx_labels({1, 12, 3}));
  expect_error([&] { make_datasets(mnist_config(dir), 0); }, ErrorKind::kInvalidArgument,
               {labels, "label 12", "offset 9"});

  write_file(labels, idx_labels({1, 2, 3}));
  write_file(dir + "/t10k-images-idx3-ubyte", idx_images(1));
  expect_error([&] { make_datasets(mnist_config(dir), 0); }, ErrorKind::kNotFound,
               {dir + "/t10k-labels-idx1-ubyte"});
}

// ------------------------------------------------------------------------------- tokens

std::string u16le(const std::vector<int>& tokens) {
  std::string s;
  for (int t : tokens) {
    s.push_back(static_cast<char>(t & 0xff));
    s.push_back(static_cast<char>((t >> 8) & 0xff));
  }
  return s;
}

DataConfig token_config(const std::string& path, int64_t seq_len) {
  DataConfig c;
  c.name = "tokens";
  c.path = path;
  c.seq_len = seq_len;
  return c;
}

TEST(TokenDataset, WindowsShiftByOne) {
  const std::string dir = test::temp_dir("tokens_ok");
  const std::string path = dir + "/train.bin";
  // 22 tokens, token i = 300 * i (exercises the high byte); T = 4 -> N = 21 / 4 = 5.
  std::vector<int> tokens;
  for (int i = 0; i < 22; ++i) tokens.push_back(300 * i);
  write_file(path, u16le(tokens));
  DataConfig c = token_config(path, 4);
  c.val_fraction = 0.2;
  const DataSplits d = make_datasets(c, 0);
  EXPECT_EQ(d.train->info().task, Task::kLanguageModel);
  EXPECT_EQ(d.train->info().input_shape, std::vector<int64_t>{4});
  EXPECT_EQ(d.train->info().num_outputs, 300 * 21 + 1);
  ASSERT_EQ(d.train->size(), 4);
  ASSERT_EQ(d.val->size(), 1);
  auto row = [](int first) {
    std::vector<int64_t> r;
    for (int i = first; i < first + 4; ++i) r.push_back(300 * i);
    return torch::tensor(r, torch::kLong);
  };
  const Batch b = d.train->get({2, 0});
  EXPECT_EQ(b.x.sizes(), (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(b.x.scalar_type(), torch::kLong);
  EXPECT_TRUE(torch::equal(b.x[0], row(8)));
  EXPECT_TRUE(torch::equal(b.y[0], row(9)));
  EXPECT_TRUE(torch::equal(b.x[1], row(0)));
  EXPECT_TRUE(torch::equal(b.y[1], row(1)));
  const Batch v = d.val->get({0});
  EXPECT_TRUE(torch::equal(v.x[0], row(16)));
  EXPECT_TRUE(torch::equal(v.y[0], row(17)));
  EXPECT_THROW(d.val->get({1}), Error);
}

TEST(TokenDataset, SeparateValFile) {
  const std::string dir = test::temp_dir("tokens_val");
  write_file(dir + "/train.bin", u16le({1, 2, 3, 4, 5, 6, 7}));
  write_file(dir + "/val.bin", u16le({9, 65535, 8}));
  DataConfig c = token_config(dir + "/train.bin", 2);
  c.val_path = dir + "/val.bin";
  const DataSplits d = make_datasets(c, 0);
  EXPECT_EQ(d.train->size(), 3);
  EXPECT_EQ(d.val->size(), 1);
  EXPECT_EQ(d.train->info().num_outputs, 65536);
  const Batch v = all_of(*d.val);
  EXPECT_TRUE(torch::equal(v.x, torch::tensor({9, 65535}, torch::kLong).reshape({1, 2})));
  EXPECT_TRUE(torch::equal(v.y, torch::tensor({65535, 8}, torch::kLong).reshape({1, 2})));
}

TEST(TokenDataset, Errors) {
  const std::string dir = test::temp_dir("tokens_err");
  const std::string missing = dir + "/missing.bin";
  expect_error([&] { make_datasets(token_config(missing, 4), 0); }, ErrorKind::kNotFound,
               {missing});
  const std::string odd = dir + "/odd.bin";
  write_file(odd, u16le({1, 2, 3, 4, 5, 6}) + "x");
  expect_error([&] { make_datasets(token_config(odd, 2), 0); }, ErrorKind::kInvalidArgument,
               {odd, "13 bytes", "odd"});
  const std::string short_file = dir + "/short.bin";
  write_file(short_file, u16le({1, 2, 3, 4}));
  expect_error([&] { make_datasets(token_config(short_file, 4), 0); },
               ErrorKind::kInvalidArgument, {short_file, "4 tokens", "at least 5"});
  expect_error([&] { make_datasets(token_config(short_file, 0), 0); },
               ErrorKind::kInvalidArgument, {"seq_len"});
}

}  // namespace
}  // namespace ddp
