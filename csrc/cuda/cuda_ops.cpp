// at::Tensor adapters for the CUDA kernels and their registration under the CUDA dispatch key.
// Compiled by the host compiler; the kernels themselves are in the .cu files beside it.
#include "launchers.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

namespace tiue {
namespace cuda {
namespace {

DType dtype_of(at::ScalarType type, const char* what) {
  switch (type) {
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    default:
      TORCH_CHECK(false, what, " must be float16, bfloat16, float32 or float64, got ", type);
  }
}

void check(cudaError_t error, const char* op) {
  TORCH_CHECK(error == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(error));
}

at::Tensor ddim_combine_cuda(const at::Tensor& noise, const at::Tensor& eps,
                             at::ArrayRef<double> coeffs, double scale,
                             at::ScalarType out_dtype) {
  TORCH_CHECK(noise.dim() == 4 && eps.dim() == 5 && eps.sizes().slice(1) == noise.sizes(),
              "ddim_combine_native: expected noise (B, C, H, W) and eps (K, B, C, H, W), got ",
              noise.sizes(), " and ", eps.sizes());
  TORCH_CHECK(eps.size(0) <= kMaxSteps, "ddim_combine_native (CUDA): K must be <= ", kMaxSteps,
              ", got ", eps.size(0));
  TORCH_CHECK(static_cast<int64_t>(coeffs.size()) == eps.size(0) + 1,
              "ddim_combine_native: coeffs must hold K+1 = ", eps.size(0) + 1, " values, got ",
              coeffs.size());
  TORCH_CHECK(noise.scalar_type() == eps.scalar_type(),
              "ddim_combine_native: noise and eps must share a dtype, got ", noise.scalar_type(),
              " and ", eps.scalar_type());
  const c10::cuda::CUDAGuard guard(noise.device());
  at::Tensor out = at::empty(noise.sizes(), noise.options().dtype(out_dtype));
  DdimCombineArgs args{};
  args.out = out.data_ptr();
  args.noise = noise.const_data_ptr();
  args.eps = eps.const_data_ptr();
  args.in_dtype = dtype_of(noise.scalar_type(), "noise");
  args.out_dtype = dtype_of(out_dtype, "out_dtype");
  for (int d = 0; d < 4; ++d) {
    args.sizes[d] = noise.size(d);
    args.noise_strides[d] = noise.stride(d);
  }
  for (int d = 0; d < 5; ++d) args.eps_strides[d] = eps.stride(d);
  args.steps = static_cast<int>(eps.size(0));
  std::copy(coeffs.begin(), coeffs.end(), args.coeffs);
  args.scale = scale;
  args.contiguous = noise.is_contiguous() && (eps.size(0) == 0 || eps.select(0, 0).is_contiguous());
  check(launch_ddim_combine(args, c10::cuda::getCurrentCUDAStream()), "ddim_combine_native");
  return out;
}

at::Tensor rows_with_unit_stride(const at::Tensor& x) {
  return x.stride(1) == 1 ? x : x.contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_kl_stats_cuda(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(1) >= 2,
              "gaussian_kl_stats_native: x must be (N, L) with L >= 2, got ", x_in.sizes());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = rows_with_unit_stride(x_in);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto options = x.options().dtype(acc);
  at::Tensor kl = at::empty({x.size(0)}, options);
  at::Tensor mean = at::empty({x.size(0)}, options);
  at::Tensor var = at::empty({x.size(0)}, options);
  int sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.get_device()),
        "gaussian_kl_stats_native");
  GaussianKlStatsArgs args{};
  args.x = x.const_data_ptr();
  args.dtype = dtype_of(x.scalar_type(), "x");
  args.rows = x.size(0);
  args.length = x.size(1);
  args.row_stride = x.stride(0);
  args.chunks = gaussian_kl_chunks(args.rows, args.length, sms);
  at::Tensor partial = at::empty({std::max<int64_t>(args.rows, 1) * args.chunks * 3}, options);
  args.kl = kl.data_ptr();
  args.mean = mean.data_ptr();
  args.var = var.data_ptr();
  args.partial = partial.data_ptr();
  check(launch_gaussian_kl_stats(args, c10::cuda::getCurrentCUDAStream()), "gaussian_kl_stats_native");
  return {kl, mean, var};
}

at::Tensor gaussian_kl_backward_cuda(const at::Tensor& x_in, const at::Tensor& mean,
                                     const at::Tensor& var, const at::Tensor& grad_kl,
                                     const at::Tensor& grad_mean, const at::Tensor& grad_var) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(1) >= 2,
              "gaussian_kl_backward_native: x must be (N, L) with L >= 2, got ", x_in.sizes());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = rows_with_unit_stride(x_in);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor m = mean.to(acc).contiguous(), v = var.to(acc).contiguous();
  const at::Tensor gk = grad_kl.to(acc), gm = grad_mean.to(acc), gv = grad_var.to(acc);
  for (const at::Tensor* t : {&m, &v, &gk, &gm, &gv}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == x.size(0),
                "gaussian_kl_backward_native: per-row inputs must be (N,) = (", x.size(0),
                ",), got ", t->sizes());
  }
  at::Tensor grad_x = at::empty({x.size(0), x.size(1)}, x.options());
  GaussianKlBackwardArgs args{};
  args.grad_x = grad_x.data_ptr();
  args.x = x.const_data_ptr();
  args.dtype = dtype_of(x.scalar_type(), "x");
  args.rows = x.size(0);
  args.length = x.size(1);
  args.row_stride = x.stride(0);
  args.mean = m.const_data_ptr();
  args.var = v.const_data_ptr();
  args.grad_kl = gk.const_data_ptr();
  args.grad_mean = gm.const_data_ptr();
  args.grad_var = gv.const_data_ptr();
  args.grad_kl_stride = gk.stride(0);
  args.grad_mean_stride = gm.stride(0);
  args.grad_var_stride = gv.stride(0);
  check(launch_gaussian_kl_backward(args, c10::cuda::getCurrentCUDAStream()),
        "gaussian_kl_backward_native");
  return grad_x;
}

}  // namespace
}  // namespace cuda
}  // namespace tiue

TORCH_LIBRARY_IMPL(tiue, CUDA, m) {
  m.impl("ddim_combine_native", &tiue::cuda::ddim_combine_cuda);
  m.impl("gaussian_kl_stats_native", &tiue::cuda::gaussian_kl_stats_cuda);
  m.impl("gaussian_kl_backward_native", &tiue::cuda::gaussian_kl_backward_cuda);
}
