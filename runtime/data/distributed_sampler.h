// DistributedSampler with PyTorch's semantics (torch.utils.data.DistributedSampler):
//  - shuffle: a permutation of [0, N) drawn from a generator seeded with seed + epoch, the
//    same on every rank;
//  - drop_last = false: the permutation is padded by repeating its head to a multiple of the
//    world size; drop_last = true: its tail is cut to a multiple of the world size;
//  - rank r takes positions r, r + W, r + 2W, ... (a strided shard).
// So with world size W and per-rank batch B, the k-th global batch (the union over ranks of
// each rank's k-th batch) is the same set of samples as the k-th batch of one rank with batch
// W*B: N ranks x B follow the same trajectory as 1 rank x N*B.
//
// Thread-safety: const methods are thread-safe; set_epoch is not.
#pragma once

#include <cstdint>
#include <vector>

namespace ddp {

class DistributedSampler {
 public:
  // REQUIRES: 0 <= rank < world_size, dataset_size >= 0.
  DistributedSampler(int64_t dataset_size, int rank, int world_size, bool shuffle, int64_t seed,
                     bool drop_last);

  void set_epoch(int64_t epoch) { epoch_ = epoch; }
  int64_t epoch() const { return epoch_; }
  // Samples this rank sees per epoch.
  int64_t num_samples() const { return num_samples_; }
  // This rank's indices for the current epoch, in order.
  std::vector<int64_t> indices() const;

 private:
  int64_t dataset_size_;
  int rank_;
  int world_size_;
  bool shuffle_;
  int64_t seed_;
  bool drop_last_;
  int64_t epoch_ = 0;
  int64_t num_samples_ = 0;
};

}  // namespace ddp
