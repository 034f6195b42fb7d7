#pragma once
/// \file mpi_error.hpp
/// \brief MPI failures as kfopt exceptions: every MPI call of the kfopt::mpi layer checks its
/// return code and throws MpiError naming the kfopt operation, the MPI call, MPI's own error
/// text and the message size.
///
/// Return codes only reach kfopt when the communicator's error handler is MPI_ERRORS_RETURN,
/// which kfopt::mpi::Communicator sets at construction (MPI's default, MPI_ERRORS_ARE_FATAL,
/// aborts the job instead).
///
/// After an MpiError from a collective the other ranks may still be inside the same
/// collective (an error detected on one rank only, e.g. a bad argument, is not seen by the
/// others). MPI does not promise that the communicator is usable afterwards; the usual
/// reaction is to report and call MPI_Abort.

#include <mpi.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace kfopt {

/// An MPI call made by kfopt::mpi failed (or MPI was used in a state where no call is
/// allowed, e.g. before MPI_Init or on MPI_COMM_NULL).
class MpiError : public std::runtime_error {
 public:
  /// An error with its message (naming the operation and the MPI call) and MPI's error code.
  MpiError(const std::string& what, int error_code)
      : std::runtime_error(what), error_code_(error_code) {}

  /// The MPI error code (MPI_ERR_…); its class is `MPI_Error_class(error_code(), &c)`.
  int error_code() const noexcept { return error_code_; }

 private:
  int error_code_;
};

namespace mpi {
namespace detail {

/// MPI's text for an error code, or a fallback when MPI cannot give one.
inline std::string mpi_error_text(int error_code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(error_code, text, &length) != MPI_SUCCESS || length <= 0) {
    return "MPI error code " + std::to_string(error_code);
  }
  return std::string(text, static_cast<std::size_t>(length));
}

/// Throws MpiError unless `rc` is MPI_SUCCESS. The message is built only on failure, so the
/// check costs nothing (and allocates nothing) on the success path.
///
/// `operation` is the kfopt operation (`kfopt::mpi::Communicator::allreduce_sum`), `call`
/// the MPI function, `count` the number of elements of the message (−1: not applicable).
inline void check_mpi(int rc, const char* operation, const char* call,
                      std::int64_t count = -1) {
  if (rc == MPI_SUCCESS) return;
  std::string what = std::string(operation) + ": " + call + " failed: " + mpi_error_text(rc);
  int error_class = rc;
  if (MPI_Error_class(rc, &error_class) == MPI_SUCCESS && error_class != rc) {
    what += " (class " + mpi_error_text(error_class) + ")";
  }
  if (count >= 0) what += "; message of " + std::to_string(count) + " elements";
  throw MpiError(what, rc);
}

}  // namespace detail
}  // namespace mpi
}  // namespace kfopt
