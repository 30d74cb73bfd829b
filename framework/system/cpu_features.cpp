#include "framework/system/cpu_features.h"

#include <cstdlib>

namespace qforge::sys {

bool avx2_kernels() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool yes =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && !std::getenv("QFORGE_DISABLE_AVX2");
  return yes;
#else
  return false;
#endif
}

}  // namespace qforge::sys
