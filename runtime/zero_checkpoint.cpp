#include "runtime/zero_checkpoint.h"

#include <map>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "collectives/error.h"

namespace ddp {

std::vector<ckpt::TensorSource> exchange_sharded_sources(Communicator& control,
                                                         std::vector<ckpt::TensorSource> mine) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& s : mine) {
    list.push_back({{"path", s.path},
                    {"dtype", static_cast<int>(s.dtype)},
                    {"shape", s.shape},
                    {"bytes", s.bytes}});
  }
  const std::vector<std::string> all = all_gather_strings(control, list.dump());
  std::vector<ckpt::TensorSource> out;
  for (size_t r = 0; r < all.size(); ++r) {
    const int rank = static_cast<int>(r);
    if (rank == control.rank()) {
      for (auto& s : mine) {
        s.owner = rank;
        out.push_back(std::move(s));
      }
      continue;
    }
    try {
      for (const auto& d : nlohmann::json::parse(all[r])) {
        ckpt::TensorSource s;
        s.path = d.at("path").get<std::string>();
        s.dtype = static_cast<DType>(d.at("dtype").get<int>());
        s.shape = d.at("shape").get<std::vector<int64_t>>();
        s.bytes = d.at("bytes").get<size_t>();
        s.changes_only_at_update = true;
        s.owner = rank;
        out.push_back(std::move(s));
      }
    } catch (const nlohmann::json::exception& e) {
      throw Error(ErrorKind::kInternal,
                  fmt::format("sharded optimizer state: bad description from rank {}: {}", r,
                              e.what()));
    }
  }
  return out;
}

std::function<int(const std::string& path)> optimizer_destinations(
    const torch::nn::Module& model, const std::vector<int>& owners) {
  auto owner_of = std::make_shared<std::map<std::string, int>>();
  size_t k = 0;
  for (const auto& item : model.named_parameters()) {
    if (!item.value().requires_grad()) continue;
    if (k >= owners.size()) {
      throw Error(ErrorKind::kInternal, "optimizer_destinations: fewer owners than parameters");
    }
    (*owner_of)[item.key()] = owners[k++];
  }
  return [owner_of](const std::string& path) {
    static const std::string kPrefix = "optimizer/";
    const size_t field = path.rfind('/');
    if (path.rfind(kPrefix, 0) != 0 || field == std::string::npos || field < kPrefix.size()) {
      return -1;
    }
    const auto it = owner_of->find(path.substr(kPrefix.size(), field - kPrefix.size()));
    return it == owner_of->end() ? -1 : it->second;
  };
}

}  // namespace ddp
