// Input checks shared by every op: each failure names the tensor and what disagrees,
// so a bad call fails at the op boundary instead of deep inside a kernel.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <string>
#include <string_view>
#include <type_traits>

// TORCH_CHECK_* with the message built by rankseg_fast::message (no iostreams).
#define RSF_CHECK(cond, ...) TORCH_CHECK(cond, ::rankseg_fast::message(__VA_ARGS__))
#define RSF_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, ::rankseg_fast::message(__VA_ARGS__))
#define RSF_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, ::rankseg_fast::message(__VA_ARGS__))

namespace rankseg_fast {

// Error messages are assembled here without iostreams. On the H100 machine (torch 2.11+cu130, g++ 13,
// libstdc++ 6.0.33) streaming an integer from this extension into c10::str's ostringstream crashed the
// process (num_put/locale code resolved to another copy in the process; the crash went away with
// LD_PRELOAD of the system libstdc++). Numbers go through std::to_string/snprintf, strings are
// appended, and only c10's own types (Device, ScalarType) are formatted by libc10's operators.
inline std::string dims_str(at::IntArrayRef dims) {
  std::string out = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(dims[i]);
  }
  return out + "]";
}

namespace detail {

template <typename T>
void append(std::string& out, const T& value) {
  if constexpr (std::is_same_v<T, bool>) {
    out += value ? "true" : "false";
  } else if constexpr (std::is_same_v<T, char>) {
    out += value;
  } else if constexpr (std::is_integral_v<T>) {
    out += std::to_string(value);
  } else if constexpr (std::is_floating_point_v<T>) {
    char buffer[32];
    std::snprintf(buffer, sizeof(buffer), "%g", static_cast<double>(value));
    out += buffer;
  } else if constexpr (std::is_convertible_v<const T&, std::string_view>) {
    out += std::string_view(value);
  } else if constexpr (std::is_convertible_v<const T&, at::IntArrayRef>) {
    out += dims_str(value);
  } else {
    out += c10::str(value);
  }
}

}  // namespace detail

// Concatenates the pieces of an error message (see the note above).
template <typename... Args>
std::string message(const Args&... args) {
  std::string out;
  (detail::append(out, args), ...);
  return out;
}

inline std::string shape_str(const at::Tensor& t) { return dims_str(t.sizes()); }

inline void check_defined(const at::Tensor& t, const char* op, const char* name) {
  RSF_CHECK_VALUE(t.defined(), op, ": `", name, "` is undefined (None)");
}

inline void check_rank(const at::Tensor& t, int64_t rank, const char* op, const char* name,
                       const char* layout) {
  RSF_CHECK_VALUE(t.dim() == rank, op, ": `", name, "` must have ", rank, " dimensions ", layout,
              ", got shape ", shape_str(t));
}

inline void check_size(const at::Tensor& t, int64_t dim, int64_t expected, const char* op,
                       const char* name, const char* what) {
  RSF_CHECK_VALUE(t.size(dim) == expected, op, ": `", name, "` dimension ", dim, " (", what,
              ") must be ", expected, ", got shape ", shape_str(t));
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op,
                              const char* name, const char* ref_name) {
  RSF_CHECK_VALUE(t.device() == ref.device(), op, ": `", name, "` is on ", t.device(), " but `",
              ref_name, "` is on ", ref.device(), "; move them to the same device");
}

}  // namespace rankseg_fast
