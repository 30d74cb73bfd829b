#pragma once

namespace qforge {
// qforge's version, "MAJOR.MINOR.PATCH" (from CMake's project()).
const char* version();
}  // namespace qforge
