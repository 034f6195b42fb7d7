#pragma once
/// \file version.hpp
/// \brief kfopt's version, as numbers and as a string.

#define KFOPT_VERSION_MAJOR 0
#define KFOPT_VERSION_MINOR 1
#define KFOPT_VERSION_PATCH 0
#define KFOPT_VERSION_STRING "0.1.0"

namespace kfopt {

/// Version of the headers in use, e.g. for logs and checkpoints.
struct Version {
  int major;
  int minor;
  int patch;
};

inline constexpr Version version{KFOPT_VERSION_MAJOR, KFOPT_VERSION_MINOR, KFOPT_VERSION_PATCH};

}  // namespace kfopt
