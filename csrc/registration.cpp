// Op schemas of the tiue._C extension and their CPU kernels.
//
// These are backend ops: the public ops (torch.ops.tiue.ddim_combine, ...) are defined in
// Python with torch.library.custom_op and call these from their per-device kernels, so that
// TIUE_KERNELS can pick a backend per call and the package works without this extension.
// The CUDA kernels of the same ops register in cuda/cuda_ops.cpp when built with CUDA.
#include "ops.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>

namespace tiue {
namespace {

std::string native_build_info() {
  std::string info = "cpu=yes;parallel=";
#if AT_PARALLEL_OPENMP
  info += "openmp";
#else
  info += "native";
#endif
  info += ";threads=" + std::to_string(at::get_num_threads());
#ifdef TIUE_WITH_CUDA
  info += ";cuda=yes";
#else
  info += ";cuda=no";
#endif
  return info;
}

}  // namespace
}  // namespace tiue

TORCH_LIBRARY(tiue, m) {
  m.def("ddim_combine_native(Tensor noise, Tensor eps, float[] coeffs, float scale, "
        "ScalarType out_dtype) -> Tensor");
  m.def("gaussian_kl_stats_native(Tensor x) -> (Tensor, Tensor, Tensor)");
  m.def("gaussian_kl_backward_native(Tensor x, Tensor mean, Tensor var, Tensor grad_kl, "
        "Tensor grad_mean, Tensor grad_var) -> Tensor");
  m.def("native_build_info() -> str", &tiue::native_build_info);
}

TORCH_LIBRARY_IMPL(tiue, CPU, m) {
  m.impl("ddim_combine_native", &tiue::ddim_combine_cpu);
  m.impl("gaussian_kl_stats_native", &tiue::gaussian_kl_stats_cpu);
  m.impl("gaussian_kl_backward_native", &tiue::gaussian_kl_backward_cpu);
}

#ifdef TORCH_EXTENSION_NAME
// Built as the Python module tiue._C (setup.py): importing it runs the registrations above.
// It defines no Python functions, so it needs no pybind11, just an empty module.
#include <Python.h>

#define TIUE_STRINGIFY_(x) #x
#define TIUE_STRINGIFY(x) TIUE_STRINGIFY_(x)
#define TIUE_CONCAT_(a, b) a##b
#define TIUE_CONCAT(a, b) TIUE_CONCAT_(a, b)

extern "C" PyMODINIT_FUNC TIUE_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, TIUE_STRINGIFY(TORCH_EXTENSION_NAME),
                                      "tiue's compiled kernels (registered as torch.ops.tiue.*)",
                                      -1, nullptr};
  return PyModule_Create(&module);
}
#endif
