#pragma once

#include "launch/commands.h"

#include <vector>

namespace qforge {
// convert, eval, generate-text.
std::vector<Command> model_commands();
}  // namespace qforge
