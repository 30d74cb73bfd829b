// Error types shared by every component. Messages are complete sentences a user can act on: they name the
// file, key, tensor or rank concerned and what was expected.
#pragma once

#include <stdexcept>
#include <string>

namespace qforge {

// Any failure qforge reports to the user.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Bad user input that every rank sees alike (command line, config file): reported once, by rank 0.
class UsageError : public Error {
 public:
  using Error::Error;
};

}  // namespace qforge

// Throws qforge::Error with `message` (any expression convertible to std::string) when `condition` is false.
#define QF_CHECK(condition, message)                          \
  do {                                                        \
    if (!(condition)) throw ::qforge::Error(std::string(message)); \
  } while (0)
