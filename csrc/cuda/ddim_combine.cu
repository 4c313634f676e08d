// CUDA kernel of tiue::ddim_combine_native: one read of every input, one write.
// out = scale * (c[0] * noise + sum_k c[k+1] * eps[k]), accumulated in fp32 (fp64 for fp64).
#include "convert.cuh"
#include "launchers.h"

#include <algorithm>

namespace tiue {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 65535 * 8;  // grid-stride beyond this

struct Coefficients {
  double values[kMaxSteps + 1];
};

struct Layout {
  int64_t sizes[4];
  int64_t noise_strides[4];
  int64_t eps_strides[5];
};

template <typename in_t, typename out_t, typename acc_t, bool kContiguous>
__global__ void ddim_combine_kernel(out_t* __restrict__ out, const in_t* __restrict__ noise,
                                    const in_t* __restrict__ eps, const Layout layout,
                                    const Coefficients coeffs, const int steps, const acc_t scale,
                                    const int64_t numel) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += stride) {
    int64_t noise_offset = i, eps_offset = i;
    if constexpr (!kContiguous) {
      const int64_t w = i % layout.sizes[3];
      const int64_t h = (i / layout.sizes[3]) % layout.sizes[2];
      const int64_t c = (i / (layout.sizes[3] * layout.sizes[2])) % layout.sizes[1];
      const int64_t b = i / (layout.sizes[3] * layout.sizes[2] * layout.sizes[1]);
      noise_offset = b * layout.noise_strides[0] + c * layout.noise_strides[1] +
                     h * layout.noise_strides[2] + w * layout.noise_strides[3];
      eps_offset = b * layout.eps_strides[1] + c * layout.eps_strides[2] +
                   h * layout.eps_strides[3] + w * layout.eps_strides[4];
    }
    acc_t acc = static_cast<acc_t>(coeffs.values[0]) * to_acc<acc_t>(noise[noise_offset]);
    for (int k = 0; k < steps; ++k) {
      acc += static_cast<acc_t>(coeffs.values[k + 1]) *
             to_acc<acc_t>(eps[k * layout.eps_strides[0] + eps_offset]);
    }
    out[i] = from_acc<out_t>(acc * scale);
  }
}

template <typename in_t, typename out_t>
cudaError_t launch_typed(const DdimCombineArgs& args, cudaStream_t stream) {
  using acc_t = std::conditional_t<std::is_same_v<in_t, double>, double, float>;
  const int64_t numel = args.sizes[0] * args.sizes[1] * args.sizes[2] * args.sizes[3];
  if (numel == 0) return cudaSuccess;
  Layout layout;
  Coefficients coeffs;
  for (int d = 0; d < 4; ++d) {
    layout.sizes[d] = args.sizes[d];
    layout.noise_strides[d] = args.noise_strides[d];
  }
  for (int d = 0; d < 5; ++d) layout.eps_strides[d] = args.eps_strides[d];
  for (int k = 0; k <= args.steps; ++k) coeffs.values[k] = args.coeffs[k];
  const int blocks = static_cast<int>(std::min<int64_t>((numel + kThreads - 1) / kThreads, kMaxBlocks));
  auto* out = static_cast<out_t*>(args.out);
  const auto* noise = static_cast<const in_t*>(args.noise);
  const auto* eps = static_cast<const in_t*>(args.eps);
  const acc_t scale = static_cast<acc_t>(args.scale);
  if (args.contiguous) {
    ddim_combine_kernel<in_t, out_t, acc_t, true>
        <<<blocks, kThreads, 0, stream>>>(out, noise, eps, layout, coeffs, args.steps, scale, numel);
  } else {
    ddim_combine_kernel<in_t, out_t, acc_t, false>
        <<<blocks, kThreads, 0, stream>>>(out, noise, eps, layout, coeffs, args.steps, scale, numel);
  }
  return cudaGetLastError();
}

template <typename in_t>
cudaError_t launch_for_output(const DdimCombineArgs& args, cudaStream_t stream) {
  switch (args.out_dtype) {
    case DType::kFloat16: return launch_typed<in_t, __half>(args, stream);
    case DType::kBFloat16: return launch_typed<in_t, __nv_bfloat16>(args, stream);
    case DType::kFloat32: return launch_typed<in_t, float>(args, stream);
    case DType::kFloat64: return launch_typed<in_t, double>(args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t launch_ddim_combine(const DdimCombineArgs& args, cudaStream_t stream) {
  if (args.steps < 0 || args.steps > kMaxSteps) return cudaErrorInvalidValue;
  switch (args.in_dtype) {
    case DType::kFloat16: return launch_for_output<__half>(args, stream);
    case DType::kBFloat16: return launch_for_output<__nv_bfloat16>(args, stream);
    case DType::kFloat32: return launch_for_output<float>(args, stream);
    case DType::kFloat64: return launch_for_output<double>(args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace tiue
