#pragma once
/// \file batches.hpp
/// \brief Mini-batches drawn without replacement from a shuffled permutation of the data
/// (reshuffled every epoch), reproducible from a seed.

#include <Eigen/Core>
#include <algorithm>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace kfopt_examples {

/// Yields index sets of `batch_size` distinct examples out of `count`; each epoch visits
/// every example once in a fresh random order (the incomplete tail of an epoch is dropped).
class BatchSampler {
 public:
  BatchSampler(Eigen::Index count, Eigen::Index batch_size, unsigned seed)
      : order_(static_cast<std::size_t>(count)),
        batch_(static_cast<std::size_t>(batch_size)),
        rng_(seed) {
    if (batch_size <= 0 || batch_size > count) {
      throw std::invalid_argument("BatchSampler: batch size " + std::to_string(batch_size) +
                                  " must be in [1, " + std::to_string(count) + "]");
    }
    std::iota(order_.begin(), order_.end(), 0);
    std::shuffle(order_.begin(), order_.end(), rng_);
  }

  /// Everything that decides the batches still to come (for a checkpoint).
  struct State {
    std::vector<int> order;  ///< the current epoch's permutation
    std::size_t position;    ///< examples of it already used
    std::mt19937 engine;     ///< the shuffling engine
  };
  /// The sampler's state.
  State state() const { return State{order_, position_, rng_}; }
  /// Continues from a state() of a sampler with the same count and batch size; throws
  /// std::invalid_argument (and changes nothing) for anything else.
  void set_state(const State& s) {
    std::vector<int> sorted = s.order;
    std::sort(sorted.begin(), sorted.end());
    bool permutation = sorted.size() == order_.size();
    for (std::size_t i = 0; permutation && i < sorted.size(); ++i) {
      permutation = sorted[i] == static_cast<int>(i);
    }
    if (!permutation || s.position > order_.size()) {
      throw std::invalid_argument("BatchSampler::set_state: not the state of a sampler over " +
                                  std::to_string(order_.size()) + " examples");
    }
    order_ = s.order;
    position_ = s.position;
    rng_ = s.engine;
  }

  /// The indices of the next mini-batch.
  const std::vector<int>& next() {
    if (position_ + batch_.size() > order_.size()) {
      std::shuffle(order_.begin(), order_.end(), rng_);
      position_ = 0;
    }
    std::copy_n(order_.begin() + static_cast<std::ptrdiff_t>(position_), batch_.size(),
                batch_.begin());
    position_ += batch_.size();
    return batch_;
  }

 private:
  std::vector<int> order_;
  std::vector<int> batch_;
  std::size_t position_ = 0;
  std::mt19937 rng_;
};

/// out ← the rows `index` of `data` (out is resized to index.size() × data.cols()).
template <typename Data, typename Scalar>
void gather_rows(const Eigen::MatrixBase<Data>& data, const std::vector<int>& index,
                 Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& out) {
  out.resize(static_cast<Eigen::Index>(index.size()), data.cols());
  for (std::size_t r = 0; r < index.size(); ++r) {
    out.row(static_cast<Eigen::Index>(r)) = data.row(index[r]);
  }
}

/// labels_out ← labels[index].
inline void gather_labels(const std::vector<int>& labels, const std::vector<int>& index,
                          std::vector<int>& out) {
  out.resize(index.size());
  for (std::size_t r = 0; r < index.size(); ++r) {
    out[r] = labels[static_cast<std::size_t>(index[r])];
  }
}

}  // namespace kfopt_examples
