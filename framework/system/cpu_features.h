// Which instruction sets qforge's own vectorised kernels may use on this CPU.
#pragma once

namespace qforge::sys {

// The CPU runs AVX2 and FMA and QFORGE_DISABLE_AVX2 is not set (checked once; the variable makes the portable loops
// run, as tests do). False off x86. Kernels built with -mavx2 (quant/fake_quant_avx2.cpp, model/swiglu_avx2.cpp)
// run only when it is true.
bool avx2_kernels();

}  // namespace qforge::sys
