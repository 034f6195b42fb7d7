#pragma once
/// \file parameter_block.hpp
/// \brief How every kfopt optimizer sees a model's parameters and gradients: named views of
/// the caller's own Eigen storage, never copies.
///
/// A ParameterBlock is one tensor seen as a column-major matrix (a weight matrix, a bias
/// vector as an n×1 matrix, a flat parameter vector θ), paired with the storage that holds
/// its gradient. A ParameterSet is an ordered list of blocks. Optimizers read the gradients
/// and write the parameters in place.
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
      : name_(std::move(name)), value_ptr_(value), gradient_ptr_(gradient), rows_(rows),
        cols_(cols) {
    if (value == nullptr || gradient == nullptr || rows <= 0 || cols <= 0) {
      throw InvalidInputError("kfopt::ParameterBlock: block '" + name_ +
                              "' needs non-null storage and a positive shape, got " +
                              detail::shape_string(rows, cols));
    }
  }

  /// The block's name.
  const std::string& name() const noexcept { return name_; }
  /// Rows of the block.
  Eigen::Index rows() const noexcept { return rows_; }
  /// Columns of the block.
  Eigen::Index cols() const noexcept { return cols_; }
  /// Number of entries: rows · cols.
  Eigen::Index size() const noexcept { return rows_ * cols_; }

  /// The parameters, writable, in the caller's storage (checked as by check_storage).
  Map value() const { return Map(value_data("kfopt::ParameterBlock::value"), rows_, cols_); }
  /// The gradient, read-only, in the caller's storage (checked as by check_storage).
  ConstMap gradient() const {
    return ConstMap(gradient_data("kfopt::ParameterBlock::gradient"), rows_, cols_);
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
