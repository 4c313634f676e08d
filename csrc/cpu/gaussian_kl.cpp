// CPU kernels of tiue::gaussian_kl_stats_native and tiue::gaussian_kl_backward_native.
//
// Forward: each row is cut into chunks of kChunk elements; a task reads one chunk, takes its
// sum, then its sum of squared deviations from the chunk mean while the chunk is still in L1
// (a stable two-pass variance at the cost of one read from memory). Chunk statistics are merged
// per row in double with the exact parallel-variance identity. Backward: one elementwise pass.
#include "../ops.h"
#include "multiversion.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace tiue {
namespace {

constexpr int64_t kChunk = 4096;
constexpr int64_t kChunksPerTask = 4;

template <typename in_t>
using acc_type = std::conditional_t<std::is_same_v<in_t, double>, double, float>;

struct ChunkStats {
  double count = 0, mean = 0, m2 = 0;
};

template <typename in_t>
TIUE_MULTIVERSION ChunkStats chunk_stats(const in_t* p, int64_t n) {
  using acc_t = acc_type<in_t>;
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += static_cast<acc_t>(p[i]);
  const acc_t mean = sum / static_cast<acc_t>(n);
  acc_t m2 = 0;
#pragma omp simd reduction(+ : m2)
  for (int64_t i = 0; i < n; ++i) {
    const acc_t d = static_cast<acc_t>(p[i]) - mean;
    m2 += d * d;
  }
  return {static_cast<double>(n), static_cast<double>(mean), static_cast<double>(m2)};
}

at::Tensor rows_with_unit_stride(const at::Tensor& x) {
  return x.stride(1) == 1 ? x : x.contiguous();
}

template <typename in_t, typename acc_t>
TIUE_MULTIVERSION void affine_chunk(in_t* __restrict__ dst, const in_t* __restrict__ src,
                                    acc_t a, acc_t b, acc_t mean, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    dst[i] = static_cast<in_t>(a + b * (static_cast<acc_t>(src[i]) - mean));
  }
}

// out[row, i] = a[row] + b[row] * (x[row, i] - mean[row]), in tasks of kChunk elements.
template <typename in_t>
void affine_rows(const in_t* x, int64_t rows, int64_t length, int64_t row_stride,
                 const double* a, const double* b, const double* mean, in_t* out) {
  using acc_t = acc_type<in_t>;
  const int64_t chunks = at::divup(length, kChunk);
  at::parallel_for(0, rows * chunks, kChunksPerTask, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const int64_t row = task / chunks, begin = (task % chunks) * kChunk;
      affine_chunk(out + row * length + begin, x + row * row_stride + begin,
                   static_cast<acc_t>(a[row]), static_cast<acc_t>(b[row]),
                   static_cast<acc_t>(mean[row]), std::min(kChunk, length - begin));
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_kl_stats_cpu(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(1) >= 2,
              "gaussian_kl_stats_native: x must be (N, L) with L >= 2, got ", x_in.sizes());
  TORCH_CHECK(x_in.device().is_cpu(), "gaussian_kl_stats_native (CPU kernel): x must be on the CPU");
  const at::Tensor x = rows_with_unit_stride(x_in);
  const int64_t rows = x.size(0), length = x.size(1), row_stride = x.stride(0);
  const auto acc_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor kl = at::empty({rows}, x.options().dtype(acc_dtype));
  at::Tensor mean = at::empty({rows}, x.options().dtype(acc_dtype));
  at::Tensor var = at::empty({rows}, x.options().dtype(acc_dtype));
  if (rows == 0) return {kl, mean, var};

  const int64_t chunks = at::divup(length, kChunk);
  std::vector<ChunkStats> partial(rows * chunks);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gaussian_kl_stats_cpu", [&] {
    const scalar_t* data = x.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows * chunks, kChunksPerTask, [&](int64_t first, int64_t last) {
      for (int64_t task = first; task < last; ++task) {
        const int64_t row = task / chunks, begin = (task % chunks) * kChunk;
        partial[task] = chunk_stats(data + row * row_stride + begin, std::min(kChunk, length - begin));
      }
    });
  });

  AT_DISPATCH_FLOATING_TYPES(acc_dtype, "gaussian_kl_stats_cpu_finalize", [&] {
    scalar_t* kl_ptr = kl.mutable_data_ptr<scalar_t>();
    scalar_t* mean_ptr = mean.mutable_data_ptr<scalar_t>();
    scalar_t* var_ptr = var.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, 256, [&](int64_t first, int64_t last) {
      for (int64_t row = first; row < last; ++row) {
        const ChunkStats* p = partial.data() + row * chunks;
        double total = 0, weighted = 0;
        for (int64_t s = 0; s < chunks; ++s) {
          total += p[s].count;
          weighted += p[s].count * p[s].mean;
        }
        const double m = weighted / total;
        double m2 = 0;
        for (int64_t s = 0; s < chunks; ++s) {
          const double d = p[s].mean - m;
          m2 += p[s].m2 + p[s].count * d * d;
        }
        const double v = m2 / static_cast<double>(length - 1);
        mean_ptr[row] = static_cast<scalar_t>(m);
        var_ptr[row] = static_cast<scalar_t>(v);
        kl_ptr[row] = static_cast<scalar_t>(-0.5 * (1.0 + std::log(v) - m * m - v));
      }
    });
  });
  return {kl, mean, var};
}

at::Tensor gaussian_kl_backward_cpu(const at::Tensor& x_in, const at::Tensor& mean,
                                    const at::Tensor& var, const at::Tensor& grad_kl,
                                    const at::Tensor& grad_mean, const at::Tensor& grad_var) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(1) >= 2,
              "gaussian_kl_backward_native: x must be (N, L) with L >= 2, got ", x_in.sizes());
  TORCH_CHECK(x_in.device().is_cpu(), "gaussian_kl_backward_native (CPU kernel): x must be on the CPU");
  const int64_t rows = x_in.size(0), length = x_in.size(1);
  for (const at::Tensor* t : {&mean, &var, &grad_kl, &grad_mean, &grad_var}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == rows,
                "gaussian_kl_backward_native: per-row inputs must be (N,) = (", rows, ",), got ",
                t->sizes());
  }
  const at::Tensor x = rows_with_unit_stride(x_in);
  const int64_t row_stride = x.stride(0);
  at::Tensor grad_x = at::empty({rows, length}, x.options());
  if (grad_x.numel() == 0) return grad_x;

  // Per-row affine coefficients in double: dx = a + b * (x - mean).
  const at::Tensor m = mean.to(at::kDouble).contiguous(), v = var.to(at::kDouble).contiguous();
  const at::Tensor gk = grad_kl.to(at::kDouble).contiguous();
  const at::Tensor gm = grad_mean.to(at::kDouble).contiguous();
  const at::Tensor gv = grad_var.to(at::kDouble).contiguous();
  std::vector<double> a(rows), b(rows);
  for (int64_t row = 0; row < rows; ++row) {
    const double mu = m.const_data_ptr<double>()[row], s2 = v.const_data_ptr<double>()[row];
    const double g = gk.const_data_ptr<double>()[row];
    a[row] = (g * mu + gm.const_data_ptr<double>()[row]) / static_cast<double>(length);
    b[row] = (g * (1.0 - 1.0 / s2) + 2.0 * gv.const_data_ptr<double>()[row]) /
             static_cast<double>(length - 1);
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gaussian_kl_backward_cpu", [&] {
    affine_rows(x.const_data_ptr<scalar_t>(), rows, length, row_stride, a.data(), b.data(),
                m.const_data_ptr<double>(), grad_x.mutable_data_ptr<scalar_t>());
  });
  return grad_x;
}

}  // namespace tiue
