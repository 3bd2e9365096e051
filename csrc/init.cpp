// The Python module rankseg_fast._C: importing it loads this library, whose static initialisers register
// every op (TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL in csrc/ops). The module itself only reports how
// the library was built.
#include <torch/extension.h>

#include <string>

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
#ifdef RANKSEG_FAST_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
#ifdef RANKSEG_FAST_CUDA_ARCHS
  info["cuda_archs"] = std::string(RANKSEG_FAST_CUDA_ARCHS);
#else
  info["cuda_archs"] = std::string();
#endif
  info["torch_version"] = std::string(TORCH_VERSION);
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rankseg_fast C++/CUDA ops (registered under torch.ops.rankseg_fast)";
  m.def("build_info", &build_info, "How this extension was built: CUDA kernels, archs, torch version.");
}
