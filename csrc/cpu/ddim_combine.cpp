// CPU kernel of tiue::ddim_combine_native: one read of every input, one write of the output.
//
// Work is split into tiles of kTile output elements (ATen's parallel_for, which is OpenMP in
// PyTorch's builds and honours torch.set_num_threads). Within a tile up to four inputs are summed
// per pass in registers (a small fp32 buffer in L1 carries the sum between passes), so every
// inner loop is a unit-stride loop the compiler vectorises (twice: see multiversion.h).
#include "../ops.h"
#include "multiversion.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace tiue {
namespace {

constexpr int64_t kTile = 1024;
constexpr int64_t kTilesPerTask = 16;  // grain: ~16K elements per parallel task

template <typename in_t>
using acc_type = std::conditional_t<std::is_same_v<in_t, double>, double, float>;

constexpr int kInputsPerPass = 4;  // inputs summed per pass over a tile, in registers

// One pass over a tile: sum = (kFirst ? 0 : acc[i]) + sum_g coeffs[g] * sources[g][i] for G
// inputs, kept in acc, or scaled and written to dst by the last pass. K <= 3 takes one pass;
// K = 4 two, the second of which reads acc back from L1.
template <int G, bool kFirst, bool kLast, typename in_t, typename out_t, typename acc_t>
TIUE_MULTIVERSION void combine_pass(acc_t* __restrict__ acc, out_t* __restrict__ dst,
                                    const in_t* const* sources, const acc_t* coeffs, acc_t scale,
                                    int64_t n) {
  const in_t* __restrict__ src[G];
  acc_t c[G];
  for (int g = 0; g < G; ++g) {
    src[g] = sources[g];
    c[g] = coeffs[g];
  }
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    acc_t sum = kFirst ? acc_t(0) : acc[i];
    for (int g = 0; g < G; ++g) sum += c[g] * static_cast<acc_t>(src[g][i]);
    if constexpr (kLast) {
      dst[i] = static_cast<out_t>(sum * scale);
    } else {
      acc[i] = sum;
    }
  }
}

template <bool kFirst, bool kLast, typename in_t, typename out_t, typename acc_t>
void combine_pass_of(int count, acc_t* acc, out_t* dst, const in_t* const* sources,
                     const acc_t* coeffs, acc_t scale, int64_t n) {
  switch (count) {
    case 1: return combine_pass<1, kFirst, kLast>(acc, dst, sources, coeffs, scale, n);
    case 2: return combine_pass<2, kFirst, kLast>(acc, dst, sources, coeffs, scale, n);
    case 3: return combine_pass<3, kFirst, kLast>(acc, dst, sources, coeffs, scale, n);
    default: return combine_pass<4, kFirst, kLast>(acc, dst, sources, coeffs, scale, n);
  }
}

// noise and every eps[k] are contiguous: element i of each is at offset i.
template <typename in_t, typename out_t>
void combine_contiguous(const in_t* noise, const in_t* eps, int64_t eps_step, int64_t steps,
                        const double* coeffs, double scale, out_t* out, int64_t numel) {
  using acc_t = acc_type<in_t>;
  const int64_t inputs = steps + 1;
  std::vector<acc_t> weights(coeffs, coeffs + inputs);
  const acc_t s = static_cast<acc_t>(scale);
  at::parallel_for(0, at::divup(numel, kTile), kTilesPerTask, [&](int64_t first, int64_t last) {
    acc_t acc[kTile];
    std::vector<const in_t*> sources(inputs);
    for (int64_t tile = first; tile < last; ++tile) {
      const int64_t begin = tile * kTile;
      const int64_t n = std::min(kTile, numel - begin);
      sources[0] = noise + begin;
      for (int64_t k = 0; k < steps; ++k) sources[k + 1] = eps + k * eps_step + begin;
      for (int64_t done = 0; done < inputs; done += kInputsPerPass) {
        const int count = static_cast<int>(std::min<int64_t>(kInputsPerPass, inputs - done));
        const bool is_first = done == 0, is_last = done + count == inputs;
        const in_t* const* src = sources.data() + done;
        const acc_t* c = weights.data() + done;
        out_t* dst = out + begin;
        if (is_first && is_last) {
          combine_pass_of<true, true>(count, acc, dst, src, c, s, n);
        } else if (is_first) {
          combine_pass_of<true, false>(count, acc, dst, src, c, s, n);
        } else if (is_last) {
          combine_pass_of<false, true>(count, acc, dst, src, c, s, n);
        } else {
          combine_pass_of<false, false>(count, acc, dst, src, c, s, n);
        }
      }
    }
  });
}

template <typename out_t, typename acc_t>
void store_scaled(out_t* __restrict__ dst, const acc_t* __restrict__ acc, acc_t s, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<out_t>(acc[i] * s);
}

// Any strides: one task per (row b, c, h) and tile of W.
template <typename in_t, typename out_t>
void combine_strided(const at::Tensor& noise, const at::Tensor& eps, const double* coeffs,
                     double scale, out_t* out) {
  using acc_t = acc_type<in_t>;
  const int64_t steps = eps.size(0);
  const int64_t channels = noise.size(1), height = noise.size(2), width = noise.size(3);
  const int64_t rows = noise.size(0) * channels * height;
  const int64_t w_tiles = at::divup(width, kTile);
  const auto ns = noise.strides();
  const auto es = eps.strides();
  const in_t* noise_ptr = noise.const_data_ptr<in_t>();
  const in_t* eps_ptr = eps.const_data_ptr<in_t>();
  const int64_t grain = std::max<int64_t>(1, kTilesPerTask * kTile / std::max<int64_t>(width, 1));
  at::parallel_for(0, rows * w_tiles, grain, [&](int64_t first, int64_t last) {
    acc_t acc[kTile];
    for (int64_t task = first; task < last; ++task) {
      const int64_t row = task / w_tiles;
      const int64_t w0 = (task % w_tiles) * kTile;
      const int64_t n = std::min(kTile, width - w0);
      const int64_t h = row % height, c = (row / height) % channels, b = row / (height * channels);
      const in_t* src = noise_ptr + b * ns[0] + c * ns[1] + h * ns[2] + w0 * ns[3];
      const acc_t c0 = static_cast<acc_t>(coeffs[0]);
      for (int64_t i = 0; i < n; ++i) acc[i] = c0 * static_cast<acc_t>(src[i * ns[3]]);
      for (int64_t k = 0; k < steps; ++k) {
        const in_t* e = eps_ptr + k * es[0] + b * es[1] + c * es[2] + h * es[3] + w0 * es[4];
        const acc_t ck = static_cast<acc_t>(coeffs[k + 1]);
        for (int64_t i = 0; i < n; ++i) acc[i] += ck * static_cast<acc_t>(e[i * es[4]]);
      }
      store_scaled(out + row * width + w0, acc, static_cast<acc_t>(scale), n);
    }
  });
}

}  // namespace

at::Tensor ddim_combine_cpu(const at::Tensor& noise, const at::Tensor& eps,
                            at::ArrayRef<double> coeffs, double scale,
                            at::ScalarType out_dtype) {
  TORCH_CHECK(noise.dim() == 4, "ddim_combine_native: noise must be (B, C, H, W), got ",
              noise.sizes());
  TORCH_CHECK(eps.dim() == 5 && eps.sizes().slice(1) == noise.sizes(),
              "ddim_combine_native: eps must be (K, *noise.shape), got ", eps.sizes(),
              " for noise ", noise.sizes());
  TORCH_CHECK(static_cast<int64_t>(coeffs.size()) == eps.size(0) + 1,
              "ddim_combine_native: coeffs must hold K+1 = ", eps.size(0) + 1,
              " values, got ", coeffs.size());
  TORCH_CHECK(noise.scalar_type() == eps.scalar_type(),
              "ddim_combine_native: noise and eps must share a dtype, got ",
              noise.scalar_type(), " and ", eps.scalar_type());
  TORCH_CHECK(noise.device().is_cpu() && eps.device().is_cpu(),
              "ddim_combine_native (CPU kernel): tensors must be on the CPU");

  at::Tensor out = at::empty(noise.sizes(), noise.options().dtype(out_dtype));
  if (out.numel() == 0) return out;
  const int64_t steps = eps.size(0);
  const bool contiguous = noise.is_contiguous() && (steps == 0 || eps.select(0, 0).is_contiguous());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, noise.scalar_type(), "ddim_combine_cpu", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "ddim_combine_cpu_out", [&] {
      using out_t = scalar_t;
      if (contiguous) {
        combine_contiguous<in_t, out_t>(noise.const_data_ptr<in_t>(), eps.const_data_ptr<in_t>(),
                                        steps > 0 ? eps.stride(0) : 0, steps, coeffs.data(),
                                        scale, out.mutable_data_ptr<out_t>(), out.numel());
      } else {
        combine_strided<in_t, out_t>(noise, eps, coeffs.data(), scale,
                                     out.mutable_data_ptr<out_t>());
      }
    });
  });
  return out;
}

}  // namespace tiue
