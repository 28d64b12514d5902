// The fuzz targets' input, read front to back; zeros once it is spent.
#pragma once

#include <cstddef>
#include <cstdint>

namespace eplb_fuzz {

class Bytes {
 public:
  Bytes(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  uint8_t Byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  int Int(int lo, int hi) { return lo + Byte() % (hi - lo + 1); }  // [lo, hi], hi - lo < 256

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace eplb_fuzz
