// Error types and check macros for the whole library.
// DS_CHECK is for what a user can cause (bad config, shapes, files, requests) and throws a ds::Error subclass
// whose message starts with "[component]" and says what was expected, what was found and what to do.
// DS_ASSERT is for our own invariants (a bug): always on, throws InternalError. DS_DEBUG_ASSERT is for hot loops.
#pragma once

#include <fmt/core.h>

#include <stdexcept>
#include <string>

namespace ds {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

class ConfigError : public Error { using Error::Error; };
class ShapeError : public Error { using Error::Error; };
class IoError : public Error { using Error::Error; };
class CommError : public Error { using Error::Error; };
class DeviceError : public Error { using Error::Error; };
class OutOfMemory : public Error { using Error::Error; };
class InternalError : public Error { using Error::Error; };

namespace detail {
[[noreturn]] void throw_internal(const char* cond, const char* file, int line, const std::string& msg);
}  // namespace detail

}  // namespace ds

// DS_CHECK(cond, "[component] message {}", values...) throws ds::Error.
#define DS_CHECK(cond, ...) DS_CHECK_AS(::ds::Error, cond, __VA_ARGS__)
// DS_CHECK_AS(ConfigError, cond, "[config] ...", values...) throws the given ds::Error subclass.
#define DS_CHECK_AS(ErrorType, cond, ...)                  \
  do {                                                     \
    if (!(cond)) [[unlikely]] {                            \
      throw ErrorType(::fmt::format(__VA_ARGS__));         \
    }                                                      \
  } while (0)
// Throws unconditionally; for switch defaults and rejected user input found without a single condition.
#define DS_THROW(ErrorType, ...) throw ErrorType(::fmt::format(__VA_ARGS__))

#define DS_ASSERT(cond, ...)                                                                    \
  do {                                                                                          \
    if (!(cond)) [[unlikely]] {                                                                 \
      ::ds::detail::throw_internal(#cond, __FILE__, __LINE__, ::fmt::format("" __VA_ARGS__)); \
    }                                                                                           \
  } while (0)

#ifdef NDEBUG
#define DS_DEBUG_ASSERT(cond, ...) ((void)0)
#else
#define DS_DEBUG_ASSERT(cond, ...) DS_ASSERT(cond, __VA_ARGS__)
#endif
