#include "runtime/metrics.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>

#include <fmt/format.h>

#include "collectives/error.h"

namespace ddp {

CsvLogger::CsvLogger(const std::string& path, std::vector<std::string> columns)
    : out_(path, std::ios::out | std::ios::trunc), columns_(std::move(columns)) {
  if (!out_) throw Error(ErrorKind::kIOError, fmt::format("cannot write metrics file '{}'", path));
  for (size_t i = 0; i < columns_.size(); ++i) out_ << (i ? "," : "") << columns_[i];
  out_ << '\n';
  out_.flush();
}

void CsvLogger::log(const std::map<std::string, double>& row) {
  for (size_t i = 0; i < columns_.size(); ++i) {
    if (i) out_ << ',';
    auto it = row.find(columns_[i]);
    if (it == row.end()) continue;
    const double v = it->second;
    if (v == std::floor(v) && std::fabs(v) < 1e15) {
      out_ << fmt::format("{}", static_cast<int64_t>(v));
    } else {
      out_ << fmt::format("{}", v);  // shortest round trip: what was logged, exactly
    }
  }
  out_ << '\n';
  out_.flush();
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  const auto s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60);
  return fmt::format("{:02}:{:02}", s / 60, s % 60);
}

ProgressReporter::ProgressReporter(const std::string& mode)
    : bar_(mode == "on" || (mode == "auto" && ::isatty(STDERR_FILENO))) {}

void ProgressReporter::update(const ProgressSnapshot& s) {
  const double frac = s.total_steps > 0 ? static_cast<double>(s.step) / s.total_steps : 0.0;
  const double eta = s.step > 0 ? s.elapsed_s / s.step * (s.total_steps - s.step) : NAN;
  std::string val = s.val_loss ? fmt::format(" | val_loss {:.4f}", *s.val_loss) : "";
  if (bar_) {
    constexpr int kWidth = 24;
    const int filled = static_cast<int>(frac * kWidth);
    std::string bar(static_cast<size_t>(filled), '=');
    if (filled < kWidth) bar += '>' + std::string(static_cast<size_t>(kWidth - filled - 1), ' ');
    std::fprintf(stderr, "\r\033[K[%s] %3d%% step %lld/%lld | epoch %lld | loss %.4f%s | %.0f samples/s | ETA %s",
                 bar.c_str(), static_cast<int>(frac * 100), static_cast<long long>(s.step),
                 static_cast<long long>(s.total_steps), static_cast<long long>(s.epoch), s.loss,
                 val.c_str(), s.samples_per_s, format_duration(eta).c_str());
    bar_drawn_ = true;
  } else {
    std::fprintf(stderr, "step %lld/%lld epoch %lld loss %.4f%s samples/s %.0f elapsed %s eta %s\n",
                 static_cast<long long>(s.step), static_cast<long long>(s.total_steps),
                 static_cast<long long>(s.epoch), s.loss, val.c_str(), s.samples_per_s,
                 format_duration(s.elapsed_s).c_str(), format_duration(eta).c_str());
  }
  std::fflush(stderr);
}

void ProgressReporter::message(const std::string& line) {
  if (bar_drawn_) std::fprintf(stderr, "\r\033[K");
  std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

void ProgressReporter::finish() {
  if (bar_drawn_) std::fprintf(stderr, "\n");
  bar_drawn_ = false;
}

}  // namespace ddp
