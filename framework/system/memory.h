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

// Keeps memory that tensors free inside the process for the next ones. glibc's malloc otherwise maps blocks over
// its (dynamic) threshold afresh and returns the heap's free top to the kernel, so a training step's activations
// fault their pages in again every step (about 2% of a QAT step on a 512-wide model). Sets M_MMAP_THRESHOLD to
// 32 MiB, the most glibc allows, and M_TRIM_THRESHOLD to 1 GiB; both are needed (either alone turns the dynamic
// threshold off at 128 KiB). Does nothing when malloc_knobs_in_environment(): the user's choice stands. The
// Runtime calls it once MPI is up: called before, a QAT step on 2 ranks still took 14,557 faults, after 6,148
// (presumably MPI's start-up resets them). Returns whether it set them.
bool keep_freed_memory();

// The environment sets glibc malloc's own knobs (GLIBC_TUNABLES with glibc.malloc.*, MALLOC_*_).
bool malloc_knobs_in_environment();

// "1.23 GB" (decimal units, as model sizes are quoted).
std::string bytes_text(int64_t bytes);

}  // namespace qforge::sys
