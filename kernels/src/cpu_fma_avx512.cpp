// The FMA scoring kernel for AVX-512 (F, VL, DQ) + FMA: two outputs per 512-bit vector.
#define ATTRACE_FMA_ISA 512
#include "cpu_fma_impl.hpp"
