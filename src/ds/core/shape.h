// Shape: the dimensions of a tensor (at most six), on its own so that code that only reasons about shapes (the
// checkpoint reader's tensor-parallel shares, core/tp_split.h) needs nothing of tensors' storage.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

namespace ds {

class Shape {
 public:
  static constexpr int kMaxDims = 6;
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);
  template <typename It>
  Shape(It begin, It end) {
    for (auto it = begin; it != end; ++it) push_back(static_cast<int64_t>(*it));
  }
  int ndim() const { return ndim_; }
  int64_t operator[](int i) const { return dims_[i < 0 ? i + ndim_ : i]; }
  int64_t numel() const;
  void push_back(int64_t d);
  const int64_t* begin() const { return dims_.data(); }
  const int64_t* end() const { return dims_.data() + ndim_; }
  bool operator==(const Shape& o) const;
  std::string str() const;  // "[2, 3]"

 private:
  std::array<int64_t, kMaxDims> dims_{};
  int ndim_ = 0;
};

}  // namespace ds
