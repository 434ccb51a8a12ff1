#include "checkpoint/checkpoint_data.h"

#include "checkpoint/xxh3.h"

#include <fmt/format.h>

namespace ddp::ckpt {

uint64_t checksum_bytes(const void* data, size_t bytes) { return XXH3_64bits(data, bytes); }

std::string hex64(uint64_t value) { return fmt::format("{:016x}", value); }

bool parse_hex64(const std::string& text, uint64_t* value) {
  if (text.empty() || text.size() > 16) return false;
  uint64_t v = 0;
  for (char c : text) {
    int digit;
    if (c >= '0' && c <= '9') digit = c - '0';
    else if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') digit = c - 'A' + 10;
    else return false;
    v = (v << 4) | static_cast<uint64_t>(digit);
  }
  *value = v;
  return true;
}

}  // namespace ddp::ckpt
