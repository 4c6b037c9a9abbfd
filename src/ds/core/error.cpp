// Out-of-line pieces of the error machinery, so that the macros stay small at each call site.
#include "ds/core/error.h"

namespace ds::detail {

void throw_internal(const char* cond, const char* file, int line, const std::string& msg) {
  std::string text = fmt::format("[internal] assertion `{}` failed at {}:{}", cond, file, line);
  if (!msg.empty()) text += ": " + msg;
  text += " (this is a bug in deepspeed.cpp; please report it)";
  throw InternalError(text);
}

}  // namespace ds::detail
