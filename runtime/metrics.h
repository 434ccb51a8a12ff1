// Metrics output of rank 0: a CSV file in the run directory (PyTorch Lightning CSVLogger
// style: one row per logging event, one column per metric, blanks where a metric was not
// logged) and a human progress display on stderr: a redrawn bar when stderr is a terminal,
// plain log lines otherwise.
//
// Thread-safety: none; used by the training thread of rank 0 only.
#pragma once

#include <cstdint>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace ddp {

class CsvLogger {
 public:
  // Writes the header with `columns` (the first ones should be epoch, step).
  CsvLogger(const std::string& path, std::vector<std::string> columns);
  // Missing columns are written empty. Flushed per row, so a killed run keeps its metrics.
  void log(const std::map<std::string, double>& row);

 private:
  std::ofstream out_;
  std::vector<std::string> columns_;
};

struct ProgressSnapshot {
  int64_t epoch = 0;
  int64_t step = 0;         // optimizer steps done
  int64_t total_steps = 0;  // planned
  double loss = 0.0;
  double samples_per_s = 0.0;
  double elapsed_s = 0.0;
  std::optional<double> val_loss;
};

class ProgressReporter {
 public:
  // mode: "auto" (bar if stderr is a terminal), "on", "off" (plain lines).
  explicit ProgressReporter(const std::string& mode);
  void update(const ProgressSnapshot& s);
  void message(const std::string& line);  // a log line that does not break the bar
  void finish();

 private:
  bool bar_;
  bool bar_drawn_ = false;
};

std::string format_duration(double seconds);

}  // namespace ddp
