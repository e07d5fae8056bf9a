// The Linear-layer product for AVX-512F + FMA: 12 x 32 micro tiles (two 512-bit vectors per row).
#define ATTRACE_LINEAR_ISA 512
#include "cpu_linear_impl.hpp"
