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
/// Lifetime: the registered storage must outlive the registration. Blocks registered from an
/// `Eigen::Matrix` keep a pointer to the matrix object (not to its buffer), so a matrix the
/// caller resizes is detected (ShapeError naming the block) instead of read out of bounds.
/// Blocks registered from raw pointers or Maps trust the caller.

#include <Eigen/Core>
#include <deque>
#include <string>
#include <utility>

#include "kfopt/core/error.hpp"
#include "kfopt/core/validate.hpp"

namespace kfopt {

/// A named view of one parameter tensor and its gradient, both in caller storage.
template <typename Scalar>
class ParameterBlock {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Map = Eigen::Map<Matrix>;
  using ConstMap = Eigen::Map<const Matrix>;

  /// View of a matrix parameter and its gradient (same shape, both kept by address).
  ParameterBlock(std::string name, Matrix& value, const Matrix& gradient)
      : name_(std::move(name)),
        value_owner_(&value),
        gradient_owner_(&gradient),
        rows_(value.rows()),
        cols_(value.cols()) {
    check_same_shape(gradient.rows(), gradient.cols());
  }

  /// View of raw column-major storage: `value` and `gradient` each hold rows·cols scalars.
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

  const std::string& name() const noexcept { return name_; }
  Eigen::Index rows() const noexcept { return rows_; }
  Eigen::Index cols() const noexcept { return cols_; }
  Eigen::Index size() const noexcept { return rows_ * cols_; }

  /// The parameters, writable, in the caller's storage.
  Map value() const { return Map(value_data(), rows_, cols_); }
  /// The gradient, read-only, in the caller's storage.
  ConstMap gradient() const { return ConstMap(gradient_data(), rows_, cols_); }

  /// Throws ShapeError if a registered matrix was resized since registration.
  void check_storage() const {
    if (value_owner_ != nullptr &&
        (value_owner_->rows() != rows_ || value_owner_->cols() != cols_)) {
      throw ShapeError("kfopt::ParameterBlock: parameter '" + name_ + "' was registered as " +
                       detail::shape_string(rows_, cols_) + " but is now " +
                       detail::shape_of(*value_owner_));
    }
    if (gradient_owner_ != nullptr &&
        (gradient_owner_->rows() != rows_ || gradient_owner_->cols() != cols_)) {
      throw ShapeError("kfopt::ParameterBlock: gradient of '" + name_ + "' is " +
                       detail::shape_of(*gradient_owner_) + " but the parameter is " +
                       detail::shape_string(rows_, cols_));
    }
  }

 private:
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
  Scalar* value_data() const {
    check_storage();
    return value_owner_ != nullptr ? value_owner_->data() : value_ptr_;
  }
  const Scalar* gradient_data() const {
    check_storage();
    return gradient_owner_ != nullptr ? gradient_owner_->data() : gradient_ptr_;
  }

  std::string name_;
  Matrix* value_owner_ = nullptr;
  const Matrix* gradient_owner_ = nullptr;
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
  using Block = ParameterBlock<Scalar>;
  using Matrix = typename Block::Matrix;
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

  /// Registers a matrix parameter and its gradient. Names must be unique.
  Block& add(std::string name, Matrix& value, const Matrix& gradient) {
    require_unique(name);
    blocks_.emplace_back(std::move(name), value, gradient);
    return blocks_.back();
  }

  /// Registers a vector parameter (seen as an n×1 block).
  Block& add(std::string name, Vector& value, const Vector& gradient) {
    require_unique(name);
    if (value.size() != gradient.size() || value.size() == 0) {
      throw ShapeError("kfopt::ParameterSet::add: gradient of '" + name + "' has " +
                       std::to_string(gradient.size()) + " entries but the parameter has " +
                       std::to_string(value.size()));
    }
    blocks_.emplace_back(std::move(name), value.data(), gradient.data(), value.size(), 1);
    return blocks_.back();
  }

  /// Registers raw column-major storage of rows·cols scalars each.
  Block& add(std::string name, Scalar* value, const Scalar* gradient, Eigen::Index rows,
             Eigen::Index cols) {
    require_unique(name);
    blocks_.emplace_back(std::move(name), value, gradient, rows, cols);
    return blocks_.back();
  }

  std::size_t size() const noexcept { return blocks_.size(); }
  bool empty() const noexcept { return blocks_.empty(); }
  Block& operator[](std::size_t i) { return blocks_[i]; }
  const Block& operator[](std::size_t i) const { return blocks_[i]; }
  auto begin() noexcept { return blocks_.begin(); }
  auto end() noexcept { return blocks_.end(); }
  auto begin() const noexcept { return blocks_.begin(); }
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
