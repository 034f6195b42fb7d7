#pragma once
/// \file checkpoint.hpp
/// \brief Checkpoint files: named state dicts (core/state_dict.hpp) in one HDF5 file, written
/// atomically and read back bit for bit, with every dataset checksummed.
///
/// Optional module: only code that includes this header needs HDF5 (Debian `libhdf5-dev`,
/// serial; CMake target `kfopt::checkpoint`, found with
/// `find_package(kfopt COMPONENTS checkpoint)`).
///
///     kfopt::Checkpoint ck;
///     ck.set("optimizer", adam.state_dict());
///     ck.set("model", kfopt::parameters_state_dict(params));
///     kfopt::save_checkpoint("run.h5", ck);
///     ...
///     const kfopt::Checkpoint ck = kfopt::load_checkpoint("run.h5");
///     ck.restore("model", params);     // checks everything, then writes the weights
///     ck.restore("optimizer", adam);   // checks everything, then restores the state
///
/// File layout (format version 1; any HDF5 reader: `h5dump -H run.h5`, h5py):
///
///     /                              attributes kfopt_format_version, kfopt_version
///     /<dict>                        one group per state dict ("optimizer", "model", ...),
///                                    attributes kfopt_format_version, kfopt_version,
///                                    kfopt_type ("kfopt::Adam"), scalar_type ("float64")
///     /<dict>/hyperparameters        a group whose attributes are the hyperparameters
///                                    (float64, int64 or string)
///     /<dict>/<entry path>           one dataset per entry, groups along the path
///                                    (e.g. /optimizer/layer0/A): float32, float64 or int64
///                                    little-endian; a matrix is stored rows × cols (row-major,
///                                    as numpy shows it), a vector as n, a scalar as a
///                                    1-element dataset with the attribute kfopt_scalar = 1.
///
/// Integrity: every dataset is chunked with HDF5's Fletcher32 checksum filter (a dataset
/// without it is refused), and the file uses the HDF5 1.10 object formats, whose metadata
/// (superblock, object headers with the attributes, chunk indexes) carry checksums as well;
/// a flipped byte in data or metadata is reported as an error, not loaded. Reading the file
/// needs HDF5 1.10 or newer (h5py built on it, h5dump of hdf5-tools 1.10+).
///
/// Atomic writes: `save_checkpoint` writes `<path>.tmp.<pid>` in the same directory, closes
/// it, fsyncs it, renames it over `<path>` and fsyncs the directory. A crash during a save
/// leaves the previous checkpoint intact (and possibly a stale `.tmp.<pid>` file, which can
/// be deleted).
///
/// Errors: every failure is a CheckpointError naming the operation, the file and the dict or
/// entry; HDF5's automatic error printing is switched off for the duration of each call (and
/// restored after), its message is appended to the exception's. A checkpoint that is read
/// either loads completely or throws; `restore` checks the whole dict before it writes.

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kfopt/core/state_dict.hpp"
#include "kfopt/version.hpp"

namespace kfopt {

/// Version of the checkpoint file layout written by this header; files of a newer version
/// are refused.
inline constexpr std::int64_t checkpoint_format_version = 1;

/// A checkpoint file could not be written or read, or does not fit what it is loaded into.
class CheckpointError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Named state dicts, e.g. "optimizer", "model" (weights) and "run" (step counter, RNG state
/// of a training loop), saved to and loaded from one file.
class Checkpoint {
 public:
  /// Adds or replaces the dict of this name (a top-level group of the file).
  void set(const std::string& name, StateDict dict) {
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
      throw InvalidInputError("kfopt::Checkpoint::set: invalid state dict name '" + name + "'");
    }
    dicts_[name] = std::move(dict);
  }
  /// Whether a state dict named `name` is stored.
  bool contains(const std::string& name) const { return dicts_.count(name) != 0; }
  /// The dict of this name; CheckpointError naming the file when there is none.
  const StateDict& get(const std::string& name) const {
    const auto it = dicts_.find(name);
    if (it == dicts_.end()) {
      throw CheckpointError("kfopt::Checkpoint::get: " + where() + "has no state dict '" + name + "'");
    }
    return it->second;
  }
  /// All stored state dicts, by name.
  const std::map<std::string, StateDict>& dicts() const noexcept { return dicts_; }
  /// The file this checkpoint was read from (empty if built in memory).
  const std::string& path() const noexcept { return path_; }
  /// Sets the file path reported by path().
  void set_path(std::string path) { path_ = std::move(path); }

  /// `target.load_state_dict(get(name), options)` for an optimizer, with errors rethrown as
  /// CheckpointError naming the file and the dict. All-or-nothing as load_state_dict is.
  template <typename Target>
  void restore(const std::string& name, Target& target, const LoadOptions& options = {}) const {
    const StateDict& d = get(name);
    try {
      target.load_state_dict(d, options);
    } catch (const std::invalid_argument& e) {
      throw CheckpointError(where() + "state dict '" + name + "': " + e.what());
    }
  }
  /// The model weights: load_parameters(params, get(name)), errors as above.
  template <typename Scalar>
  void restore(const std::string& name, ParameterSet<Scalar>& params) const {
    const StateDict& d = get(name);
    try {
      load_parameters(params, d);
    } catch (const std::invalid_argument& e) {
      throw CheckpointError(where() + "state dict '" + name + "': " + e.what());
    }
  }

 private:
  std::string where() const { return path_.empty() ? std::string() : "file '" + path_ + "', "; }

  std::map<std::string, StateDict> dicts_;
  std::string path_;
};

namespace detail {

/// Test seam: called with the temporary file's path after it is completely written and
/// closed, before it is synced and renamed (a test can abort the process there to simulate
/// a crash during a save, or throw to simulate a failure).
inline std::function<void(const std::string&)>& checkpoint_before_rename_hook() {
  static std::function<void(const std::string&)> hook;
  return hook;
}

/// Switches HDF5's automatic error printing off for a scope and restores it after.
class Hdf5Quiet {
 public:
  Hdf5Quiet() {
    H5Eget_auto2(H5E_DEFAULT, &func_, &data_);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~Hdf5Quiet() {
    H5Eclear2(H5E_DEFAULT);
    H5Eset_auto2(H5E_DEFAULT, func_, data_);
  }
  Hdf5Quiet(const Hdf5Quiet&) = delete;
  Hdf5Quiet& operator=(const Hdf5Quiet&) = delete;

 private:
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
};

/// An HDF5 identifier closed at scope exit.
class Hdf5Id {
 public:
  Hdf5Id() = default;
  Hdf5Id(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Hdf5Id() { reset(); }
  Hdf5Id(Hdf5Id&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
  Hdf5Id& operator=(Hdf5Id&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = o.id_;
      close_ = o.close_;
      o.id_ = -1;
    }
    return *this;
  }
  Hdf5Id(const Hdf5Id&) = delete;
  Hdf5Id& operator=(const Hdf5Id&) = delete;
  hid_t get() const noexcept { return id_; }
  /// Closes now and reports whether the close succeeded.
  bool close() {
    const bool ok = id_ < 0 || close_(id_) >= 0;
    id_ = -1;
    return ok;
  }

 private:
  void reset() {
    if (id_ >= 0) close_(id_);
    id_ = -1;
  }
  hid_t id_ = -1;
  herr_t (*close_)(hid_t) = nullptr;
};

inline herr_t hdf5_collect_message(unsigned, const H5E_error2_t* err, void* out) {
  std::string& s = *static_cast<std::string*>(out);
  if (err != nullptr && err->desc != nullptr && s.size() < 400) {
    if (!s.empty()) s += "; ";
    s += err->desc;
  }
  return 0;
}

/// Throws CheckpointError "<op>: file '<path>'[, <what>]: <message> (HDF5: ...)".
[[noreturn]] inline void checkpoint_fail(const char* op, const std::string& path,
                                         const std::string& what, const std::string& message) {
  std::string hdf5;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, hdf5_collect_message, &hdf5);
  H5Eclear2(H5E_DEFAULT);
  throw CheckpointError(std::string(op) + ": file '" + path + "'" +
                        (what.empty() ? std::string() : ", " + what) + ": " + message +
                        (hdf5.empty() ? std::string() : " (HDF5: " + hdf5 + ")"));
}

/// Context of one save or load: the operation and file named in every error.
struct Hdf5Context {
  const char* op;
  std::string path;

  hid_t check(hid_t id, const std::string& what, const char* doing) const {
    if (id < 0) checkpoint_fail(op, path, what, doing);
    return id;
  }
  void check_status(herr_t status, const std::string& what, const char* doing) const {
    if (status < 0) checkpoint_fail(op, path, what, doing);
  }
  [[noreturn]] void fail(const std::string& what, const std::string& message) const {
    checkpoint_fail(op, path, what, message);
  }
};

inline hid_t file_type_of(ScalarType t) {
  switch (t) {
    case ScalarType::Float32: return H5T_IEEE_F32LE;
    case ScalarType::Float64: return H5T_IEEE_F64LE;
    case ScalarType::Int64: return H5T_STD_I64LE;
  }
  return H5T_STD_I64LE;
}
inline hid_t memory_type_of(ScalarType t) {
  switch (t) {
    case ScalarType::Float32: return H5T_NATIVE_FLOAT;
    case ScalarType::Float64: return H5T_NATIVE_DOUBLE;
    case ScalarType::Int64: return H5T_NATIVE_INT64;
  }
  return H5T_NATIVE_INT64;
}

// Column-major rows×cols elements of `size` bytes → row-major (and back, with rows and cols
// swapped).
inline std::vector<unsigned char> transpose_bytes(const unsigned char* src, std::int64_t rows,
                                                  std::int64_t cols, std::size_t size) {
  std::vector<unsigned char> out(static_cast<std::size_t>(rows * cols) * size);
  for (std::int64_t j = 0; j < cols; ++j)
    for (std::int64_t i = 0; i < rows; ++i)
      std::memcpy(&out[static_cast<std::size_t>(i * cols + j) * size],
                  &src[static_cast<std::size_t>(j * rows + i) * size], size);
  return out;
}

inline void write_attribute(const Hdf5Context& c, hid_t obj, const std::string& what,
                            const std::string& name, const HyperparameterValue& value) {
  Hdf5Id space(c.check(H5Screate(H5S_SCALAR), what, "cannot create a dataspace"), H5Sclose);
  if (const std::string* s = std::get_if<std::string>(&value)) {
    Hdf5Id type(c.check(H5Tcopy(H5T_C_S1), what, "cannot create a string type"), H5Tclose);
    c.check_status(H5Tset_size(type.get(), std::max<std::size_t>(1, s->size())), what,
                   "cannot size a string type");
    c.check_status(H5Tset_strpad(type.get(), H5T_STR_NULLPAD), what, "cannot pad a string type");
    Hdf5Id attr(c.check(H5Acreate2(obj, name.c_str(), type.get(), space.get(), H5P_DEFAULT,
                                   H5P_DEFAULT),
                        what, ("cannot create attribute '" + name + "'").c_str()),
                H5Aclose);
    std::string buffer = *s;
    buffer.resize(std::max<std::size_t>(1, s->size()), '\0');
    c.check_status(H5Awrite(attr.get(), type.get(), buffer.data()), what,
                   ("cannot write attribute '" + name + "'").c_str());
    return;
  }
  const bool real = std::holds_alternative<double>(value);
  Hdf5Id attr(c.check(H5Acreate2(obj, name.c_str(), real ? H5T_IEEE_F64LE : H5T_STD_I64LE,
                                 space.get(), H5P_DEFAULT, H5P_DEFAULT),
                      what, ("cannot create attribute '" + name + "'").c_str()),
              H5Aclose);
  const herr_t status = real ? H5Awrite(attr.get(), H5T_NATIVE_DOUBLE, &std::get<double>(value))
                             : H5Awrite(attr.get(), H5T_NATIVE_INT64,
                                        &std::get<std::int64_t>(value));
  c.check_status(status, what, ("cannot write attribute '" + name + "'").c_str());
}

inline HyperparameterValue read_attribute(const Hdf5Context& c, hid_t obj, const std::string& what,
                                          const std::string& name) {
  const std::string doing = "cannot read attribute '" + name + "'";
  Hdf5Id attr(c.check(H5Aopen(obj, name.c_str(), H5P_DEFAULT), what, doing.c_str()), H5Aclose);
  Hdf5Id type(c.check(H5Aget_type(attr.get()), what, doing.c_str()), H5Tclose);
  Hdf5Id space(c.check(H5Aget_space(attr.get()), what, doing.c_str()), H5Sclose);
  if (H5Sget_simple_extent_npoints(space.get()) != 1) {
    c.fail(what, "attribute '" + name + "' is not a single value");
  }
  switch (H5Tget_class(type.get())) {
    case H5T_FLOAT: {
      double v = 0;
      c.check_status(H5Aread(attr.get(), H5T_NATIVE_DOUBLE, &v), what, doing.c_str());
      return v;
    }
    case H5T_INTEGER: {
      std::int64_t v = 0;
      c.check_status(H5Aread(attr.get(), H5T_NATIVE_INT64, &v), what, doing.c_str());
      return v;
    }
    case H5T_STRING: {
      if (H5Tis_variable_str(type.get()) > 0) c.fail(what, "attribute '" + name + "' is a variable-length string");
      const std::size_t size = H5Tget_size(type.get());
      if (size == 0 || size > (1u << 20)) c.fail(what, "attribute '" + name + "' has an invalid size");
      std::string s(size, '\0');
      c.check_status(H5Aread(attr.get(), type.get(), &s[0]), what, doing.c_str());
      s.resize(std::strlen(s.c_str()));
      return s;
    }
    default:
      c.fail(what, "attribute '" + name + "' has an unsupported type");
  }
}

inline std::string read_string_attribute(const Hdf5Context& c, hid_t obj, const std::string& what,
                                         const std::string& name) {
  const HyperparameterValue v = read_attribute(c, obj, what, name);
  if (!std::holds_alternative<std::string>(v)) c.fail(what, "attribute '" + name + "' is not a string");
  return std::get<std::string>(v);
}
inline std::int64_t read_integer_attribute(const Hdf5Context& c, hid_t obj, const std::string& what,
                                           const std::string& name) {
  const HyperparameterValue v = read_attribute(c, obj, what, name);
  if (!std::holds_alternative<std::int64_t>(v)) c.fail(what, "attribute '" + name + "' is not an integer");
  return std::get<std::int64_t>(v);
}

inline void write_version_attributes(const Hdf5Context& c, hid_t obj, const std::string& what) {
  write_attribute(c, obj, what, "kfopt_format_version", checkpoint_format_version);
  write_attribute(c, obj, what, "kfopt_version", std::string(KFOPT_VERSION_STRING));
}

inline void check_format_version(const Hdf5Context& c, hid_t obj, const std::string& what) {
  const std::int64_t v = read_integer_attribute(c, obj, what, "kfopt_format_version");
  if (v > checkpoint_format_version || v < 1) {
    c.fail(what, "checkpoint format version " + std::to_string(v) + " (written by kfopt " +
                     read_string_attribute(c, obj, what, "kfopt_version") +
                     ") is not supported; this kfopt (" KFOPT_VERSION_STRING ") reads versions 1 to " +
                     std::to_string(checkpoint_format_version));
  }
}

// Opens the group at `path` below `root`, creating groups along it.
inline Hdf5Id make_groups(const Hdf5Context& c, hid_t root, const std::string& path,
                          const std::string& what) {
  Hdf5Id current(c.check(H5Gopen2(root, ".", H5P_DEFAULT), what, "cannot open a group"), H5Gclose);
  std::size_t start = 0;
  while (start < path.size()) {
    const std::size_t slash = path.find('/', start);
    const std::string part = path.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    const htri_t exists = H5Lexists(current.get(), part.c_str(), H5P_DEFAULT);
    c.check_status(exists, what, "cannot look up a group");
    Hdf5Id next(exists > 0 ? c.check(H5Gopen2(current.get(), part.c_str(), H5P_DEFAULT), what,
                                     "cannot open a group")
                           : c.check(H5Gcreate2(current.get(), part.c_str(), H5P_DEFAULT,
                                                H5P_DEFAULT, H5P_DEFAULT),
                                     what, "cannot create a group"),
                H5Gclose);
    current = std::move(next);
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return current;
}

inline void write_entry(const Hdf5Context& c, hid_t group, const std::string& dict,
                        const std::string& name, const StateEntry& e) {
  const std::string what = "entry '" + dict + "/" + name + "'";
  const std::size_t slash = name.rfind('/');
  Hdf5Id parent = make_groups(c, group, slash == std::string::npos ? std::string() : name.substr(0, slash), what);
  const std::string leaf = slash == std::string::npos ? name : name.substr(slash + 1);

  const int rank = e.rank() == 2 ? 2 : 1;
  hsize_t dims[2], maxdims[2], chunk[2];
  if (e.rank() == 2) {
    dims[0] = static_cast<hsize_t>(e.shape[0]);
    dims[1] = static_cast<hsize_t>(e.shape[1]);
  } else {
    dims[0] = static_cast<hsize_t>(e.rank() == 1 ? e.shape[0] : 1);
  }
  // One chunk of at most 2^20 elements per row block (Fletcher32 needs chunked storage);
  // an empty extent is declared unlimited so that its chunk may be 1.
  const hsize_t row_elements = rank == 2 ? std::max<hsize_t>(1, dims[1]) : 1;
  const hsize_t max_rows = std::max<hsize_t>(1, (hsize_t(1) << 20) / row_elements);
  for (int k = 0; k < rank; ++k) {
    maxdims[k] = dims[k] == 0 ? H5S_UNLIMITED : dims[k];
    chunk[k] = std::max<hsize_t>(1, k == 0 ? std::min(dims[0], max_rows) : dims[k]);
  }
  Hdf5Id space(c.check(H5Screate_simple(rank, dims, maxdims), what, "cannot create a dataspace"),
               H5Sclose);
  Hdf5Id dcpl(c.check(H5Pcreate(H5P_DATASET_CREATE), what, "cannot create a property list"),
              H5Pclose);
  c.check_status(H5Pset_chunk(dcpl.get(), rank, chunk), what, "cannot set the chunk size");
  c.check_status(H5Pset_fletcher32(dcpl.get()), what, "cannot enable the Fletcher32 checksum");
  Hdf5Id dset(c.check(H5Dcreate2(parent.get(), leaf.c_str(), file_type_of(e.type), space.get(),
                                 H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
                      what, "cannot create the dataset"),
              H5Dclose);
  if (e.size() > 0) {
    const std::vector<unsigned char> buffer =
        e.rank() == 2 ? transpose_bytes(e.bytes.data(), e.rows(), e.cols(), size_of(e.type))
                      : e.bytes;
    c.check_status(H5Dwrite(dset.get(), memory_type_of(e.type), H5S_ALL, H5S_ALL, H5P_DEFAULT,
                            buffer.data()),
                   what, "cannot write the dataset");
  }
  if (e.rank() == 0) write_attribute(c, dset.get(), what, "kfopt_scalar", std::int64_t(1));
  c.check_status(dset.close() ? 0 : -1, what, "cannot close the dataset");
}

inline void write_dict(const Hdf5Context& c, hid_t file, const std::string& name,
                       const StateDict& d) {
  const std::string what = "state dict '" + name + "'";
  Hdf5Id group(c.check(H5Gcreate2(file, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), what,
                       "cannot create the group"),
               H5Gclose);
  write_version_attributes(c, group.get(), what);
  write_attribute(c, group.get(), what, "kfopt_type", d.type());
  write_attribute(c, group.get(), what, "scalar_type", std::string(to_string(d.scalar_type())));
  Hdf5Id hp(c.check(H5Gcreate2(group.get(), "hyperparameters", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                    what, "cannot create the hyperparameters group"),
            H5Gclose);
  for (const auto& kv : d.hyperparameters()) {
    write_attribute(c, hp.get(), what + ", hyperparameter '" + kv.first + "'", kv.first, kv.second.value);
  }
  for (const auto& kv : d.entries()) write_entry(c, group.get(), name, kv.first, kv.second);
}

inline std::vector<std::string> link_names(const Hdf5Context& c, hid_t group, const std::string& what) {
  H5G_info_t info;
  c.check_status(H5Gget_info(group, &info), what, "cannot list the group");
  std::vector<std::string> names;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t n = H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    c.check_status(n < 0 ? -1 : 0, what, "cannot read a link name");
    std::string s(static_cast<std::size_t>(n) + 1, '\0');
    c.check_status(H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, &s[0], s.size(),
                                      H5P_DEFAULT) < 0 ? -1 : 0,
                   what, "cannot read a link name");
    s.resize(static_cast<std::size_t>(n));
    names.push_back(s);
  }
  return names;
}

inline herr_t collect_attribute_name(hid_t, const char* name, const H5A_info_t*, void* out) {
  static_cast<std::vector<std::string>*>(out)->push_back(name);
  return 0;
}

inline StateEntry read_entry(const Hdf5Context& c, hid_t dset, const std::string& what) {
  Hdf5Id type(c.check(H5Dget_type(dset), what, "cannot read the type"), H5Tclose);
  StateEntry e;
  const H5T_class_t cls = H5Tget_class(type.get());
  const std::size_t size = H5Tget_size(type.get());
  if (cls == H5T_FLOAT && size == 4) {
    e.type = ScalarType::Float32;
  } else if (cls == H5T_FLOAT && size == 8) {
    e.type = ScalarType::Float64;
  } else if (cls == H5T_INTEGER && size == 8 && H5Tget_sign(type.get()) == H5T_SGN_2) {
    e.type = ScalarType::Int64;
  } else {
    c.fail(what, "dataset type is not float32, float64 or int64");
  }
  Hdf5Id dcpl(c.check(H5Dget_create_plist(dset), what, "cannot read the creation properties"), H5Pclose);
  const int nfilters = H5Pget_nfilters(dcpl.get());
  bool checksummed = false;
  for (int i = 0; i < nfilters; ++i) {
    unsigned flags = 0;
    std::size_t nelmts = 0;
    unsigned filter_config = 0;
    const H5Z_filter_t f = H5Pget_filter2(dcpl.get(), static_cast<unsigned>(i), &flags, &nelmts,
                                          nullptr, 0, nullptr, &filter_config);
    if (f == H5Z_FILTER_FLETCHER32) checksummed = true;
  }
  if (!checksummed) c.fail(what, "dataset has no Fletcher32 checksum");
  Hdf5Id space(c.check(H5Dget_space(dset), what, "cannot read the dataspace"), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank != 1 && rank != 2) c.fail(what, "dataset rank " + std::to_string(rank) + " is not 1 or 2");
  hsize_t dims[2] = {0, 0};
  c.check_status(H5Sget_simple_extent_dims(space.get(), dims, nullptr), what, "cannot read the dataspace");
  const htri_t scalar = H5Aexists(dset, "kfopt_scalar");
  c.check_status(scalar, what, "cannot look up attribute 'kfopt_scalar'");
  if (scalar > 0) {
    if (rank != 1 || dims[0] != 1) c.fail(what, "a scalar entry must hold one value");
  } else {
    for (int k = 0; k < rank; ++k) e.shape.push_back(static_cast<std::int64_t>(dims[k]));
  }
  const double elements = rank == 2 ? double(dims[0]) * double(dims[1]) : double(dims[0]);
  if (elements * double(size) > double(std::int64_t(1) << 40)) c.fail(what, "dataset is too large");
  const std::size_t n = static_cast<std::size_t>(elements);
  std::vector<unsigned char> buffer(n * size);
  if (n > 0) {
    c.check_status(H5Dread(dset, memory_type_of(e.type), H5S_ALL, H5S_ALL, H5P_DEFAULT, buffer.data()),
                   what, "cannot read the data (corrupted: checksum mismatch or damaged file?)");
  }
  e.bytes = rank == 2 ? transpose_bytes(buffer.data(), static_cast<std::int64_t>(dims[1]),
                                        static_cast<std::int64_t>(dims[0]), size)
                      : std::move(buffer);
  return e;
}

inline void read_tree(const Hdf5Context& c, hid_t group, const std::string& dict,
                      const std::string& prefix, StateDict& out, int depth) {
  const std::string here = "state dict '" + dict + "'" + (prefix.empty() ? "" : ", group '" + prefix + "'");
  if (depth > 64) c.fail(here, "groups nested too deeply");
  for (const std::string& name : link_names(c, group, here)) {
    if (prefix.empty() && name == "hyperparameters") continue;
    const std::string path = prefix.empty() ? name : prefix + "/" + name;
    const std::string what = "entry '" + dict + "/" + path + "'";
    Hdf5Id obj(c.check(H5Oopen(group, name.c_str(), H5P_DEFAULT), what, "cannot open the object"),
               H5Oclose);
    const H5I_type_t kind = H5Iget_type(obj.get());
    if (kind == H5I_GROUP) {
      read_tree(c, obj.get(), dict, path, out, depth + 1);
    } else if (kind == H5I_DATASET) {
      StateEntry e = read_entry(c, obj.get(), what);
      try {
        out.insert(path, std::move(e));
      } catch (const std::invalid_argument& err) {
        c.fail(what, err.what());
      }
    } else {
      c.fail(what, "is neither a group nor a dataset");
    }
  }
}

inline ScalarType parse_scalar_type(const Hdf5Context& c, const std::string& what, const std::string& s) {
  for (ScalarType t : {ScalarType::Float32, ScalarType::Float64, ScalarType::Int64}) {
    if (s == to_string(t)) return t;
  }
  c.fail(what, "unknown scalar_type '" + s + "'");
}

inline StateDict read_dict(const Hdf5Context& c, hid_t file, const std::string& name) {
  const std::string what = "state dict '" + name + "'";
  Hdf5Id group(c.check(H5Gopen2(file, name.c_str(), H5P_DEFAULT), what, "cannot open the group"), H5Gclose);
  check_format_version(c, group.get(), what);
  StateDict d(read_string_attribute(c, group.get(), what, "kfopt_type"),
              parse_scalar_type(c, what, read_string_attribute(c, group.get(), what, "scalar_type")));
  Hdf5Id hp(c.check(H5Gopen2(group.get(), "hyperparameters", H5P_DEFAULT), what,
                    "cannot open the hyperparameters group"),
            H5Gclose);
  std::vector<std::string> names;
  hsize_t idx = 0;
  c.check_status(H5Aiterate2(hp.get(), H5_INDEX_NAME, H5_ITER_INC, &idx, collect_attribute_name, &names),
                 what, "cannot list the hyperparameters");
  for (const std::string& h : names) {
    const std::string hwhat = what + ", hyperparameter '" + h + "'";
    try {
      d.set_hyperparameter(h, read_attribute(c, hp.get(), hwhat, h));
    } catch (const std::invalid_argument& err) {
      c.fail(hwhat, err.what());
    }
  }
  read_tree(c, group.get(), name, "", d, 0);
  return d;
}

inline void fsync_path(const Hdf5Context& c, const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) c.fail("", "cannot open '" + path + "' to sync it: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) c.fail("", "cannot sync '" + path + "': " + std::strerror(err));
}

}  // namespace detail

/// Writes `checkpoint` to `path` atomically (see the file comment): the previous file at
/// `path`, if any, is replaced only once the new one is completely written and synced.
/// Throws CheckpointError naming the file and the dict or entry on failure (the temporary
/// file is then removed and `path` is untouched).
inline void save_checkpoint(const std::string& path, const Checkpoint& checkpoint) {
  const detail::Hdf5Context c{"kfopt::save_checkpoint", path};
  if (path.empty()) c.fail("", "empty path");
  const detail::Hdf5Quiet quiet;
  const std::string temp = path + ".tmp." + std::to_string(static_cast<long>(::getpid()));
  try {
    {
      detail::Hdf5Id fapl(c.check(H5Pcreate(H5P_FILE_ACCESS), "", "cannot create a property list"),
                          H5Pclose);
      // HDF5 1.10 object formats: checksummed superblock, object headers and chunk indexes
      // (the 1.8 format indexes chunks with version-1 B-trees, which carry no checksum).
      c.check_status(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V110, H5F_LIBVER_LATEST), "",
                     "cannot select the file format");
      detail::Hdf5Id file(c.check(H5Fcreate(temp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()),
                                  "", ("cannot create the temporary file '" + temp + "'").c_str()),
                          H5Fclose);
      detail::write_version_attributes(c, file.get(), "");
      for (const auto& kv : checkpoint.dicts()) detail::write_dict(c, file.get(), kv.first, kv.second);
      c.check_status(H5Fflush(file.get(), H5F_SCOPE_GLOBAL), "", "cannot flush the file");
      c.check_status(file.close() ? 0 : -1, "", "cannot close the file");
    }
    if (detail::checkpoint_before_rename_hook()) detail::checkpoint_before_rename_hook()(temp);
    detail::fsync_path(c, temp, false);
    if (std::rename(temp.c_str(), path.c_str()) != 0) {
      c.fail("", "cannot rename '" + temp + "' over it: " + std::strerror(errno));
    }
  } catch (...) {
    std::remove(temp.c_str());
    throw;
  }
  const std::size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  detail::fsync_path(c, dir, true);
}

namespace detail {

/// Every state dict of an open checkpoint file (the root attributes checked first).
inline Checkpoint read_checkpoint(const Hdf5Context& c, hid_t file, const std::string& path) {
  const htri_t has_version = H5Aexists(file, "kfopt_format_version");
  c.check_status(has_version, "", "cannot read the root attributes");
  if (has_version == 0) c.fail("", "not a kfopt checkpoint (no kfopt_format_version attribute)");
  check_format_version(c, file, "");
  Checkpoint out;
  for (const std::string& name : link_names(c, file, "root group")) {
    out.set(name, read_dict(c, file, name));
  }
  out.set_path(path);
  return out;
}

}  // namespace detail

/// Reads every state dict of the checkpoint at `path`. Throws CheckpointError naming the file
/// and the dict or entry when the file is missing, truncated, corrupted (a checksum fails), of
/// a newer format version, or not a kfopt checkpoint.
inline Checkpoint load_checkpoint(const std::string& path) {
  const detail::Hdf5Context c{"kfopt::load_checkpoint", path};
  const detail::Hdf5Quiet quiet;
  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  if (is_hdf5 <= 0) {
    c.fail("", is_hdf5 == 0 ? "not an HDF5 file" : "cannot open the file (missing, unreadable or damaged)");
  }
  detail::Hdf5Id file(c.check(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), "",
                              "cannot open the file (truncated or damaged?)"),
                      H5Fclose);
  return detail::read_checkpoint(c, file.get(), path);
}

/// Reads a checkpoint from the bytes of a checkpoint file held in memory (`size` bytes at
/// `data`, e.g. a file read by one process and sent to others), with the same checks as
/// load_checkpoint (checksums, format version). `name` stands for the file in messages and
/// in Checkpoint::path(). Nothing is written to disk; `data` is not modified.
inline Checkpoint load_checkpoint_image(const void* data, std::size_t size, const std::string& name) {
  const detail::Hdf5Context c{"kfopt::load_checkpoint_image", name};
  const detail::Hdf5Quiet quiet;
  if (data == nullptr || size == 0) c.fail("", "the file image is empty");
  detail::Hdf5Id fapl(c.check(H5Pcreate(H5P_FILE_ACCESS), "", "cannot create a property list"),
                      H5Pclose);
  // HDF5's in-memory ("core") driver, opened on a copy of the image that it owns.
  c.check_status(H5Pset_fapl_core(fapl.get(), 1 << 16, 0), "", "cannot select the in-memory driver");
  c.check_status(H5Pset_file_image(fapl.get(), const_cast<void*>(data), size), "",
                 "cannot hand the image to HDF5");
  // The core driver refuses an image whose file name exists on disk: open it under a name
  // that cannot (a path below /dev/null, which is not a directory).
  detail::Hdf5Id file(c.check(H5Fopen("/dev/null/kfopt-checkpoint-image", H5F_ACC_RDONLY, fapl.get()), "",
                              "cannot open the image (not an HDF5 file, truncated or damaged?)"),
                      H5Fclose);
  return detail::read_checkpoint(c, file.get(), name);
}

}  // namespace kfopt
