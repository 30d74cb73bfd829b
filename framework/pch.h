// Precompiled header for every target built against libtorch. Only stable third-party and standard headers.
#pragma once

#include <torch/torch.h>
#include <mpi.h>
#include <yaml-cpp/yaml.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>
