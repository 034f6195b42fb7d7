#pragma once
/// \file version.hpp
/// \brief kfopt's version, as numbers and as a string.

/// Major version of the headers.
#define KFOPT_VERSION_MAJOR 0
/// Minor version of the headers.
#define KFOPT_VERSION_MINOR 1
/// Patch version of the headers.
#define KFOPT_VERSION_PATCH 0
/// The version as "major.minor.patch".
#define KFOPT_VERSION_STRING "0.1.0"

namespace kfopt {

/// Version of the headers in use, e.g. for logs and checkpoints.
struct Version {
  /// Major version.
  int major;
  /// Minor version.
  int minor;
  /// Patch version.
  int patch;
};

/// The version of the headers in use.
inline constexpr Version version{KFOPT_VERSION_MAJOR, KFOPT_VERSION_MINOR, KFOPT_VERSION_PATCH};

}  // namespace kfopt
