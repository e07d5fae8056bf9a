// The FMA scoring kernel for AVX2 + FMA (compiled with -mavx2 -mfma).
#define ATTRACE_FMA_ISA 2
#include "cpu_fma_impl.hpp"
