// The Linear-layer product for AVX2 + FMA (compiled with -mavx2 -mfma): 6 x 16 micro tiles.
#define ATTRACE_LINEAR_ISA 2
#include "cpu_linear_impl.hpp"
