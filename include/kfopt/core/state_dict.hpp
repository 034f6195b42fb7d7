#pragma once
/// \file state_dict.hpp
/// \brief The state dict: an optimizer's complete state as a named tree of arrays and
/// scalars, plus the hyperparameters it was made with. One format for every optimizer;
/// files are written by `io/checkpoint.hpp` (HDF5), never by an optimizer.
///
/// An entry is named by a path of components separated by '/', e.g. `layer0/A` or
/// `fc1.weight/first_moment`; a checkpoint file stores it as the dataset of that path inside
/// the optimizer's group. Each entry has a scalar type (float32, float64 or int64) and a shape
/// (rank 0: a scalar; rank 1: a vector; rank 2: a column-major matrix), and carries the check
/// a loader applies to its values (EntryConstraint).
///
/// Every optimizer exposes
///
///     StateDict state_dict() const;
///     void load_state_dict(const StateDict& dict, const LoadOptions& options = {});
///
/// `load_state_dict` compares the dict with the optimizer's own `state_dict()` and refuses it
/// (an exception naming the operation, the entry and what was expected) unless
///   - the optimizer type and the scalar type are the same,
///   - the entry names are the same (none missing, none extra),
///   - each entry has the same scalar type and shape (entries marked `variable_rows`, such as
///     statistics recorded for a step not yet taken, may differ in their number of rows),
///   - each entry's values pass its constraint (finite; nonnegative; symmetric positive
///     semi-definite; a Cholesky factor with a positive diagonal; integers within range),
///   - the hyperparameters are compatible (see HyperparameterKind): structural ones (what
///     the state's layout or meaning depends on: amsgrad, centered, the Kalman form, the
///     Fisher estimate, ...) equal the constructed optimizer's; continuous ones (decays,
///     ε, prior variance, ...) equal them too unless `LoadOptions::allow_changed_hyperparameters`
///     is set, in which case the constructed values are kept; the learning rate, which a
///     schedule changes during a run through `set_learning_rate`, is restored from the dict
///     (as `torch.optim.Optimizer.load_state_dict` restores its parameter groups).
/// A refused load leaves the optimizer exactly as it was: everything is checked before
/// anything is written.
///
/// Cost: a state dict is a copy of the state (about the optimizer's memory once more).

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "kfopt/core/error.hpp"
#include "kfopt/core/parameter_block.hpp"
#include "kfopt/core/scalar_traits.hpp"
#include "kfopt/core/step_guard.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/version.hpp"

namespace kfopt {

/// Element type of a state entry.
enum class ScalarType { Float32, Float64, Int64 };

/// "float32", "float64" or "int64" (the names used in checkpoint files).
inline const char* to_string(ScalarType t) noexcept {
  switch (t) {
    case ScalarType::Float32: return "float32";
    case ScalarType::Float64: return "float64";
    case ScalarType::Int64: return "int64";
  }
  return "unknown";
}

/// Size in bytes of one element.
inline std::size_t size_of(ScalarType t) noexcept { return t == ScalarType::Float32 ? 4 : 8; }

/// The ScalarType of a C++ type (float, double, std::int64_t).
template <typename T>
constexpr ScalarType scalar_type_of() {
  static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value ||
                    std::is_same<T, std::int64_t>::value,
                "a state entry holds float, double or std::int64_t");
  return std::is_same<T, float>::value    ? ScalarType::Float32
         : std::is_same<T, double>::value ? ScalarType::Float64
                                          : ScalarType::Int64;
}

/// The check a loader applies to an entry's values (beyond its type and shape).
enum class EntryConstraint {
  Finite,          ///< every value finite (the default)
  Nonnegative,     ///< finite and ≥ 0 (variances, second moments)
  SymmetricPsd,    ///< square, finite, symmetric and positive semi-definite up to rounding
  CholeskyFactor,  ///< square, finite, lower triangular with a positive diagonal
  Unchecked,       ///< any value (NaN and Inf included)
};

/// One named array or scalar of a state dict. Data are stored column-major, as raw bytes of
/// the entry's scalar type, so float and double values round-trip bit for bit.
struct StateEntry {
  /// The scalar type of the values.
  ScalarType type = ScalarType::Float64;
  std::vector<std::int64_t> shape;   ///< {} scalar, {n} vector, {rows, cols} matrix
  std::vector<unsigned char> bytes;  ///< size() · size_of(type) bytes, column-major
  /// The values a loader accepts.
  EntryConstraint constraint = EntryConstraint::Finite;
  std::int64_t min_value = std::numeric_limits<std::int64_t>::min();  ///< int64 entries
  std::int64_t max_value = std::numeric_limits<std::int64_t>::max();  ///< int64 entries
  bool variable_rows = false;  ///< a loader accepts any number of rows (columns must match)

  /// Number of dimensions: 0 scalar, 1 vector, 2 matrix.
  int rank() const noexcept { return static_cast<int>(shape.size()); }
  /// Rows (1 for a scalar).
  std::int64_t rows() const noexcept { return shape.empty() ? 1 : shape[0]; }
  /// Columns (1 for a scalar or vector).
  std::int64_t cols() const noexcept { return shape.size() < 2 ? 1 : shape[1]; }
  /// Number of values: rows · cols.
  std::int64_t size() const noexcept { return rows() * cols(); }

  /// The values as T (which must be the entry's type).
  template <typename T>
  const T* data() const {
    check_type<T>();
    return reinterpret_cast<const T*>(bytes.data());
  }
  template <typename T>
  /// As above, writable.
  T* data() {
    check_type<T>();
    return reinterpret_cast<T*>(bytes.data());
  }
  /// "3x4 float64", "scalar int64", "5 float32".
  std::string describe() const {
    std::ostringstream os;
    if (shape.empty()) os << "scalar";
    for (std::size_t i = 0; i < shape.size(); ++i) os << (i ? "x" : "") << shape[i];
    os << ' ' << to_string(type);
    return os.str();
  }

 private:
  template <typename T>
  void check_type() const {
    if (scalar_type_of<T>() != type) {
      throw InvalidInputError(std::string("kfopt::StateEntry: entry holds ") + to_string(type) +
                              ", not " + to_string(scalar_type_of<T>()));
    }
  }
};

/// How a loader treats a hyperparameter recorded in a state dict.
enum class HyperparameterKind {
  Structural,  ///< must equal the constructed optimizer's (the state depends on it)
  Continuous,  ///< must equal it unless LoadOptions::allow_changed_hyperparameters (then kept)
  Restored,    ///< taken from the dict (the learning rate, changed by schedules during a run)
};

/// A hyperparameter value: reals as double, integers, booleans and enumerations as int64.
using HyperparameterValue = std::variant<double, std::int64_t, std::string>;

/// A hyperparameter recorded in a state dict: its value and how a loader treats it.
struct Hyperparameter {
  /// The recorded value.
  HyperparameterValue value;
  /// How a loader compares it with the constructed optimizer's.
  HyperparameterKind kind = HyperparameterKind::Structural;
};

/// The value as text: reals with 17 significant digits, strings in double quotes.
inline std::string to_string(const HyperparameterValue& v) {
  std::ostringstream os;
  os.precision(17);
  if (const double* d = std::get_if<double>(&v)) os << *d;
  if (const std::int64_t* i = std::get_if<std::int64_t>(&v)) os << *i;
  if (const std::string* s = std::get_if<std::string>(&v)) os << '"' << *s << '"';
  return os.str();
}

/// Options of `load_state_dict`.
struct LoadOptions {
  /// Accept continuous hyperparameters (decays, ε, prior variance, ...) that differ from the
  /// constructed optimizer's, keeping the constructed values. Default off: a dict made with
  /// other values is refused. Structural hyperparameters must always match.
  bool allow_changed_hyperparameters = false;
};

/// A named tree of arrays and scalars plus hyperparameters, tagged with the type of the
/// object it describes (e.g. "kfopt::Adam") and its scalar type. Names are paths of
/// components separated by '/'; a component is non-empty, not "." or "..", and a name is
/// never both an entry and a prefix of another entry (a file stores groups along the path).
/// The name "hyperparameters" is reserved at the top level.
class StateDict {
 public:
  StateDict() = default;
  /// An empty dict of type `type` whose values use `scalar_type`.
  StateDict(std::string type, ScalarType scalar_type)
      : type_(std::move(type)), scalar_type_(scalar_type) {}

  /// Type name of the described object (e.g. "kfopt::Adam").
  const std::string& type() const noexcept { return type_; }
  /// Scalar type of the described object.
  ScalarType scalar_type() const noexcept { return scalar_type_; }
  /// Sets the type name and scalar type.
  void set_type(std::string type, ScalarType scalar_type) {
    type_ = std::move(type);
    scalar_type_ = scalar_type;
  }

  /// Adds (or replaces) an entry. Throws InvalidInputError for an invalid name, a name that
  /// collides with the path of another entry, or bytes that do not fit the shape.
  StateEntry& insert(const std::string& name, StateEntry entry) {
    const char* op = "kfopt::StateDict::insert";
    require_valid_name(op, name);
    for (std::int64_t s : entry.shape) {
      if (s < 0) throw ShapeError(std::string(op) + ": entry '" + name + "' has a negative extent");
    }
    if (entry.shape.size() > 2) {
      throw ShapeError(std::string(op) + ": entry '" + name + "' has rank > 2");
    }
    if (entry.bytes.size() != static_cast<std::size_t>(entry.size()) * size_of(entry.type)) {
      throw ShapeError(std::string(op) + ": entry '" + name + "' (" + entry.describe() +
                       ") holds " + std::to_string(entry.bytes.size()) + " bytes");
    }
    for (const auto& kv : entries_) {
      if (kv.first != name && (is_prefix(kv.first, name) || is_prefix(name, kv.first))) {
        throw InvalidInputError(std::string(op) + ": entry '" + name + "' collides with entry '" +
                                kv.first + "' (one is a group on the other's path)");
      }
    }
    return entries_[name] = std::move(entry);
  }

  /// Adds a matrix (rank 2) or, with rank 1, a vector (m must then have one column).
  template <typename Derived>
  StateEntry& set_array(const std::string& name, const Eigen::DenseBase<Derived>& m,
                        int rank = 2) {
    using T = typename Derived::Scalar;
    StateEntry e;
    e.type = scalar_type_of<T>();
    if (rank == 1) {
      if (m.cols() != 1 && m.size() != 0) {
        throw ShapeError("kfopt::StateDict::set_array: entry '" + name + "' is " +
                         detail::shape_of(m) + ", not a vector");
      }
      e.shape = {static_cast<std::int64_t>(m.rows())};
    } else {
      e.shape = {static_cast<std::int64_t>(m.rows()), static_cast<std::int64_t>(m.cols())};
    }
    e.bytes.resize(static_cast<std::size_t>(m.size()) * sizeof(T));
    if (m.size() > 0) {
      const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> plain = m;
      std::memcpy(e.bytes.data(), plain.data(), e.bytes.size());
    }
    return insert(name, std::move(e));
  }

  /// Adds a rank-0 entry of type T (float, double or std::int64_t).
  template <typename T>
  StateEntry& set_scalar(const std::string& name, T value) {
    StateEntry e;
    e.type = scalar_type_of<T>();
    e.bytes.resize(sizeof(T));
    std::memcpy(e.bytes.data(), &value, sizeof(T));
    return insert(name, std::move(e));
  }

  /// Adds the state of a standard random engine (std::mt19937, std::mt19937_64, ...) as an
  /// int64 vector (its textual state, each word stored bit for bit), e.g. the data-order RNG
  /// of a training loop.
  template <typename Engine>
  StateEntry& set_random_engine(const std::string& name, const Engine& engine) {
    std::ostringstream os;
    os << engine;
    std::istringstream is(os.str());
    std::vector<std::int64_t> words;
    unsigned long long w = 0;
    while (is >> w) {
      std::int64_t v;
      std::memcpy(&v, &w, sizeof v);
      words.push_back(v);
    }
    return set_array(name, Eigen::Map<const Eigen::Matrix<std::int64_t, Eigen::Dynamic, 1>>(
                               words.data(), static_cast<Eigen::Index>(words.size())),
                     1);
  }
  /// Restores a random engine saved by set_random_engine; throws InvalidInputError (and leaves
  /// `engine` unchanged) if the entry does not hold a state of this engine type.
  template <typename Engine>
  void random_engine(const std::string& name, Engine& engine) const {
    const StateEntry& e = entry(name);
    std::ostringstream os;
    for (std::int64_t i = 0; i < e.size(); ++i) {
      unsigned long long w;
      std::memcpy(&w, e.data<std::int64_t>() + i, sizeof w);
      os << (i ? " " : "") << w;
    }
    std::istringstream is(os.str());
    Engine restored;
    is >> restored;
    if (is.fail() || e.rank() != 1) {
      throw InvalidInputError("kfopt::StateDict::random_engine: entry '" + name + "' (" +
                              e.describe() + ") is not the state of this random engine");
    }
    engine = restored;
  }

  /// Whether an entry named `name` exists.
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  /// All entries, by name.
  const std::map<std::string, StateEntry>& entries() const noexcept { return entries_; }

  /// The entry of this name; throws InvalidInputError naming the dict and the entry.
  const StateEntry& entry(const std::string& name) const {
    const auto it = entries_.find(name);
    if (it == entries_.end()) {
      throw InvalidInputError("kfopt::StateDict::entry: state dict '" + type_ + "' has no entry '" +
                              name + "'");
    }
    return it->second;
  }

  /// A rank-1 or rank-2 entry as a matrix of T (a vector as n×1).
  template <typename T>
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> array(const std::string& name) const {
    const StateEntry& e = entry(name);
    return Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>>(
        e.data<T>(), static_cast<Eigen::Index>(e.rows()), static_cast<Eigen::Index>(e.cols()));
  }

  /// A rank-0 entry of type T.
  template <typename T>
  T scalar(const std::string& name) const {
    const StateEntry& e = entry(name);
    if (e.rank() != 0) {
      throw ShapeError("kfopt::StateDict::scalar: entry '" + name + "' is " + e.describe() +
                       ", not a scalar");
    }
    return *e.data<T>();
  }

  /// Records hyperparameter `name` with its value and kind.
  void set_hyperparameter(const std::string& name, HyperparameterValue value,
                          HyperparameterKind kind = HyperparameterKind::Structural) {
    require_valid_component("kfopt::StateDict::set_hyperparameter", name, name);
    hyperparameters_[name] = Hyperparameter{std::move(value), kind};
  }
  /// All recorded hyperparameters, by name.
  const std::map<std::string, Hyperparameter>& hyperparameters() const noexcept {
    return hyperparameters_;
  }
  /// Hyperparameter `name`; throws InvalidInputError if it is not recorded.
  const Hyperparameter& hyperparameter(const std::string& name) const {
    const auto it = hyperparameters_.find(name);
    if (it == hyperparameters_.end()) {
      throw InvalidInputError("kfopt::StateDict::hyperparameter: state dict '" + type_ +
                              "' has no hyperparameter '" + name + "'");
    }
    return it->second;
  }

  /// Whether two dicts hold the same type, entries (names, types, shapes, bytes) and
  /// hyperparameter values: bit-for-bit equality of the state.
  friend bool operator==(const StateDict& a, const StateDict& b) {
    if (a.type_ != b.type_ || a.scalar_type_ != b.scalar_type_) return false;
    if (a.entries_.size() != b.entries_.size()) return false;
    for (auto i = a.entries_.begin(), j = b.entries_.begin(); i != a.entries_.end(); ++i, ++j) {
      if (i->first != j->first || i->second.type != j->second.type ||
          i->second.shape != j->second.shape || i->second.bytes != j->second.bytes) {
        return false;
      }
    }
    if (a.hyperparameters_.size() != b.hyperparameters_.size()) return false;
    for (auto i = a.hyperparameters_.begin(), j = b.hyperparameters_.begin();
         i != a.hyperparameters_.end(); ++i, ++j) {
      if (i->first != j->first || !same_value(i->second.value, j->second.value)) return false;
    }
    return true;
  }
  /// Whether two dicts differ.
  friend bool operator!=(const StateDict& a, const StateDict& b) { return !(a == b); }

  /// Bitwise equality of two hyperparameter values (so that -0.0 ≠ 0.0, like the file).
  static bool same_value(const HyperparameterValue& a, const HyperparameterValue& b) {
    if (a.index() != b.index()) return false;
    if (const double* x = std::get_if<double>(&a)) {
      const double y = std::get<double>(b);
      return std::memcmp(x, &y, sizeof(double)) == 0;
    }
    return a == b;
  }

  /// Throws InvalidInputError unless `name` is a valid entry path.
  static void require_valid_name(const char* op, const std::string& name) {
    std::size_t start = 0;
    while (true) {
      const std::size_t slash = name.find('/', start);
      const std::string part =
          name.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
      require_valid_component(op, name, part);
      if (start == 0 && part == "hyperparameters") {
        throw InvalidInputError(std::string(op) + ": entry name '" + name +
                                "' uses the reserved group 'hyperparameters'");
      }
      if (slash == std::string::npos) break;
      start = slash + 1;
    }
  }

 private:
  static void require_valid_component(const char* op, const std::string& name,
                                      const std::string& part) {
    if (part.empty() || part == "." || part == ".." || part.find('/') != std::string::npos) {
      throw InvalidInputError(std::string(op) + ": invalid name '" + name +
                              "' (components separated by '/' must be non-empty and not '.' or "
                              "'..')");
    }
  }
  // Whether `group` names a group on the path of `name` ("a" for "a/b").
  static bool is_prefix(const std::string& group, const std::string& name) {
    return name.size() > group.size() && name.compare(0, group.size(), group) == 0 &&
           name[group.size()] == '/';
  }

  std::string type_;
  ScalarType scalar_type_ = ScalarType::Float64;
  std::map<std::string, StateEntry> entries_;
  std::map<std::string, Hyperparameter> hyperparameters_;
};

namespace detail {

template <typename T>
bool entry_values_ok(const StateEntry& e, std::string& why) {
  const T* v = e.data<T>();
  const Eigen::Index rows = static_cast<Eigen::Index>(e.rows());
  const Eigen::Index cols = static_cast<Eigen::Index>(e.cols());
  const Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>> m(v, rows, cols);
  if (e.constraint == EntryConstraint::Unchecked) return true;
  if (!m.allFinite()) {
    why = "holds NaN or Inf";
    return false;
  }
  switch (e.constraint) {
    case EntryConstraint::Nonnegative:
      if (m.size() > 0 && !(m.minCoeff() >= T(0))) {
        why = "holds a negative value (must be >= 0)";
        return false;
      }
      return true;
    case EntryConstraint::SymmetricPsd: {
      if (rows != cols) {
        why = "is not square";
        return false;
      }
      if (!is_symmetric(m)) {
        why = "is not symmetric";
        return false;
      }
      // Positive semi-definite up to rounding: M + δ I has a Cholesky factor for
      // δ = n · tol · max(1, max|M|) (one n³/3 factorization).
      if (rows == 0) return true;
      Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> shifted = m;
      const T scale = std::max(T(1), m.cwiseAbs().maxCoeff());
      shifted.diagonal().array() +=
          T(rows) * ScalarTraits<T>::symmetry_tolerance() * scale;
      if (Eigen::LLT<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>>(shifted).info() !=
          Eigen::Success) {
        why = "is not positive semi-definite";
        return false;
      }
      return true;
    }
    case EntryConstraint::CholeskyFactor:
      if (rows != cols) {
        why = "is not square";
        return false;
      }
      for (Eigen::Index j = 0; j < cols; ++j) {
        if (!(m(j, j) > T(0))) {
          why = "is not a Cholesky factor (its diagonal must be > 0)";
          return false;
        }
        for (Eigen::Index i = 0; i < j; ++i) {
          if (m(i, j) != T(0)) {
            why = "is not a Cholesky factor (its strict upper triangle must be zero)";
            return false;
          }
        }
      }
      return true;
    default:
      return true;
  }
}

/// Throws unless `given` can be loaded into an object whose own dict is `expected` (see the
/// file comment for the rules). `op` names the loading operation in every message. A
/// template only so that a translation unit that never loads does not compile the value
/// checks (their Cholesky tests in float and double: about 2 s of compile time per unit).
template <typename Unused = void>
void check_state_dict(const char* op, const StateDict& expected, const StateDict& given,
                      const LoadOptions& options) {
  const std::string o(op);
  if (given.type() != expected.type()) {
    throw InvalidInputError(o + ": the state dict is of type '" + given.type() + "' but this is '" +
                            expected.type() + "'");
  }
  if (given.scalar_type() != expected.scalar_type()) {
    throw InvalidInputError(o + ": the state dict holds " + to_string(given.scalar_type()) +
                            " state but this optimizer is " + to_string(expected.scalar_type()));
  }
  // Unknown and missing hyperparameters, the least scoped first: an optimizer's option that
  // one side lacks explains the entries of its layers that the other lacks.
  const auto depth = [](const std::string& name) { return std::count(name.begin(), name.end(), '.'); };
  const std::string* unknown = nullptr;
  for (const auto& kv : given.hyperparameters()) {
    if (expected.hyperparameters().count(kv.first) == 0 &&
        (unknown == nullptr || depth(kv.first) < depth(*unknown))) {
      unknown = &kv.first;
    }
  }
  const std::string* missing = nullptr;
  for (const auto& kv : expected.hyperparameters()) {
    if (given.hyperparameters().count(kv.first) == 0 &&
        (missing == nullptr || depth(kv.first) < depth(*missing))) {
      missing = &kv.first;
    }
  }
  if (unknown != nullptr && (missing == nullptr || depth(*unknown) <= depth(*missing))) {
    throw InvalidInputError(o + ": unknown hyperparameter '" + *unknown + "' in the state dict");
  }
  if (missing != nullptr) {
    throw InvalidInputError(o + ": hyperparameter '" + *missing + "' is missing from the state dict");
  }
  for (const auto& kv : expected.hyperparameters()) {
    const auto it = given.hyperparameters().find(kv.first);
    const HyperparameterValue& want = kv.second.value;
    const HyperparameterValue& got = it->second.value;
    if (want.index() != got.index()) {
      throw InvalidInputError(o + ": hyperparameter '" + kv.first + "' = " + to_string(got) +
                              " has the wrong type (expected a value like " + to_string(want) + ")");
    }
    const bool must_match =
        kv.second.kind == HyperparameterKind::Structural ||
        (kv.second.kind == HyperparameterKind::Continuous && !options.allow_changed_hyperparameters);
    if (must_match && !StateDict::same_value(want, got)) {
      throw InvalidInputError(
          o + ": hyperparameter '" + kv.first + "' is " + to_string(got) +
          " in the state dict but " + to_string(want) + " in this optimizer" +
          (kv.second.kind == HyperparameterKind::Structural
               ? " (structural: must match)"
               : " (set LoadOptions::allow_changed_hyperparameters to keep this optimizer's)"));
    }
    if (kv.second.kind == HyperparameterKind::Restored) {
      const double* d = std::get_if<double>(&got);
      if (d != nullptr && !std::isfinite(*d)) {
        throw InvalidInputError(o + ": hyperparameter '" + kv.first + "' is not finite");
      }
    }
  }
  for (const auto& kv : given.entries()) {
    if (!expected.contains(kv.first)) {
      throw InvalidInputError(o + ": unexpected entry '" + kv.first + "' (" + kv.second.describe() +
                              ") in the state dict");
    }
  }
  for (const auto& kv : expected.entries()) {
    const std::string& name = kv.first;
    const StateEntry& want = kv.second;
    if (!given.contains(name)) {
      throw InvalidInputError(o + ": entry '" + name + "' (" + want.describe() +
                              ") is missing from the state dict");
    }
    const StateEntry& got = given.entry(name);
    const bool shape_ok =
        got.type == want.type && got.rank() == want.rank() &&
        (want.variable_rows ? (got.rank() < 2 || got.cols() == want.cols()) : got.shape == want.shape);
    if (!shape_ok) {
      throw ShapeError(o + ": entry '" + name + "' is " + got.describe() + " but must be " +
                       (want.variable_rows ? "(any rows)x" + std::to_string(want.cols()) + " " +
                                                 to_string(want.type)
                                           : want.describe()));
    }
    std::string why;
    bool ok = true;
    if (got.type == ScalarType::Int64) {
      const std::int64_t* v = got.data<std::int64_t>();
      for (std::int64_t i = 0; i < got.size() && ok; ++i) {
        if (v[i] < want.min_value || v[i] > want.max_value) {
          why = "holds " + std::to_string(v[i]) + ", outside [" + std::to_string(want.min_value) +
                ", " + std::to_string(want.max_value) + "]";
          ok = false;
        }
      }
    } else {
      StateEntry checked = got;
      checked.constraint = want.constraint;
      ok = got.type == ScalarType::Float32 ? entry_values_ok<float>(checked, why)
                                           : entry_values_ok<double>(checked, why);
    }
    if (!ok) {
      throw InvalidInputError(o + ": entry '" + name + "' (" + got.describe() + ") " + why);
    }
  }
}

/// Name scopes shared by StateDictWriter and StateDictReader: inside `enter("rnn")`, entry
/// `hidden` is named `rnn/hidden` and hyperparameter `step_size` `rnn.step_size` (so that an
/// optimizer made of others stores their fields under their own names).
class StateDictScopes {
 public:
  void enter(const std::string& scope) { scopes_.push_back(scope); }
  void leave() { scopes_.pop_back(); }

 protected:
  std::string entry_name(const std::string& name) const { return joined('/') + name; }
  std::string hyperparameter_name(const std::string& name) const { return joined('.') + name; }

 private:
  std::string joined(char sep) const {
    std::string out;
    for (const auto& s : scopes_) out += s + sep;
    return out;
  }
  std::vector<std::string> scopes_;
};

/// Writes an object's fields into a StateDict. Used with StateDictReader through one
/// function template per optimizer (`state_fields`), so saving and loading list the same
/// fields in the same way.
template <typename Scalar>
class StateDictWriter : public StateDictScopes {
 public:
  explicit StateDictWriter(std::string type) : dict_(std::move(type), scalar_type_of<Scalar>()) {}

  template <typename T>
  void hyperparameter(const std::string& name, T& value,
                      HyperparameterKind kind = HyperparameterKind::Structural) {
    dict_.set_hyperparameter(hyperparameter_name(name), to_value(value), kind);
  }
  /// A matrix (rank 2) or vector (rank 1, for compile-time column vectors).
  template <typename Derived>
  void array(const std::string& name, Eigen::PlainObjectBase<Derived>& m,
             EntryConstraint constraint = EntryConstraint::Finite, bool variable_rows = false) {
    StateEntry& e = dict_.set_array(entry_name(name), m, Derived::ColsAtCompileTime == 1 ? 1 : 2);
    e.constraint = constraint;
    e.variable_rows = variable_rows;
  }
  /// A float or double scalar.
  template <typename T>
  void real(const std::string& name, T& value, EntryConstraint c = EntryConstraint::Finite) {
    dict_.set_scalar<T>(entry_name(name), value).constraint = c;
  }
  void integer(const std::string& name, std::int64_t& value, std::int64_t lo = 0,
               std::int64_t hi = std::numeric_limits<std::int64_t>::max()) {
    StateEntry& e = dict_.set_scalar<std::int64_t>(entry_name(name), value);
    e.min_value = lo;
    e.max_value = hi;
  }
  /// An enumeration with `count` values 0 … count−1, stored as int64.
  template <typename E>
  void enumeration(const std::string& name, E& value, std::int64_t count) {
    std::int64_t v = static_cast<std::int64_t>(value);
    integer(name, v, 0, count - 1);
  }
  void boolean(const std::string& name, bool& value) {
    std::int64_t v = value ? 1 : 0;
    integer(name, v, 0, 1);
  }
  void counters(StepCounters& c) {
    integer("steps", c.steps);
    integer("skipped_nonfinite", c.skipped_nonfinite);
  }
  /// One buffer per parameter block, named "<block>/<field>".
  void buffers(const ParameterSet<Scalar>& params, const std::string& field,
               BlockBuffers<Scalar>& b, EntryConstraint c = EntryConstraint::Finite) {
    for (std::size_t i = 0; i < params.size() && i < b.size(); ++i) {
      array(params[i].name() + "/" + field, b[i], c);
    }
  }

  StateDict take() { return std::move(dict_); }

  template <typename T>
  static HyperparameterValue to_value(const T& value) {
    if constexpr (std::is_same<T, std::string>::value) {
      return value;
    } else if constexpr (std::is_floating_point<T>::value) {
      return static_cast<double>(value);
    } else {
      return static_cast<std::int64_t>(value);
    }
  }

 private:
  StateDict dict_;
};

/// Reads an object's fields from a StateDict checked by check_state_dict against the
/// object's own dict (construction throws when the check fails; reading then cannot fail).
template <typename Scalar>
class StateDictReader : public StateDictScopes {
 public:
  StateDictReader(const char* op, const StateDict& given, const StateDict& expected,
                  const LoadOptions& options)
      : dict_(given) {
    check_state_dict(op, expected, given, options);
  }

  template <typename T>
  void hyperparameter(const std::string& name, T& value,
                      HyperparameterKind kind = HyperparameterKind::Structural) {
    if (kind != HyperparameterKind::Restored) return;
    const HyperparameterValue& v = dict_.hyperparameter(hyperparameter_name(name)).value;
    if constexpr (std::is_floating_point<T>::value) {
      value = static_cast<T>(std::get<double>(v));
    }
  }
  template <typename Derived>
  void array(const std::string& name, Eigen::PlainObjectBase<Derived>& m,
             EntryConstraint = EntryConstraint::Finite, bool = false) {
    using T = typename Derived::Scalar;
    const StateEntry& e = dict_.entry(entry_name(name));
    m.resize(static_cast<Eigen::Index>(e.rows()), static_cast<Eigen::Index>(e.cols()));
    if (e.size() > 0) std::memcpy(m.data(), e.data<T>(), e.bytes.size());
  }
  template <typename T>
  void real(const std::string& name, T& value, EntryConstraint = EntryConstraint::Finite) {
    value = dict_.scalar<T>(entry_name(name));
  }
  void integer(const std::string& name, std::int64_t& value, std::int64_t = 0,
               std::int64_t = 0) {
    value = dict_.scalar<std::int64_t>(entry_name(name));
  }
  template <typename E>
  void enumeration(const std::string& name, E& value, std::int64_t) {
    value = static_cast<E>(dict_.scalar<std::int64_t>(entry_name(name)));
  }
  void boolean(const std::string& name, bool& value) {
    value = dict_.scalar<std::int64_t>(entry_name(name)) != 0;
  }
  void counters(StepCounters& c) {
    integer("steps", c.steps);
    integer("skipped_nonfinite", c.skipped_nonfinite);
  }
  void buffers(const ParameterSet<Scalar>& params, const std::string& field,
               BlockBuffers<Scalar>& b, EntryConstraint = EntryConstraint::Finite) {
    for (std::size_t i = 0; i < params.size() && i < b.size(); ++i) {
      array(params[i].name() + "/" + field, b[i]);
    }
  }

 private:
  const StateDict& dict_;
};

/// `obj.state_fields(writer, fields...)` on copies of the fields: the body of state_dict().
template <typename Scalar, typename Object, typename... Fields>
StateDict write_state_dict(const Object& obj, const char* type, Fields... fields) {
  StateDictWriter<Scalar> io(type);
  obj.state_fields(io, fields...);
  return io.take();
}

/// Checks `dict` against `obj.state_dict()` (throws naming `op` when it does not fit), then
/// `obj.state_fields(reader, fields...)` reads it into `fields` (copies the caller commits).
template <typename Scalar, typename Object, typename... Fields>
void read_state_dict(const Object& obj, const char* op, const StateDict& dict,
                     const LoadOptions& options, Fields&... fields) {
  StateDictReader<Scalar> io(op, dict, obj.state_dict(), options);
  obj.state_fields(io, fields...);
}

}  // namespace detail

/// A model's parameters (the values of a ParameterSet) as a StateDict of type
/// "kfopt::ParameterSet": one entry per block, named after the block.
template <typename Scalar>
StateDict parameters_state_dict(const ParameterSet<Scalar>& params) {
  StateDict d("kfopt::ParameterSet", scalar_type_of<Scalar>());
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  for (const auto& block : params) {
    if (!block.is_row_major()) {
      d.set_array(block.name(), block.value());
    } else {  // the rows × cols matrix, whatever the storage order
      block.matrices([&](const auto& W, const auto&) { d.set_array(block.name(), Matrix(W)); });
    }
  }
  return d;
}

/// Writes the values of `dict` (made by parameters_state_dict for the same model) into the
/// registered storage. All-or-nothing: names, shapes, types and finiteness are checked
/// first.
template <typename Scalar>
void load_parameters(ParameterSet<Scalar>& params, const StateDict& dict) {
  const StateDict expected = parameters_state_dict(params);
  detail::check_state_dict("kfopt::load_parameters", expected, dict, LoadOptions{});
  for (auto& block : params) {
    block.matrices([&](auto W, const auto&) { W = dict.array<Scalar>(block.name()); });
  }
}

}  // namespace kfopt
