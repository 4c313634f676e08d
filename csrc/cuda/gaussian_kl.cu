// CUDA kernels of tiue::gaussian_kl_stats_native (two stages) and its backward.
//
// Stage 1: block (row, chunk) sums its chunk, then sums squared deviations from the chunk mean;
// the second pass re-reads a chunk the block has just read (from L2, not DRAM), so memory sees
// one read of x and the variance is a stable two-pass one. Stage 2 merges a row's chunks with
// the exact parallel-variance identity and writes KL, mean and var. Backward: one elementwise
// pass, dx = a + b (x - mean).
#include "convert.cuh"
#include "launchers.h"

#include <algorithm>

namespace tiue {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMinChunk = 4096;     // elements per stage-1 block at least
constexpr int64_t kMaxChunks = 1024;    // per row
constexpr int kBlocksPerSm = 4;
constexpr int kMaxGridY = 65535;

template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t value, acc_t* shared) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  acc_t total = 0;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kWarps; ++w) total += shared[w];
    shared[0] = total;
  }
  __syncthreads();
  total = shared[0];
  __syncthreads();  // shared is reused by the next call
  return total;
}

template <typename in_t, typename acc_t>
__global__ void partial_stats_kernel(const in_t* __restrict__ x, const int64_t length,
                                     const int64_t row_stride, const int64_t chunk,
                                     acc_t* __restrict__ partial) {
  __shared__ acc_t shared[kWarps];
  const int64_t row = blockIdx.x;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t end = begin + chunk < length ? begin + chunk : length;
  const in_t* p = x + row * row_stride;
  acc_t sum = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) sum += to_acc<acc_t>(p[i]);
  const acc_t count = static_cast<acc_t>(end > begin ? end - begin : 0);
  const acc_t total = block_sum(sum, shared);
  const acc_t mean = count > 0 ? total / count : static_cast<acc_t>(0);
  acc_t m2 = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const acc_t d = to_acc<acc_t>(p[i]) - mean;
    m2 += d * d;
  }
  m2 = block_sum(m2, shared);
  if (threadIdx.x == 0) {
    acc_t* slot = partial + (row * gridDim.y + blockIdx.y) * 3;
    slot[0] = count;
    slot[1] = mean;
    slot[2] = m2;
  }
}

template <typename acc_t>
__global__ void finalize_kernel(const acc_t* __restrict__ partial, const int64_t rows,
                                const int64_t chunks, const int64_t length, acc_t* __restrict__ kl,
                                acc_t* __restrict__ mean_out, acc_t* __restrict__ var_out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  const acc_t* p = partial + row * chunks * 3;
  acc_t total = 0, weighted = 0;
  for (int64_t s = 0; s < chunks; ++s) {
    total += p[3 * s];
    weighted += p[3 * s] * p[3 * s + 1];
  }
  const acc_t mean = weighted / total;
  acc_t m2 = 0;
  for (int64_t s = 0; s < chunks; ++s) {
    const acc_t d = p[3 * s + 1] - mean;
    m2 += p[3 * s + 2] + p[3 * s] * d * d;
  }
  const acc_t var = m2 / static_cast<acc_t>(length - 1);
  mean_out[row] = mean;
  var_out[row] = var;
  kl[row] = static_cast<acc_t>(-0.5) * (static_cast<acc_t>(1) + log(var) - mean * mean - var);
}

template <typename in_t, typename acc_t>
__global__ void backward_kernel(in_t* __restrict__ grad_x, const in_t* __restrict__ x,
                                const GaussianKlBackwardArgs args) {
  const auto* mean = static_cast<const acc_t*>(args.mean);
  const auto* var = static_cast<const acc_t*>(args.var);
  const auto* g_kl = static_cast<const acc_t*>(args.grad_kl);
  const auto* g_mean = static_cast<const acc_t*>(args.grad_mean);
  const auto* g_var = static_cast<const acc_t*>(args.grad_var);
  const int64_t length = args.length;
  for (int64_t row = blockIdx.y; row < args.rows; row += gridDim.y) {
    const acc_t mu = mean[row], s2 = var[row], g = g_kl[row * args.grad_kl_stride];
    const acc_t a = (g * mu + g_mean[row * args.grad_mean_stride]) / static_cast<acc_t>(length);
    const acc_t b = (g * (static_cast<acc_t>(1) - static_cast<acc_t>(1) / s2) +
                     static_cast<acc_t>(2) * g_var[row * args.grad_var_stride]) /
                    static_cast<acc_t>(length - 1);
    const in_t* src = x + row * args.row_stride;
    in_t* dst = grad_x + row * length;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < length;
         i += static_cast<int64_t>(gridDim.x) * kThreads) {
      dst[i] = from_acc<in_t>(a + b * (to_acc<acc_t>(src[i]) - mu));
    }
  }
}

template <typename in_t>
cudaError_t launch_stats_typed(const GaussianKlStatsArgs& args, cudaStream_t stream) {
  using acc_t = std::conditional_t<std::is_same_v<in_t, double>, double, float>;
  if (args.rows == 0) return cudaSuccess;
  const int64_t chunk = (args.length + args.chunks - 1) / args.chunks;
  const dim3 grid(static_cast<unsigned>(args.rows), static_cast<unsigned>(args.chunks));
  partial_stats_kernel<in_t, acc_t><<<grid, kThreads, 0, stream>>>(
      static_cast<const in_t*>(args.x), args.length, args.row_stride, chunk,
      static_cast<acc_t*>(args.partial));
  cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) return error;
  const int threads = 128;
  const unsigned blocks = static_cast<unsigned>((args.rows + threads - 1) / threads);
  finalize_kernel<acc_t><<<blocks, threads, 0, stream>>>(
      static_cast<const acc_t*>(args.partial), args.rows, args.chunks, args.length,
      static_cast<acc_t*>(args.kl), static_cast<acc_t*>(args.mean), static_cast<acc_t*>(args.var));
  return cudaGetLastError();
}

template <typename in_t>
cudaError_t launch_backward_typed(const GaussianKlBackwardArgs& args, cudaStream_t stream) {
  using acc_t = std::conditional_t<std::is_same_v<in_t, double>, double, float>;
  if (args.rows == 0 || args.length == 0) return cudaSuccess;
  const int64_t tiles = (args.length + kThreads - 1) / kThreads;
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(tiles, 1 << 20)),
                  static_cast<unsigned>(std::min<int64_t>(args.rows, kMaxGridY)));
  backward_kernel<in_t, acc_t><<<grid, kThreads, 0, stream>>>(
      static_cast<in_t*>(args.grad_x), static_cast<const in_t*>(args.x), args);
  return cudaGetLastError();
}

}  // namespace

int64_t gaussian_kl_chunks(int64_t rows, int64_t length, int multiprocessors) {
  // Enough blocks to fill every SM a few times, but chunks no shorter than kMinChunk.
  const int64_t wanted = (static_cast<int64_t>(multiprocessors) * kBlocksPerSm + rows - 1) /
                         std::max<int64_t>(rows, 1);
  const int64_t most = std::max<int64_t>(1, (length + kMinChunk - 1) / kMinChunk);
  const int64_t chunks = std::max<int64_t>(1, std::min({wanted, most, kMaxChunks}));
  // Chunks of ceil(L / chunks) elements: recount so that no chunk is empty.
  const int64_t chunk = (length + chunks - 1) / chunks;
  return (length + chunk - 1) / chunk;
}

cudaError_t launch_gaussian_kl_stats(const GaussianKlStatsArgs& args, cudaStream_t stream) {
  if (args.length < 2 || args.chunks < 1 || args.chunks > kMaxGridY) return cudaErrorInvalidValue;
  switch (args.dtype) {
    case DType::kFloat16: return launch_stats_typed<__half>(args, stream);
    case DType::kBFloat16: return launch_stats_typed<__nv_bfloat16>(args, stream);
    case DType::kFloat32: return launch_stats_typed<float>(args, stream);
    case DType::kFloat64: return launch_stats_typed<double>(args, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_gaussian_kl_backward(const GaussianKlBackwardArgs& args, cudaStream_t stream) {
  if (args.length < 2) return cudaErrorInvalidValue;
  switch (args.dtype) {
    case DType::kFloat16: return launch_backward_typed<__half>(args, stream);
    case DType::kBFloat16: return launch_backward_typed<__nv_bfloat16>(args, stream);
    case DType::kFloat32: return launch_backward_typed<float>(args, stream);
    case DType::kFloat64: return launch_backward_typed<double>(args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace tiue
