#pragma once
// ATTRACE_HD marks small functions that host and device code share, so that the CPU and CUDA
// backends compute the same bits from the same source.
#if defined(__CUDACC__)
#define ATTRACE_HD __host__ __device__ __forceinline__
#else
#define ATTRACE_HD inline
#endif
