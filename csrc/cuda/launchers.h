// Host entry points of the CUDA kernels. Plain C++ types only (no torch headers), so the .cu
// files compile quickly with nvcc alone; cuda_ops.cpp adapts them to at::Tensor.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace tiue {
namespace cuda {

enum class DType : int { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2, kFloat64 = 3 };

// The K+1 DDIM coefficients travel by value in the kernel's parameters: no device memory, no
// host-device copy, and a CUDA graph captures them as constants.
constexpr int kMaxSteps = 64;

struct DdimCombineArgs {
  void* out;             // (B, C, H, W) contiguous, out_dtype
  const void* noise;     // (B, C, H, W), strides noise_strides
  const void* eps;       // (K, B, C, H, W), strides eps_strides
  DType in_dtype;        // of noise and eps
  DType out_dtype;
  int64_t sizes[4];      // B, C, H, W
  int64_t noise_strides[4];
  int64_t eps_strides[5];
  int steps;             // K <= kMaxSteps
  double coeffs[kMaxSteps + 1];
  double scale;
  bool contiguous;       // noise and every eps[k] contiguous: flat offsets
};

cudaError_t launch_ddim_combine(const DdimCombineArgs& args, cudaStream_t stream);

// Per row of x (N, L), row stride x_row_stride and unit element stride:
// kl, mean, var (N,) in fp32 (fp64 when x is fp64). `partial` is a workspace of
// gaussian_kl_workspace_size(...) elements of that dtype.
struct GaussianKlStatsArgs {
  const void* x;
  DType dtype;
  int64_t rows;
  int64_t length;
  int64_t row_stride;
  void* kl;
  void* mean;
  void* var;
  void* partial;
  int64_t chunks;        // chunks per row, from gaussian_kl_chunks
};

int64_t gaussian_kl_chunks(int64_t rows, int64_t length, int multiprocessors);
cudaError_t launch_gaussian_kl_stats(const GaussianKlStatsArgs& args, cudaStream_t stream);

// dx (N, L) contiguous in x's dtype: dx = a + b (x - mean) per row.
struct GaussianKlBackwardArgs {
  void* grad_x;
  const void* x;
  DType dtype;
  int64_t rows;
  int64_t length;
  int64_t row_stride;
  // (N,) in the accumulation dtype (fp32, fp64 for fp64 x); grads may have stride 0.
  const void* mean;
  const void* var;
  const void* grad_kl;
  const void* grad_mean;
  const void* grad_var;
  int64_t grad_kl_stride;
  int64_t grad_mean_stride;
  int64_t grad_var_stride;
};

cudaError_t launch_gaussian_kl_backward(const GaussianKlBackwardArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace tiue
