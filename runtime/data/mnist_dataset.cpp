// MNIST from its IDX files (uncompressed) in the directory data.path:
//   train-images-idx3-ubyte, train-labels-idx1-ubyte   training set (required)
//   t10k-images-idx3-ubyte,  t10k-labels-idx1-ubyte    validation set (optional, both or none;
//                                                       looked for in data.val_path if set)
// Without the t10k pair the last data.val_fraction of the training images are held out.
//
// IDX: a big-endian uint32 magic (2051 images, 2049 labels), big-endian uint32 dimensions,
// then uint8 data. x is float32 [N, 1, rows, cols], scaled to [0, 1] and normalised with the
// usual MNIST mean and std; y is int64 [N] in [0, 10).
#include <algorithm>
#include <filesystem>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include "collectives/error.h"
#include "runtime/data/dataset.h"

namespace ddp {
namespace data_internal {
// Defined in make_datasets.cpp.
std::string read_data_file(const std::string& path);
DataSplits split_tail(const torch::Tensor& x, const torch::Tensor& y, const DatasetInfo& info,
                      double val_fraction, const std::string& source);
}  // namespace data_internal

namespace {

constexpr uint32_t kImagesMagic = 2051;
constexpr uint32_t kLabelsMagic = 2049;
constexpr int64_t kNumClasses = 10;
constexpr double kMean = 0.1307;
constexpr double kStd = 0.3081;

std::string join_path(const std::string& dir, const char* name) {
  return (std::filesystem::path(dir) / name).string();
}

bool file_exists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::exists(path, ec);
}

uint32_t read_be32(const std::string& bytes, size_t offset) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data()) + offset;
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

Error corrupt(const std::string& path, const std::string& what) {
  return Error(ErrorKind::kInvalidArgument, fmt::format("MNIST file '{}': {}", path, what));
}

// Reads an IDX file, checking the magic and that the length matches the header.
// Returns the bytes; *dims receives the header's dimensions.
std::string read_idx(const std::string& path, uint32_t magic, size_t ndims,
                     std::vector<uint64_t>* dims) {
  if (!file_exists(path) && file_exists(path + ".gz")) {
    throw Error(ErrorKind::kNotFound,
                fmt::format("MNIST file '{}' does not exist, but '{}.gz' does: decompress it "
                            "(gunzip)",
                            path, path));
  }
  std::string bytes = data_internal::read_data_file(path);
  if (bytes.size() < 4) {
    throw corrupt(path, fmt::format("{} bytes, too short for an IDX file", bytes.size()));
  }
  const uint32_t got = read_be32(bytes, 0);
  if (got != magic) {
    const bool gzip = static_cast<unsigned char>(bytes[0]) == 0x1f &&
                      static_cast<unsigned char>(bytes[1]) == 0x8b;
    throw corrupt(path, fmt::format("magic number {} (0x{:08x}), expected {}{}", got, got, magic,
                                    gzip ? "; the file is gzip-compressed, gunzip it" : ""));
  }
  const size_t header = 4 + 4 * ndims;
  if (bytes.size() < header) {
    throw corrupt(path, fmt::format("{} bytes, too short for the {}-byte IDX header",
                                    bytes.size(), header));
  }
  // Three 32-bit dimensions can overflow 64 bits: stop multiplying past a bound no file meets.
  constexpr uint64_t kHuge = uint64_t{1} << 62;
  uint64_t payload = 1;
  bool overflow = false;
  dims->clear();
  for (size_t i = 0; i < ndims; ++i) {
    dims->push_back(read_be32(bytes, 4 + 4 * i));
    const uint64_t d = dims->back();
    overflow = overflow || (d != 0 && payload > kHuge / d);
    payload = overflow ? kHuge : payload * d;
  }
  if (std::count(dims->begin(), dims->end(), 0) > 0) {
    payload = 0;
    overflow = false;
  }
  const uint64_t expected = header + payload;
  if (overflow || bytes.size() != expected) {
    throw corrupt(path, fmt::format("{} bytes, but the header's dimensions {} imply {}{}",
                                    bytes.size(), fmt::join(*dims, " x "),
                                    overflow ? "more than " : "", expected));
  }
  return bytes;
}

struct MnistPart {
  torch::Tensor x;  // float [N, 1, rows, cols], normalised
  torch::Tensor y;  // int64 [N]
};

MnistPart load_pair(const std::string& images_path, const std::string& labels_path) {
  std::vector<uint64_t> idims, ldims;
  std::string images = read_idx(images_path, kImagesMagic, 3, &idims);
  std::string labels = read_idx(labels_path, kLabelsMagic, 1, &ldims);
  if (idims[0] != ldims[0]) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("MNIST: '{}' has {} images but '{}' has {} labels", images_path,
                            idims[0], labels_path, ldims[0]));
  }
  const auto n = static_cast<int64_t>(idims[0]);
  const auto rows = static_cast<int64_t>(idims[1]);
  const auto cols = static_cast<int64_t>(idims[2]);
  for (int64_t i = 0; i < n; ++i) {
    const auto label = static_cast<unsigned char>(labels[8 + static_cast<size_t>(i)]);
    if (label >= kNumClasses) {
      throw corrupt(labels_path, fmt::format("label {} at byte offset {} (sample {}) is not in "
                                             "[0, {})",
                                             label, 8 + i, i, kNumClasses));
    }
  }
  MnistPart part;
  if (n == 0) {
    part.x = torch::empty({0, 1, rows, cols}, torch::kFloat);
    part.y = torch::empty({0}, torch::kLong);
    return part;
  }
  part.x = torch::from_blob(images.data() + 16, {n, 1, rows, cols}, torch::kUInt8)
               .to(torch::kFloat)
               .div_(255.0)
               .sub_(kMean)
               .div_(kStd);
  part.y = torch::from_blob(labels.data() + 8, {n}, torch::kUInt8).to(torch::kLong);
  return part;
}

}  // namespace

// Declared in make_datasets.cpp.
DataSplits make_mnist_datasets(const DataConfig& config) {
  if (config.path.empty()) {
    throw Error(ErrorKind::kInvalidArgument,
                "data.path (the MNIST directory) is required for data.name = 'mnist'");
  }
  if (!std::filesystem::is_directory(config.path)) {
    throw Error(ErrorKind::kNotFound,
                fmt::format("MNIST directory '{}' does not exist or is not a directory",
                            config.path));
  }
  const MnistPart train = load_pair(join_path(config.path, "train-images-idx3-ubyte"),
                                    join_path(config.path, "train-labels-idx1-ubyte"));
  if (train.x.size(0) == 0) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("MNIST directory '{}': the training files hold no images",
                            config.path));
  }
  DatasetInfo info;
  info.task = Task::kClassification;
  info.input_shape = {1, train.x.size(2), train.x.size(3)};
  info.num_outputs = kNumClasses;

  const std::string val_dir = config.val_path.empty() ? config.path : config.val_path;
  const std::string val_images = join_path(val_dir, "t10k-images-idx3-ubyte");
  const std::string val_labels = join_path(val_dir, "t10k-labels-idx1-ubyte");
  const bool have_images = file_exists(val_images);
  const bool have_labels = file_exists(val_labels);
  if (!have_images && !have_labels) {
    if (config.val_path.empty()) {
      return data_internal::split_tail(train.x, train.y, info, config.val_fraction, config.path);
    }
    throw Error(ErrorKind::kNotFound,
                fmt::format("MNIST validation files '{}' and '{}' (data.val_path) do not exist",
                            val_images, val_labels));
  }
  if (!have_images || !have_labels) {
    throw Error(ErrorKind::kNotFound,
                fmt::format("MNIST validation file '{}' does not exist, but its pair '{}' does",
                            have_images ? val_labels : val_images,
                            have_images ? val_images : val_labels));
  }
  const MnistPart val = load_pair(val_images, val_labels);
  if (val.x.size(2) != train.x.size(2) || val.x.size(3) != train.x.size(3)) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("MNIST: '{}' images are {}x{}, the training images {}x{}", val_images,
                            val.x.size(2), val.x.size(3), train.x.size(2), train.x.size(3)));
  }
  return DataSplits{std::make_shared<TensorDataset>(train.x, train.y, info),
                    std::make_shared<TensorDataset>(val.x, val.y, info)};
}

}  // namespace ddp
