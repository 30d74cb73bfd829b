// "[out, in]": a tensor shape as error messages print it.
#pragma once

#include <fmt/format.h>
#include <torch/torch.h>

#include <string>

namespace qforge {

inline std::string shape_text(c10::IntArrayRef shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

}  // namespace qforge
