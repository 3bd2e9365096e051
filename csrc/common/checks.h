// Input checks shared by every op: each failure names the tensor and what disagrees,
// so a bad call fails at the op boundary instead of deep inside a kernel.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

namespace rankseg_fast {

// "[2, 3, 4]". Formatted by hand: in CUDA builds, streaming an IntArrayRef into an error message (the
// inline ostream operator instantiated in both the g++ and the nvcc translation units) crashed on an H100
// machine (torch 2.11, CUDA 13), so no message of ours streams a shape.
inline std::string dims_str(at::IntArrayRef dims) {
  std::string out = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(dims[i]);
  }
  return out + "]";
}

inline std::string shape_str(const at::Tensor& t) { return dims_str(t.sizes()); }

inline void check_defined(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.defined(), op, ": `", name, "` is undefined (None)");
}

inline void check_rank(const at::Tensor& t, int64_t rank, const char* op, const char* name,
                       const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == rank, op, ": `", name, "` must have ", rank, " dimensions ", layout,
              ", got shape ", shape_str(t));
}

inline void check_size(const at::Tensor& t, int64_t dim, int64_t expected, const char* op,
                       const char* name, const char* what) {
  TORCH_CHECK_VALUE(t.size(dim) == expected, op, ": `", name, "` dimension ", dim, " (", what,
              ") must be ", expected, ", got shape ", shape_str(t));
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op,
                              const char* name, const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": `", name, "` is on ", t.device(), " but `",
              ref_name, "` is on ", ref.device(), "; move them to the same device");
}

}  // namespace rankseg_fast
