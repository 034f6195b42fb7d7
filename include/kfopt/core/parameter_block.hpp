#pragma once
/// \file parameter_block.hpp
/// \brief How every kfopt optimizer sees a model's parameters and gradients: named views of
/// the caller's own Eigen storage, never copies.
///
/// A ParameterBlock is one tensor seen as a matrix (a weight matrix, a bias vector as an n×1
/// matrix, a flat parameter vector θ), paired with the storage that holds its gradient. It is
/// the one registration concept of every optimizer: first-order optimizers and the
/// element-wise filters take a ParameterSet (an ordered list of blocks), Kfac and
/// KroneckerFilter take a layer's weight (and bias) as blocks. Optimizers read the gradients
/// and write the parameters in place, never copying them.
///
/// Storage kinds (each a ParameterBlock constructor or factory, and a ParameterSet::add):
///
/// | your storage | register with |
/// |---|---|
/// | `Eigen::MatrixX<S>` / `Eigen::VectorX<S>` objects | `ParameterBlock(name, W, dW)` (kept by object address) |
/// | an `Eigen::Map`, `Eigen::Ref` or block of contiguous column- or row-major storage | `ParameterBlock::view(name, W, dW)` |
/// | a raw buffer (`std::vector<float>::data()`, a libtorch tensor's `data_ptr<float>()`, …) | `ParameterBlock(name, w, dw, rows, cols)` (column-major) or `ParameterBlock::row_major(name, w, dw, rows, cols)` |
///
/// A row-major block (a C array, NumPy's or libtorch's default layout) is the same rows×cols
/// matrix to every optimizer: an element-wise optimizer walks its storage in order, and
/// Kfac/KroneckerFilter read it through a row-major map (matrices()). Steps are bit for bit
/// those over column-major storage, except that sums over all parameters (the global gradient
/// norm of clipping) run in storage order and may round differently in the last bits.
///
/// Lifetime: the registered objects must outlive the registration. Blocks registered from an
/// `Eigen::Matrix` or an `Eigen::Vector` keep a pointer to the object (not to its buffer), so
/// a reassigned object (`db = compute_db();` swaps buffers) is followed and a resized one is
/// detected (ShapeError naming the operation and the block) instead of read out of bounds.
/// Blocks registered from raw pointers (or a Map's data) trust the caller: that buffer must
/// stay alive and in place for as long as the optimizer uses it.

#include <Eigen/Core>
#include <deque>
#include <string>
#include <type_traits>
#include <utility>

#include "kfopt/core/error.hpp"
#include "kfopt/core/validate.hpp"

namespace kfopt {

/// A named view of one parameter tensor and its gradient, both in caller storage.
///
/// Three registration kinds, each seen the same way by every optimizer:
/// - an `Eigen::Matrix` (dynamic, column-major) and its gradient: both kept by **object**
///   address, so `W = compute_W();` (Eigen's move assignment swaps buffers and frees the old
///   one) or `dW.resize(...)` is seen at the next access: the new buffer is used, and a new
///   shape throws ShapeError naming the operation and the block;
/// - an `Eigen::Matrix<Scalar, Dynamic, 1>` (a bias vector) and its gradient: also kept by
///   object address (seen as an n×1 block), for the same reason;
/// - raw column-major storage (a pointer, e.g. `Map::data()`, plus a shape): kept by buffer
///   address. The caller owns that buffer and must keep it alive and in place for the
///   optimizer's lifetime (an `Eigen::Map` is such a view; so is any buffer of its own).
template <typename Scalar>
class ParameterBlock {
 public:
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  /// Writable column-major view of caller storage.
  using Map = Eigen::Map<Matrix>;
  /// Read-only column-major view of caller storage.
  using ConstMap = Eigen::Map<const Matrix>;

  /// View of a matrix parameter and its gradient (same shape, both kept by object address).
  ParameterBlock(std::string name, Matrix& value, const Matrix& gradient)
      : name_(std::move(name)),
        value_matrix_(&value),
        gradient_matrix_(&gradient),
        rows_(value.rows()),
        cols_(value.cols()) {
    check_same_shape(gradient.rows(), gradient.cols());
  }

  /// View of a vector parameter (an n×1 block) and its gradient, both kept by object address.
  ParameterBlock(std::string name, Vector& value, const Vector& gradient)
      : name_(std::move(name)),
        value_vector_(&value),
        gradient_vector_(&gradient),
        rows_(value.size()),
        cols_(1) {
    check_same_shape(gradient.size(), 1);
  }

  /// View of raw column-major storage: `value` and `gradient` each hold rows·cols scalars,
  /// owned by the caller and valid for the optimizer's lifetime.
  ParameterBlock(std::string name, Scalar* value, const Scalar* gradient, Eigen::Index rows,
                 Eigen::Index cols)
      : ParameterBlock(std::move(name), value, gradient, rows, cols, false) {}

  /// View of raw row-major storage (element (i, j) at `i · cols + j`), as the constructor
  /// above otherwise.
  static ParameterBlock row_major(std::string name, Scalar* value, const Scalar* gradient,
                                  Eigen::Index rows, Eigen::Index cols) {
    return ParameterBlock(std::move(name), value, gradient, rows, cols, true);
  }

  /// View of any Eigen dense object with contiguous storage, column- or row-major (an
  /// `Eigen::Map`, an `Eigen::Ref`, a whole `Eigen::Matrix` with either storage order): its
  /// buffer is kept (as for raw storage: it must stay alive and in place). Throws
  /// InvalidInputError for strided storage (e.g. a block of some columns of a row-major
  /// matrix) and ShapeError when the gradient's shape differs.
  template <typename Value, typename Gradient>
  static ParameterBlock view(std::string name, Value&& value, const Gradient& gradient) {
    using V = std::decay_t<Value>;
    static_assert(!std::is_const<std::remove_reference_t<Value>>::value &&
                      !std::is_const<std::remove_pointer_t<decltype(value.data())>>::value,
                  "kfopt::ParameterBlock::view: the parameters must be writable");
    if (gradient.rows() != value.rows() || gradient.cols() != value.cols()) {
      throw ShapeError("kfopt::ParameterBlock::view: gradient of '" + name + "' is " +
                       detail::shape_string(gradient.rows(), gradient.cols()) +
                       " but the parameter is " + detail::shape_string(value.rows(), value.cols()));
    }
    const bool row_major = V::IsRowMajor && value.cols() > 1;
    if (!contiguous(value, row_major) || !contiguous(gradient, row_major)) {
      throw InvalidInputError("kfopt::ParameterBlock::view: '" + name +
                              "' is not contiguous storage of one order (strided views are not "
                              "supported; register the whole matrix)");
    }
    return ParameterBlock(std::move(name), value.data(), gradient.data(), value.rows(),
                          value.cols(), row_major);
  }

  /// The block's name.
  const std::string& name() const noexcept { return name_; }
  /// The same view of the same storage under another name.
  ParameterBlock renamed(std::string name) const {
    ParameterBlock b(*this);
    b.name_ = std::move(name);
    return b;
  }
  /// Rows of the block.
  Eigen::Index rows() const noexcept { return rows_; }
  /// Columns of the block.
  Eigen::Index cols() const noexcept { return cols_; }
  /// Number of entries: rows · cols.
  Eigen::Index size() const noexcept { return rows_ * cols_; }
  /// Whether the storage is row-major (row_major(), or view() of row-major storage).
  bool is_row_major() const noexcept { return row_major_; }

  /// The parameters' storage, writable, seen column-major (checked as by check_storage):
  /// the rows × cols matrix itself, or for row-major storage its transpose (cols × rows).
  /// Element-wise optimizers walk it in storage order; matrices() gives the matrix.
  Map value() const {
    return Map(value_data("kfopt::ParameterBlock::value"), storage_rows(), storage_cols());
  }
  /// The gradient's storage, read-only, as value().
  ConstMap gradient() const {
    return ConstMap(gradient_data("kfopt::ParameterBlock::gradient"), storage_rows(), storage_cols());
  }
  /// Calls `f(W, dW)` with the rows × cols parameter and gradient matrices as Eigen maps of
  /// the storage (writable W; `Eigen::Map<Matrix>` or, for row-major storage, a map of a
  /// row-major matrix) and returns what it returns.
  template <typename F>
  decltype(auto) matrices(F&& f) const {
    if (row_major_) {
      using RowMajor = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
      return f(Eigen::Map<RowMajor>(value_data("kfopt::ParameterBlock::matrices"), rows_, cols_),
               Eigen::Map<const RowMajor>(gradient_data("kfopt::ParameterBlock::matrices"), rows_, cols_));
    }
    return f(Map(value_data("kfopt::ParameterBlock::matrices"), rows_, cols_),
             ConstMap(gradient_data("kfopt::ParameterBlock::matrices"), rows_, cols_));
  }

  /// Throws ShapeError, naming `operation` (e.g. "kfopt::Adam::step") and the block, if a
  /// registered matrix or vector or its gradient no longer has the registered shape.
  void check_storage(const char* operation = "kfopt::ParameterBlock") const {
    const Eigen::Index vr = value_rows(), vc = value_cols();
    if (vr != rows_ || vc != cols_) {
      throw ShapeError(std::string(operation) + ": parameter '" + name_ +
                       "' was registered as " + detail::shape_string(rows_, cols_) +
                       " but is now " + detail::shape_string(vr, vc));
    }
    const Eigen::Index gr = gradient_rows(), gc = gradient_cols();
    if (gr != rows_ || gc != cols_) {
      throw ShapeError(std::string(operation) + ": gradient of '" + name_ + "' is " +
                       detail::shape_string(gr, gc) + " but the parameter is " +
                       detail::shape_string(rows_, cols_));
    }
  }

 private:
  ParameterBlock(std::string name, Scalar* value, const Scalar* gradient, Eigen::Index rows,
                 Eigen::Index cols, bool row_major)
      : name_(std::move(name)), value_ptr_(value), gradient_ptr_(gradient), rows_(rows),
        cols_(cols), row_major_(row_major && cols > 1) {
    if (value == nullptr || gradient == nullptr || rows <= 0 || cols <= 0) {
      throw InvalidInputError("kfopt::ParameterBlock: block '" + name_ +
                              "' needs non-null storage and a positive shape, got " +
                              detail::shape_string(rows, cols));
    }
  }
  template <typename M>
  static bool contiguous(const M& m, bool row_major) {
    if (m.size() <= 1) return true;
    const Eigen::Index inner = row_major ? m.cols() : m.rows();
    return m.innerStride() == 1 && (m.outerStride() == inner || (row_major ? m.rows() : m.cols()) == 1);
  }
  Eigen::Index storage_rows() const noexcept { return row_major_ ? cols_ : rows_; }
  Eigen::Index storage_cols() const noexcept { return row_major_ ? rows_ : cols_; }
  Eigen::Index value_rows() const noexcept {
    return value_matrix_ ? value_matrix_->rows() : value_vector_ ? value_vector_->size() : rows_;
  }
  Eigen::Index value_cols() const noexcept {
    return value_matrix_ ? value_matrix_->cols() : value_vector_ ? 1 : cols_;
  }
  Eigen::Index gradient_rows() const noexcept {
    return gradient_matrix_ ? gradient_matrix_->rows()
                            : gradient_vector_ ? gradient_vector_->size() : rows_;
  }
  Eigen::Index gradient_cols() const noexcept {
    return gradient_matrix_ ? gradient_matrix_->cols() : gradient_vector_ ? 1 : cols_;
  }
  void check_same_shape(Eigen::Index grad_rows, Eigen::Index grad_cols) const {
    if (grad_rows != rows_ || grad_cols != cols_) {
      throw ShapeError("kfopt::ParameterBlock: gradient of '" + name_ + "' is " +
                       detail::shape_string(grad_rows, grad_cols) + " but the parameter is " +
                       detail::shape_string(rows_, cols_));
    }
    if (rows_ == 0 || cols_ == 0) {
      throw ShapeError("kfopt::ParameterBlock: parameter '" + name_ + "' is empty (" +
                       detail::shape_string(rows_, cols_) + ")");
    }
  }
  Scalar* value_data(const char* operation) const {
    check_storage(operation);
    return value_matrix_ ? value_matrix_->data() : value_vector_ ? value_vector_->data() : value_ptr_;
  }
  const Scalar* gradient_data(const char* operation) const {
    check_storage(operation);
    return gradient_matrix_ ? gradient_matrix_->data()
                            : gradient_vector_ ? gradient_vector_->data() : gradient_ptr_;
  }

  std::string name_;
  Matrix* value_matrix_ = nullptr;
  const Matrix* gradient_matrix_ = nullptr;
  Vector* value_vector_ = nullptr;
  const Vector* gradient_vector_ = nullptr;
  Scalar* value_ptr_ = nullptr;
  const Scalar* gradient_ptr_ = nullptr;
  Eigen::Index rows_ = 0;
  Eigen::Index cols_ = 0;
  bool row_major_ = false;
};

/// An ordered set of parameter blocks: what a first-order optimizer is given.
///
/// Blocks are stored in a deque, so references returned by `add` stay valid as more
/// blocks are added.
template <typename Scalar>
class ParameterSet {
 public:
  /// One registered parameter block.
  using Block = ParameterBlock<Scalar>;
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = typename Block::Matrix;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

  /// Registers a matrix parameter and its gradient. Names must be unique.
  Block& add(std::string name, Matrix& value, const Matrix& gradient) {
    require_unique(name);
    blocks_.emplace_back(std::move(name), value, gradient);
    return blocks_.back();
  }

  /// Registers a vector parameter (seen as an n×1 block), kept by object address like a
  /// matrix: reassigning the vector or its gradient (`db = compute_db();`) is seen.
  Block& add(std::string name, Vector& value, const Vector& gradient) {
    require_unique(name);
    if (value.size() != gradient.size() || value.size() == 0) {
      throw ShapeError("kfopt::ParameterSet::add: gradient of '" + name + "' has " +
                       std::to_string(gradient.size()) + " entries but the parameter has " +
                       std::to_string(value.size()));
    }
    blocks_.emplace_back(std::move(name), value, gradient);
    return blocks_.back();
  }

  /// Registers raw column-major storage of rows·cols scalars each (e.g. an `Eigen::Map`'s
  /// `data()`): the caller owns both buffers and keeps them alive and in place.
  Block& add(std::string name, Scalar* value, const Scalar* gradient, Eigen::Index rows,
             Eigen::Index cols) {
    require_unique(name);
    blocks_.emplace_back(std::move(name), value, gradient, rows, cols);
    return blocks_.back();
  }

  /// Registers a block made by any ParameterBlock constructor or factory (row_major(),
  /// view()). Names must be unique.
  Block& add(Block block) {
    require_unique(block.name());
    blocks_.push_back(std::move(block));
    return blocks_.back();
  }

  /// Number of registered blocks.
  std::size_t size() const noexcept { return blocks_.size(); }
  /// Whether no block is registered.
  bool empty() const noexcept { return blocks_.empty(); }
  /// The i-th registered block.
  Block& operator[](std::size_t i) { return blocks_[i]; }
  /// As above, read-only.
  const Block& operator[](std::size_t i) const { return blocks_[i]; }
  /// Iterator to the first block.
  auto begin() noexcept { return blocks_.begin(); }
  /// Iterator past the last block.
  auto end() noexcept { return blocks_.end(); }
  /// As above, read-only.
  auto begin() const noexcept { return blocks_.begin(); }
  /// As above, read-only.
  auto end() const noexcept { return blocks_.end(); }

  /// Total number of scalars over all blocks.
  Eigen::Index total_size() const noexcept {
    Eigen::Index n = 0;
    for (const auto& b : blocks_) n += b.size();
    return n;
  }

  /// Whether every gradient entry of every block is finite.
  bool gradients_finite() const {
    for (const auto& b : blocks_) {
      if (!b.gradient().allFinite()) return false;
    }
    return true;
  }

  /// Index of the block with this name; throws InvalidInputError when there is none.
  std::size_t index_of(const std::string& name) const {
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      if (blocks_[i].name() == name) return i;
    }
    throw InvalidInputError("kfopt::ParameterSet: no block named '" + name + "'");
  }

 private:
  void require_unique(const std::string& name) const {
    for (const auto& b : blocks_) {
      if (b.name() == name) {
        throw InvalidInputError("kfopt::ParameterSet::add: a block named '" + name +
                                "' is already registered");
      }
    }
  }

  std::deque<Block> blocks_;
};

}  // namespace kfopt
