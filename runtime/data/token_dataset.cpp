// Language-model data from a flat token file (data.path): little-endian uint16 token ids, as
// written by numpy's tokens.astype('<u2').tofile(path).
//
// Sample i is the window tokens[i*T, i*T + T] (T + 1 tokens, T = data.seq_len): x is its first
// T tokens, y its last T (x shifted by one). Windows overlap by one token, so every token is
// predicted exactly once; N = (num_tokens - 1) / T. The vocabulary size is max token + 1 over
// train and validation. Validation: data.val_path, else the last data.val_fraction of samples.
//
// Tokens stay in one flat int32 tensor shared by both splits; get() gathers windows on the fly.
#include <algorithm>

#include <fmt/format.h>
#include <torch/torch.h>

#include "collectives/error.h"
#include "runtime/data/dataset.h"

namespace ddp {
namespace data_internal {
// Defined in make_datasets.cpp.
std::string read_data_file(const std::string& path);
int64_t val_count(int64_t n, double val_fraction);
}  // namespace data_internal

namespace {

class TokenDataset final : public Dataset {
 public:
  // Samples [first, first + count) of `tokens` (int32 [num_tokens]).
  TokenDataset(torch::Tensor tokens, int64_t seq_len, int64_t first, int64_t count,
               DatasetInfo info)
      : tokens_(std::move(tokens)),
        seq_len_(seq_len),
        first_(first),
        count_(count),
        info_(std::move(info)) {}

  int64_t size() const override { return count_; }
  const DatasetInfo& info() const override { return info_; }

  Batch get(const std::vector<int64_t>& indices) const override {
    const auto b = static_cast<int64_t>(indices.size());
    std::vector<int64_t> starts(indices.size());
    for (size_t i = 0; i < indices.size(); ++i) {
      if (indices[i] < 0 || indices[i] >= count_) {
        throw Error(ErrorKind::kInternal,
                    fmt::format("TokenDataset::get: index {} outside [0, {})", indices[i], count_));
      }
      starts[i] = (first_ + indices[i]) * seq_len_;
    }
    if (b == 0) {
      const torch::Tensor empty = torch::empty({0, seq_len_}, torch::kLong);
      return Batch{empty, empty.clone()};
    }
    const torch::Tensor offsets =
        torch::from_blob(starts.data(), {b, 1}, torch::kLong) +
        torch::arange(seq_len_ + 1, torch::kLong).unsqueeze(0);  // [B, T + 1], a new tensor
    const torch::Tensor windows =
        tokens_.index_select(0, offsets.reshape({-1})).reshape({b, seq_len_ + 1}).to(torch::kLong);
    return Batch{windows.narrow(1, 0, seq_len_).contiguous(),
                 windows.narrow(1, 1, seq_len_).contiguous()};
  }

 private:
  torch::Tensor tokens_;
  int64_t seq_len_;
  int64_t first_;
  int64_t count_;
  DatasetInfo info_;
};

struct TokenFile {
  torch::Tensor tokens;  // int32 [num_tokens]
  int64_t num_samples = 0;
  int64_t max_token = 0;
};

TokenFile read_tokens(const std::string& path, int64_t seq_len) {
  const std::string bytes = data_internal::read_data_file(path);
  if (bytes.size() % 2 != 0) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("token file '{}' has {} bytes, an odd number; expected "
                            "little-endian uint16 tokens",
                            path, bytes.size()));
  }
  const auto n = static_cast<int64_t>(bytes.size() / 2);
  if (n < seq_len + 1) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("token file '{}' has {} tokens; data.seq_len = {} needs at least {}",
                            path, n, seq_len, seq_len + 1));
  }
  TokenFile file;
  file.tokens = torch::empty({n}, torch::kInt);
  int32_t* out = file.tokens.data_ptr<int32_t>();
  const auto* in = reinterpret_cast<const unsigned char*>(bytes.data());
  int32_t max_token = 0;
  for (int64_t i = 0; i < n; ++i) {
    out[i] = static_cast<int32_t>(in[2 * i]) | (static_cast<int32_t>(in[2 * i + 1]) << 8);
    max_token = std::max(max_token, out[i]);
  }
  file.max_token = max_token;
  file.num_samples = (n - 1) / seq_len;
  return file;
}

}  // namespace

// Declared in make_datasets.cpp.
DataSplits make_token_datasets(const DataConfig& config) {
  if (config.path.empty()) {
    throw Error(ErrorKind::kInvalidArgument,
                "data.path (the token file) is required for data.name = 'tokens'");
  }
  if (config.seq_len <= 0) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("data.seq_len must be positive, got {}", config.seq_len));
  }
  const int64_t t = config.seq_len;
  const TokenFile train = read_tokens(config.path, t);
  DatasetInfo info;
  info.task = Task::kLanguageModel;
  info.input_shape = {t};

  if (config.val_path.empty()) {
    const int64_t n_val = data_internal::val_count(train.num_samples, config.val_fraction);
    const int64_t n_train = train.num_samples - n_val;
    if (n_train <= 0) {
      throw Error(ErrorKind::kInvalidArgument,
                  fmt::format("token file '{}': {} samples of data.seq_len = {} leave no "
                              "training data after holding out data.val_fraction = {}",
                              config.path, train.num_samples, t, config.val_fraction));
    }
    info.num_outputs = train.max_token + 1;
    return DataSplits{std::make_shared<TokenDataset>(train.tokens, t, 0, n_train, info),
                      std::make_shared<TokenDataset>(train.tokens, t, n_train, n_val, info)};
  }

  const TokenFile val = read_tokens(config.val_path, t);
  info.num_outputs = std::max(train.max_token, val.max_token) + 1;
  return DataSplits{
      std::make_shared<TokenDataset>(train.tokens, t, 0, train.num_samples, info),
      std::make_shared<TokenDataset>(val.tokens, t, 0, val.num_samples, info)};
}

}  // namespace ddp
