#include "runtime/zero_partition.h"

#include <algorithm>
#include <numeric>

#include "collectives/error.h"

namespace ddp {

std::vector<int> partition_parameters(const std::vector<int64_t>& numels, int world_size) {
  if (world_size < 1) throw Error(ErrorKind::kInvalidArgument, "partition: world_size < 1");
  std::vector<size_t> order(numels.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return numels[a] > numels[b]; });
  std::vector<int64_t> load(static_cast<size_t>(world_size), 0);
  std::vector<int> owner(numels.size(), 0);
  for (size_t i : order) {
    const auto r = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = static_cast<int>(r);
    load[r] += numels[i];
  }
  return owner;
}

std::vector<int64_t> owned_elements(const std::vector<int64_t>& numels,
                                    const std::vector<int>& owner, int world_size) {
  std::vector<int64_t> out(static_cast<size_t>(world_size), 0);
  for (size_t i = 0; i < numels.size(); ++i) out[static_cast<size_t>(owner[i])] += numels[i];
  return out;
}

}  // namespace ddp
