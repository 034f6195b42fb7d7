#pragma once
/// \file idx_reader.hpp
/// \brief Reads IDX files (the MNIST / Fashion-MNIST format), gzip-compressed or not,
/// with zlib, and loads the Fashion-MNIST training and test sets.
///
/// IDX layout: two zero bytes, a type byte (0x08 = unsigned byte, the only type these data
/// sets use), a byte with the number of dimensions d, then d big-endian 32-bit sizes, then
/// the data in row-major order. Image files are 3-dimensional (count × 28 × 28, magic
/// 0x00000803), label files 1-dimensional (count, magic 0x00000801).
///
/// The Debian package `dataset-fashion-mnist` installs the four files under
/// /usr/share/datasets/fashion-mnist/ (`dpkg -L dataset-fashion-mnist` lists them).

#include <zlib.h>

#include <Eigen/Core>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace kfopt_examples {

/// Where `apt-get install dataset-fashion-mnist` puts the files.
inline const char* default_fashion_mnist_dir() { return "/usr/share/datasets/fashion-mnist"; }

/// An unsigned-byte IDX array: its dimensions and its bytes in row-major order.
struct IdxArray {
  std::vector<std::uint32_t> dims;
  std::vector<std::uint8_t> data;
};

namespace detail {

/// Owns a gzFile and closes it on every exit path.
class GzFile {
 public:
  explicit GzFile(const std::string& path) : file_(gzopen(path.c_str(), "rb")) {}
  ~GzFile() {
    if (file_ != nullptr) gzclose(file_);
  }
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;
  gzFile get() const { return file_; }

  /// Reads exactly `n` bytes or throws, naming the file and what was being read.
  void read_exactly(void* buffer, std::size_t n, const std::string& path, const char* what) {
    auto* out = static_cast<unsigned char*>(buffer);
    while (n > 0) {
      const unsigned chunk = n > (1u << 30) ? (1u << 30) : static_cast<unsigned>(n);
      const int got = gzread(file_, out, chunk);
      if (got <= 0) {
        int code = 0;
        const char* message = gzerror(file_, &code);
        throw std::runtime_error(path + ": truncated or corrupt while reading the " + what +
                                 (code != Z_OK && message != nullptr
                                      ? std::string(" (zlib: ") + message + ")"
                                      : std::string(" (unexpected end of file)")));
      }
      out += got;
      n -= static_cast<std::size_t>(got);
    }
  }

 private:
  gzFile file_;
};

inline bool file_exists(const std::string& path) { return std::ifstream(path).good(); }

}  // namespace detail

/// Reads an unsigned-byte IDX file with `expected_dims` dimensions (gzip or plain: zlib
/// reads both). Throws std::runtime_error naming the file when it cannot be opened, when
/// the magic number is not 0x0000 0x08 `expected_dims`, when a size is zero, or when the
/// data is shorter or longer than the sizes say.
inline IdxArray read_idx(const std::string& path, unsigned expected_dims) {
  if (!detail::file_exists(path)) {
    throw std::runtime_error("cannot open " + path + ": no such file or not readable");
  }
  detail::GzFile file(path);
  if (file.get() == nullptr) throw std::runtime_error("cannot open " + path + " with zlib");

  unsigned char magic[4];
  file.read_exactly(magic, 4, path, "magic number");
  if (magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || magic[3] != expected_dims) {
    char got[16];
    std::snprintf(got, sizeof got, "0x%02x%02x%02x%02x", magic[0], magic[1], magic[2], magic[3]);
    throw std::runtime_error(path + ": bad IDX magic number " + got + ", expected 0x000008" +
                             (expected_dims < 16 ? "0" : "") + std::to_string(expected_dims) +
                             " (unsigned bytes, " + std::to_string(expected_dims) + " dimensions)");
  }

  IdxArray array;
  std::uint64_t total = 1;
  for (unsigned d = 0; d < expected_dims; ++d) {
    unsigned char be[4];
    file.read_exactly(be, 4, path, "dimension sizes");
    const std::uint32_t size = (std::uint32_t{be[0]} << 24) | (std::uint32_t{be[1]} << 16) |
                               (std::uint32_t{be[2]} << 8) | std::uint32_t{be[3]};
    if (size == 0) throw std::runtime_error(path + ": dimension " + std::to_string(d) + " is 0");
    array.dims.push_back(size);
    total *= size;
  }
  if (total > (std::uint64_t{1} << 32)) {
    throw std::runtime_error(path + ": implausibly large IDX array (" + std::to_string(total) +
                             " bytes)");
  }
  array.data.resize(static_cast<std::size_t>(total));
  file.read_exactly(array.data.data(), array.data.size(), path, "data");
  unsigned char extra;
  if (gzread(file.get(), &extra, 1) != 0) {
    throw std::runtime_error(path + ": more data than its header announces (" +
                             std::to_string(total) + " bytes)");
  }
  return array;
}

/// A labelled image set: one image per row (pixels scaled to [0, 1]) and its class.
template <typename Scalar>
struct ImageSet {
  /// Row-major so that each example is contiguous (copying a mini-batch reads whole rows).
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> images;
  std::vector<int> labels;
  Eigen::Index size() const { return images.rows(); }
};

/// Loads an image file (`count × rows × cols`) and its label file (`count`), checks that
/// the counts agree and that every label is below `classes`, and scales pixels by 1/255.
template <typename Scalar>
ImageSet<Scalar> load_idx_images(const std::string& image_path, const std::string& label_path,
                                 int classes = 10) {
  const IdxArray images = read_idx(image_path, 3);
  const IdxArray labels = read_idx(label_path, 1);
  if (images.dims[0] != labels.dims[0]) {
    throw std::runtime_error(image_path + " holds " + std::to_string(images.dims[0]) +
                             " images but " + label_path + " holds " +
                             std::to_string(labels.dims[0]) + " labels");
  }
  const Eigen::Index count = images.dims[0];
  const Eigen::Index pixels = Eigen::Index{images.dims[1]} * Eigen::Index{images.dims[2]};
  ImageSet<Scalar> set;
  set.images.resize(count, pixels);
  const Scalar scale = Scalar(1) / Scalar(255);
  for (Eigen::Index i = 0; i < count; ++i) {
    for (Eigen::Index p = 0; p < pixels; ++p) {
      set.images(i, p) =
          static_cast<Scalar>(images.data[static_cast<std::size_t>(i * pixels + p)]) * scale;
    }
  }
  set.labels.resize(static_cast<std::size_t>(count));
  for (std::size_t i = 0; i < set.labels.size(); ++i) {
    set.labels[i] = labels.data[i];
    if (set.labels[i] >= classes) {
      throw std::runtime_error(label_path + ": label " + std::to_string(set.labels[i]) +
                               " of example " + std::to_string(i) + " is not below " +
                               std::to_string(classes));
    }
  }
  return set;
}

/// Fashion-MNIST's two splits.
template <typename Scalar>
struct FashionMnist {
  ImageSet<Scalar> train;  ///< 60000 images
  ImageSet<Scalar> test;   ///< 10000 images
};

/// Loads `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz` from `dir` and checks they are
/// 28×28 images. When a file is missing the error says which, and how to get it.
template <typename Scalar>
FashionMnist<Scalar> load_fashion_mnist(const std::string& dir = default_fashion_mnist_dir()) {
  const char* names[] = {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"};
  for (const char* name : names) {
    const std::string path = dir + "/" + name;
    if (!detail::file_exists(path)) {
      throw std::runtime_error(
          "Fashion-MNIST file not found: " + path +
          "\n  The data comes from the Debian package dataset-fashion-mnist:"
          "\n      apt-get install dataset-fashion-mnist"
          "\n  (it installs the four IDX .gz files under " +
          default_fashion_mnist_dir() + "), or pass --data DIR pointing to a folder with " +
          "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz " +
          "and t10k-labels-idx1-ubyte.gz.");
    }
  }
  FashionMnist<Scalar> data;
  data.train = load_idx_images<Scalar>(dir + "/" + names[0], dir + "/" + names[1]);
  data.test = load_idx_images<Scalar>(dir + "/" + names[2], dir + "/" + names[3]);
  for (const auto* set : {&data.train, &data.test}) {
    if (set->images.cols() != 28 * 28) {
      throw std::runtime_error("Fashion-MNIST in " + dir + ": images have " +
                               std::to_string(set->images.cols()) +
                               " pixels, expected 28x28 = 784");
    }
  }
  return data;
}

}  // namespace kfopt_examples
