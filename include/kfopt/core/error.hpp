#pragma once
/// \file error.hpp
/// \brief The three error channels of kfopt.
///
/// 1. Wrong use at the public API (mismatched shapes, a non-symmetric factor where a
///    symmetric one is required, an empty batch): `ShapeError` / `InvalidInputError`,
///    both `std::invalid_argument`, thrown before any state changes. Messages name the
///    operation, the operand and the shapes.
/// 2. Bad hyperparameters: `HyperparameterError` (a `std::invalid_argument`), thrown by
///    `validate()` at construction, naming the field, its value and the valid range.
/// 3. Numerical trouble at run time (a non-finite statistic, a singular factor, a finite
///    input whose result overflows):
///    a `Status` value returned to the caller, and a counter in the state. Never a NaN
///    that leaks silently. `NumericalError` (a `std::runtime_error`) is thrown only where
///    no status can be returned (e.g. an accessor asked for a result that does not exist).

#include <stdexcept>
#include <string>

namespace kfopt {

/// Operand shapes do not fit the operation.
class ShapeError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// An input value is outside what the operation accepts (not symmetric, negative damping,
/// an empty batch, lengths that disagree with the data, ...).
class InvalidInputError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// A hyperparameter is outside its documented range.
class HyperparameterError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// A result was requested that numerical trouble prevented from existing.
class NumericalError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Outcome of a numerical computation (the third error channel).
enum class Status {
  Success,         ///< the computation ran and its result is valid
  NotComputed,     ///< nothing has been computed yet
  NonFiniteInput,  ///< the input held NaN or Inf; the state was left unchanged
  NumericalIssue,  ///< the computation failed (e.g. a factor is not positive definite)
  NoConvergence,   ///< an iteration stopped at its limit before reaching its tolerance
  Overflow,        ///< finite input, but the result (new parameters or state) would not be
                   ///< finite; nothing was written
};

/// Human-readable name of a status, for logs and error messages.
inline const char* to_string(Status status) noexcept {
  switch (status) {
    case Status::Success: return "success";
    case Status::NotComputed: return "not computed";
    case Status::NonFiniteInput: return "non-finite input";
    case Status::NumericalIssue: return "numerical issue";
    case Status::NoConvergence: return "no convergence";
    case Status::Overflow: return "overflow";
  }
  return "unknown status";
}

}  // namespace kfopt
