#include "runtime/data/distributed_sampler.h"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include "collectives/error.h"

namespace ddp {

DistributedSampler::DistributedSampler(int64_t dataset_size, int rank, int world_size,
                                       bool shuffle, int64_t seed, bool drop_last)
    : dataset_size_(dataset_size),
      rank_(rank),
      world_size_(world_size),
      shuffle_(shuffle),
      seed_(seed),
      drop_last_(drop_last) {
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("DistributedSampler: rank {} is outside world of size {}", rank,
                            world_size));
  }
  if (dataset_size < 0) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("DistributedSampler: dataset size {} is negative", dataset_size));
  }
  const int64_t n = dataset_size_;
  const int64_t w = world_size_;
  // PyTorch: drop_last and N % W != 0 -> ceil((N - W) / W), else ceil(N / W). For N >= W the
  // first is floor(N / W); for N < W it is ceil of a value in (-1, 0), i.e. 0. Either way the
  // drop_last branch equals floor(N / W), also when N % W == 0.
  num_samples_ = drop_last_ ? n / w : (n + w - 1) / w;
}

std::vector<int64_t> DistributedSampler::indices() const {
  const int64_t n = dataset_size_;
  const int64_t w = world_size_;
  const int64_t total = num_samples_ * w;
  if (total == 0) return {};

  // The global order, identical on every rank: same seed + epoch, same generator.
  std::vector<int64_t> order(static_cast<size_t>(n));
  if (shuffle_) {
    auto generator = at::detail::createCPUGenerator(static_cast<uint64_t>(seed_ + epoch_));
    const torch::Tensor perm = torch::randperm(n, generator, torch::kLong).contiguous();
    const int64_t* p = perm.data_ptr<int64_t>();
    std::copy(p, p + n, order.begin());
  } else {
    for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  }

  // Pad by cycling through the whole list (PyTorch repeats it as often as needed when the
  // padding is longer than the list, i.e. N < W - N), or cut the tail. Position p of the
  // padded list is order[p % N]; total > 0 implies N > 0.
  std::vector<int64_t> mine;
  mine.reserve(static_cast<size_t>(num_samples_));
  for (int64_t pos = rank_; pos < total; pos += w) {
    mine.push_back(order[static_cast<size_t>(pos % n)]);
  }
  return mine;
}

}  // namespace ddp
