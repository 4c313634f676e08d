// Loads and stores between the storage dtypes and the accumulation type, written with the
// explicit intrinsics (PyTorch builds CUDA code with the implicit half conversions disabled).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

namespace tiue {
namespace cuda {

template <typename acc_t>
__device__ __forceinline__ acc_t to_acc(float v) { return static_cast<acc_t>(v); }
template <typename acc_t>
__device__ __forceinline__ acc_t to_acc(double v) { return static_cast<acc_t>(v); }
template <typename acc_t>
__device__ __forceinline__ acc_t to_acc(__half v) { return static_cast<acc_t>(__half2float(v)); }
template <typename acc_t>
__device__ __forceinline__ acc_t to_acc(__nv_bfloat16 v) {
  return static_cast<acc_t>(__bfloat162float(v));
}

template <typename out_t, typename acc_t>
__device__ __forceinline__ out_t from_acc(acc_t v) {
  if constexpr (std::is_same_v<out_t, __half>) {
    return __float2half_rn(static_cast<float>(v));
  } else if constexpr (std::is_same_v<out_t, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(v));
  } else {
    return static_cast<out_t>(v);
  }
}

}  // namespace cuda
}  // namespace tiue
