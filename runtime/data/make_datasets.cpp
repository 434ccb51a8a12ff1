// make_datasets(): the one entry point from config to data, plus the helpers that the
// file-backed loaders share (reading a file, splitting off a validation tail).
//
// runtime/data has no internal header: the loaders and helpers below are declared here and,
// for the helpers, again in each loader's .cpp, in namespace ddp::data_internal.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>
#include <torch/torch.h>

#include "collectives/error.h"
#include "runtime/data/dataset.h"

namespace ddp {

// Loaders, one per file.
DataSplits make_synthetic_classification(const DataConfig& config, int64_t seed);  // synthetic.cpp
DataSplits make_synthetic_regression(const DataConfig& config, int64_t seed);      // synthetic.cpp
DataSplits make_csv_datasets(const DataConfig& config);                              // csv_dataset.cpp
DataSplits make_mnist_datasets(const DataConfig& config);                          // mnist_dataset.cpp
DataSplits make_token_datasets(const DataConfig& config);                          // token_dataset.cpp

namespace data_internal {

std::string read_data_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    throw Error(ErrorKind::kNotFound, fmt::format("data file '{}' does not exist", path));
  }
  if (std::filesystem::is_directory(path, ec)) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("data file '{}' is a directory, expected a file", path));
  }
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    const int err = errno;
    throw Error(err == ENOENT ? ErrorKind::kNotFound : ErrorKind::kIOError,
                fmt::format("cannot open data file '{}': {}", path, std::strerror(err)));
  }
  std::string bytes;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) bytes.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  const int err = errno;
  std::fclose(f);
  if (failed) {
    throw Error(ErrorKind::kIOError,
                fmt::format("cannot read data file '{}': {}", path, std::strerror(err)));
  }
  return bytes;
}

// floor(n * val_fraction), forgiving the rounding of products like 100 * 0.57 = 56.999...
int64_t val_count(int64_t n, double val_fraction) {
  return static_cast<int64_t>(static_cast<double>(n) * val_fraction + 1e-9);
}

DataSplits split_tail(const torch::Tensor& x, const torch::Tensor& y, const DatasetInfo& info,
                      double val_fraction, const std::string& source) {
  const int64_t n = x.size(0);
  const int64_t n_val = val_count(n, val_fraction);
  const int64_t n_train = n - n_val;
  if (n_train <= 0) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("'{}': {} samples leave no training data after holding out "
                            "data.val_fraction = {} for validation",
                            source, n, val_fraction));
  }
  // narrow() views share storage with x and y; clone so each split owns only its rows.
  return DataSplits{
      std::make_shared<TensorDataset>(x.narrow(0, 0, n_train).clone(),
                                      y.narrow(0, 0, n_train).clone(), info),
      std::make_shared<TensorDataset>(x.narrow(0, n_train, n_val).clone(),
                                      y.narrow(0, n_train, n_val).clone(), info)};
}

}  // namespace data_internal

DataSplits make_datasets(const DataConfig& config, int64_t seed) {
  if (!(config.val_fraction >= 0.0 && config.val_fraction < 1.0)) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("data.val_fraction must be in [0, 1), got {}", config.val_fraction));
  }
  const std::string& name = config.name;
  if (name == "synthetic_classification") return make_synthetic_classification(config, seed);
  if (name == "synthetic_regression") return make_synthetic_regression(config, seed);
  if (name == "csv") return make_csv_datasets(config);
  if (name == "mnist") return make_mnist_datasets(config);
  if (name == "tokens") return make_token_datasets(config);
  throw Error(ErrorKind::kInvalidArgument,
              fmt::format("unknown dataset data.name = '{}'; valid: synthetic_classification, "
                          "synthetic_regression, csv, mnist, tokens",
                          name));
}

}  // namespace ddp
