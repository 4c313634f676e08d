// Declarations of the CPU kernels of the tiue._C extension (schemas in registration.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <tuple>

namespace tiue {

// out = scale * (coeffs[0] * noise + sum_k coeffs[k+1] * eps[k]), accumulated in fp32 (fp64
// for fp64 inputs), written contiguous in out_dtype. noise (B, C, H, W), eps (K, B, C, H, W),
// any strides, one dtype for both.
at::Tensor ddim_combine_cpu(const at::Tensor& noise, const at::Tensor& eps,
                            at::ArrayRef<double> coeffs, double scale,
                            at::ScalarType out_dtype);

// Per row n of x (N, L): (KL, mean, unbiased variance) with
// KL = -0.5 * (1 + log var - mean^2 - var); fp32 outputs (fp64 for fp64 x).
std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_kl_stats_cpu(const at::Tensor& x);

// dx = a + b * (x - mean) per row, a = (g_kl * mean + g_mean) / L,
// b = (g_kl * (1 - 1/var) + 2 * g_var) / (L - 1); contiguous (N, L) in x's dtype.
at::Tensor gaussian_kl_backward_cpu(const at::Tensor& x, const at::Tensor& mean,
                                    const at::Tensor& var, const at::Tensor& grad_kl,
                                    const at::Tensor& grad_mean, const at::Tensor& grad_var);

}  // namespace tiue
