#pragma once
// The two failure kinds of attrace (see docs/architecture.md): bad input from a caller, a file or a
// config throws a typed exception whose message names the file/field/example; broken internal
// invariants assert. Library code never calls exit/abort on bad input.
#include <stdexcept>
#include <string>

namespace attrace {

/// Base of every exception attrace throws on purpose.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Bad input: a file, field, example or setting that cannot be used. The message names it.
class InputError : public Error {
 public:
  using Error::Error;
};

/// A failure of the environment (I/O, a library) rather than of the input's content.
class RuntimeFailure : public Error {
 public:
  using Error::Error;
};

/// Numeric trouble in a computed quantity (NaN/Inf), named with the example that produced it.
class NumericError : public InputError {
 public:
  using InputError::InputError;
};

}  // namespace attrace

/// Throws `type` with `msg` when `cond` is false; the one generic check every module builds on.
#define ATTRACE_CHECK(cond, type, msg)      \
  do {                                      \
    if (!(cond)) throw type(std::string(msg)); \
  } while (0)
