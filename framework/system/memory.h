// Resident memory of this process, from Linux's /proc/self/status: what the memory planner is checked against.
#pragma once

#include <cstdint>
#include <string>

namespace qforge::sys {

int64_t current_rss_bytes();  // VmRSS; 0 where /proc is unavailable
int64_t peak_rss_bytes();     // VmHWM: the most resident since the start or the last reset_peak_rss()

// Restarts VmHWM from the current RSS (writes "5" to /proc/self/clear_refs). Returns false where the kernel
// does not allow it; peak_rss_bytes() then keeps the lifetime peak.
bool reset_peak_rss();

// "1.23 GB" (decimal units, as model sizes are quoted).
std::string bytes_text(int64_t bytes);

}  // namespace qforge::sys
