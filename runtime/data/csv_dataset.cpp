// CSV datasets: a header row, then one sample per line, every cell a finite number.
//
// The label is data.label_column (default: the last column); every other column is a
// feature, in file order. Classification labels are integers >= 0 (num_outputs = max + 1 over
// train and validation); regression labels are any finite number (num_outputs = 1).
// Blank lines are skipped; line numbers in errors are 1-based physical lines.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <string_view>

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

struct CsvData {
  std::vector<std::string> header;
  int64_t header_line = 0;
  std::vector<float> features;  // row-major [rows, header.size() - 1]
  std::vector<double> labels;   // [rows]
  int64_t rows = 0;
};

std::string_view trim(std::string_view s) {
  const char* ws = " \t\r";
  const size_t begin = s.find_first_not_of(ws);
  if (begin == std::string_view::npos) return {};
  const size_t end = s.find_last_not_of(ws);
  return s.substr(begin, end - begin + 1);
}

std::vector<std::string_view> split_cells(std::string_view line) {
  std::vector<std::string_view> cells;
  size_t start = 0;
  while (true) {
    const size_t comma = line.find(',', start);
    if (comma == std::string_view::npos) {
      cells.push_back(trim(line.substr(start)));
      return cells;
    }
    cells.push_back(trim(line.substr(start, comma - start)));
    start = comma + 1;
  }
}

// Returns false unless the whole cell is one finite number.
bool parse_number(std::string_view cell, double* out) {
  if (!cell.empty() && cell.front() == '+') cell.remove_prefix(1);
  if (cell.empty()) return false;
  const auto [ptr, ec] = std::from_chars(cell.data(), cell.data() + cell.size(), *out);
  return ec == std::errc() && ptr == cell.data() + cell.size() && std::isfinite(*out);
}

std::string unquote(std::string_view s) {
  if (s.size() >= 2 && s.front() == '"' && s.back() == '"') s = s.substr(1, s.size() - 2);
  return std::string(s);
}

CsvData parse_csv(const std::string& path, const std::string& label_column,
                  bool classification, int64_t* label_index) {
  const std::string text = data_internal::read_data_file(path);
  const std::string_view all(text);
  CsvData data;
  size_t ncols = 0;
  size_t pos = 0;
  int64_t line_no = 0;
  while (pos < all.size()) {
    size_t eol = all.find('\n', pos);
    if (eol == std::string_view::npos) eol = all.size();
    const std::string_view line = all.substr(pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    if (trim(line).empty()) continue;
    std::vector<std::string_view> cells = split_cells(line);

    if (data.header.empty()) {
      for (std::string_view c : cells) data.header.push_back(unquote(c));
      data.header_line = line_no;
      ncols = data.header.size();
      if (ncols < 2) {
        throw Error(ErrorKind::kInvalidArgument,
                    fmt::format("'{}', line {}: header has {} column(s); need at least one "
                                "feature and one label",
                                path, line_no, ncols));
      }
      if (label_column.empty()) {
        *label_index = static_cast<int64_t>(ncols) - 1;
      } else {
        *label_index = -1;
        for (size_t c = 0; c < ncols; ++c) {
          if (data.header[c] == label_column) *label_index = static_cast<int64_t>(c);
        }
        if (*label_index < 0) {
          throw Error(ErrorKind::kInvalidArgument,
                      fmt::format("'{}', line {}: data.label_column '{}' is not a column; "
                                  "columns: {}",
                                  path, line_no, label_column, fmt::join(data.header, ", ")));
        }
      }
      continue;
    }

    if (cells.size() != ncols) {
      throw Error(ErrorKind::kInvalidArgument,
                  fmt::format("'{}', line {}: {} columns, the header has {}", path, line_no,
                              cells.size(), ncols));
    }
    for (size_t c = 0; c < ncols; ++c) {
      double v = 0.0;
      if (!parse_number(cells[c], &v)) {
        throw Error(ErrorKind::kInvalidArgument,
                    fmt::format("'{}', line {}, column {} ('{}'): '{}' is not a finite number",
                                path, line_no, c + 1, data.header[c], cells[c]));
      }
      if (static_cast<int64_t>(c) == *label_index) {
        if (classification &&
            (v < 0 || v != std::floor(v) || v > std::numeric_limits<int32_t>::max())) {
          throw Error(ErrorKind::kInvalidArgument,
                      fmt::format("'{}', line {}, column {} ('{}'): class label '{}' is not an "
                                  "integer >= 0",
                                  path, line_no, c + 1, data.header[c], cells[c]));
        }
        data.labels.push_back(v);
      } else {
        data.features.push_back(static_cast<float>(v));
      }
    }
    ++data.rows;
  }
  if (data.header.empty()) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("'{}' is empty; expected a header row", path));
  }
  return data;
}

torch::Tensor features_tensor(CsvData& d) {
  const int64_t f = static_cast<int64_t>(d.header.size()) - 1;
  if (d.rows == 0) return torch::empty({0, f}, torch::kFloat);
  return torch::from_blob(d.features.data(), {d.rows, f}, torch::kFloat).clone();
}

torch::Tensor labels_tensor(CsvData& d, bool classification) {
  torch::Tensor y = d.rows == 0 ? torch::empty({0}, torch::kDouble)
                                : torch::from_blob(d.labels.data(), {d.rows}, torch::kDouble);
  return classification ? y.to(torch::kLong) : y.to(torch::kFloat).reshape({d.rows, 1});
}

int64_t max_label(const CsvData& d) {
  int64_t m = -1;
  for (double v : d.labels) m = std::max(m, static_cast<int64_t>(v));
  return m;
}

}  // namespace

// Declared in make_datasets.cpp.
DataSplits make_csv_datasets(const DataConfig& config) {
  if (config.path.empty()) {
    throw Error(ErrorKind::kInvalidArgument, "data.path is required for data.name = 'csv'");
  }
  if (config.task != "classification" && config.task != "regression") {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("data.task = '{}' is not valid for csv; valid: classification, "
                            "regression",
                            config.task));
  }
  const bool classification = config.task == "classification";
  int64_t label_index = -1;
  CsvData train = parse_csv(config.path, config.label_column, classification, &label_index);
  if (train.rows == 0) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("'{}' has a header but no data rows", config.path));
  }

  DatasetInfo info;
  info.task = classification ? Task::kClassification : Task::kRegression;
  info.input_shape = {static_cast<int64_t>(train.header.size()) - 1};
  info.num_outputs = 1;

  if (config.val_path.empty()) {
    if (classification) info.num_outputs = max_label(train) + 1;
    return data_internal::split_tail(features_tensor(train), labels_tensor(train, classification),
                                     info, config.val_fraction, config.path);
  }

  int64_t val_label_index = -1;
  CsvData val = parse_csv(config.val_path, config.label_column, classification, &val_label_index);
  if (val.header != train.header) {
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("'{}', line {}: header [{}] differs from the training file "
                            "'{}' header [{}]",
                            config.val_path, val.header_line, fmt::join(val.header, ", "), config.path,
                            fmt::join(train.header, ", ")));
  }
  if (classification) info.num_outputs = std::max(max_label(train), max_label(val)) + 1;
  auto train_set = std::make_shared<TensorDataset>(features_tensor(train),
                                                   labels_tensor(train, classification), info);
  auto val_set = std::make_shared<TensorDataset>(features_tensor(val),
                                                 labels_tensor(val, classification), info);
  return DataSplits{train_set, val_set};
}

}  // namespace ddp
