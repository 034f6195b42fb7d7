#pragma once
/// \file distributed_kfac.hpp
/// \brief Data-parallel K-FAC (Martens & Grosse 2015; recurrent layers: Martens, Ba & Johnson
/// 2018) on P MPI ranks that each hold 1/P of every global batch: after each step, every
/// rank's parameters, factors and optimizer state equal those of ONE process that ran the
/// same Kfac on the whole global batch, to rounding, and are bit-for-bit identical across
/// the ranks.
///
/// \code
///   kfopt::mpi::Communicator comm;                       // MPI_COMM_WORLD
///   kfopt::Kfac<double> kfac(options);
///   const auto l1 = kfac.add_dense_layer("fc1", W1, dW1, b1, db1);   // same layers on every rank
///   const auto l2 = kfac.add_dense_layer("fc2", W2, dW2, b2, db2);
///   kfopt::mpi::DistributedKfac<double> dk(kfac, comm);
///   for (...) {
///     forward_backward(local_batch, dW1, db1, dW2, db2);  // gradients of the LOCAL mean loss
///     if (dk.wants_statistics()) {
///       dk.record_statistics(l1, a1, g1);                 // this rank's rows only; no traffic
///       dk.record_statistics(l2, a2, g2);
///     }
///     dk.step_weighted(local_batch_size);                 // or dk.step() for equal splits
///   }
/// \endcode
///
/// ## What a step does
///
/// 1. **Statistics** (on a statistics step, `wants_statistics()`; the same on every rank since
///    the optimizer state is): every layer's recorded batch is held as a *contribution*, sums
///    over its examples before normalization (dense layer: Σ ããᵀ, Σ ggᵀ and the row count;
///    recurrent layer: Σ ã_t ã_tᵀ, Σ ã_{t+1} ã_tᵀ, the G terms, the real steps, the sequence
///    count and the number of sequences of each length; see FactorContribution,
///    TemporalFactorContribution). Contributions add, so ONE MPI_Allreduce (sum) over all
///    layers turns every rank's into the global batch's, whatever the split (unequal local
///    batches, or none at all on a rank), and each rank takes the sum as one batch
///    (Kfac::record_statistics(id, contribution)): the factors one process forms from the
///    global batch, to rounding. Symmetric sums travel as packed lower triangles.
/// 2. **Gradients**: the fused all-reduce of DataParallelGradients (mean over the ranks, or
///    weighted by the local batch sizes with step_weighted), written back into the caller's
///    gradient storage.
/// 3. **Agreement, all or nothing**: a rank whose batch held NaN/Inf sends it in the counts
///    of its contribution (and in the gradient message); the reduced contributions are
///    admitted (NaN/Inf anywhere, or sums that would overflow a factor) identically on every
///    rank, and the ranks confirm the decision with one any-rank agreement. If anything is
///    refused, on any rank, NO statistics are taken and no step is made on any rank: the
///    parameters, momentum and factors stay bit-for-bit unchanged everywhere, the refused
///    layers are counted in State::skipped_statistics, the step in
///    State::counters.skipped_nonfinite, and the registered gradients hold NaN on every rank
///    (as DataParallelGradients leaves them). (One process would refuse only the layers whose
///    batch was bad and still take the others; a distributed step is one transaction.)
/// 4. **Refresh and step**: on a refresh step (every T_inv steps), the refresh work, two
///    parts per layer (A_l and G_l; A0_l and G0_l for a recurrent layer), is assigned to the
///    ranks by assign_greedy (largest cost first to the least-loaded rank; every rank
///    computes the same plan from the shapes), computed once by its owner and broadcast
///    (status and shape, then the result), and installed on every rank
///    (KroneckerBlock::install_refresh, RecurrentKroneckerBlock::install_refresh). A part
///    is, with InverseMethod::Eigendecomposition and for every recurrent layer, the
///    factor's eigendecomposition (≈ 9n³ flops; eigenvalues and eigenvectors are sent, and
///    the install checks orthonormality with an n³ product); with InverseMethod::Cholesky
///    for a dense layer, the factor's damped inverse (F + δI)⁻¹ for the step's damping
///    (≈ n³ flops; the n × n inverse is sent, its shape and finiteness checked), formed
///    from the O(n²) snapshot every rank takes.
/// 5. **Preparation** (recurrent layers, factored damping): after the refresh round, and on
///    any step whose damping differs from the one a recurrent layer was prepared for, the
///    damping-dependent preparation of RNN K-FAC appendix C.3 runs as a second round of
///    parts, one per factor side: Option 1's whitened transition factor, its
///    eigendecomposition and basis (≈ 15n³), Option 2's with PᵀP and two bases (≈ 20n³),
///    the Independent approximation's damped inverse (≈ 2n³); the owner sends the side's
///    spectrum and bases (n × (2 + n), n × (2 + 2n) for Option 2), and every rank combines
///    the two sides (O(np·K)) into the prepared inverse
///    (RecurrentKroneckerBlock::install_preparation), bit for bit what one process prepares.
///    Then Kfac::step_with_installed_refresh() on every rank. (Unlike Kfac::step, which
///    checks the parameters before it refreshes, the split refresh runs before that check:
///    a step refused for non-finite parameters in the caller's storage still leaves the
///    refreshed factors, identically on every rank.) What is still computed redundantly by
///    every rank from identical bits, and so identical too: a dense layer's damped
///    inverses when the damping changes between refreshes (InverseMethod::Cholesky), a
///    recurrent layer's preparation for exact damping (O(np)) and for the undamped product
///    of adaptive damping's quadratic model (Kfac::multiply), and every preconditioned
///    gradient. With `distribute_refresh = false` every rank refreshes and prepares every
///    layer.
/// 6. **Or: broadcast preconditioned gradients** (`broadcast_preconditioned_gradients`,
///    KAISA's memory-optimal end): every layer has one owner rank, fixed at construction
///    (assign_greedy over the layers' refresh costs). The owner alone refreshes the layer when
///    due and, every step, computes its preconditioned gradient `F̂⁻¹ Z` and broadcasts it
///    (a status, then out × in (+1) scalars); the step then continues as Kfac's own
///    (Kfac::step_with_preconditioner). Trade-off against broadcasting the refreshes: a rank
///    keeps only its own layers' inverses (memory Σ_{l owned} a_l² + g_l² instead of all
///    layers') and preconditions only its own layers (the per-step work is split too), but
///    sends about one gradient's worth every step (bytes_pre) instead of the refreshes
///    every T_inv steps (bytes_inv + bytes_prep): with T_inv = 20 and layers with a_l ≈ g_l
///    the refresh broadcast sends about 10× less per step.
///
/// ## Communication per step (s = sizeof(Scalar) bytes, P ranks; ring all-reduce as in
/// cost_model.hpp)
///
/// Layer l has A_l of size a_l (inputs, +1 with a bias) and G_l of size g_l; N parameters in
/// total. A dense layer with a diagonal factor sends n instead of n(n+1)/2 for it.
///
///     m_stat = Σ_dense [a_l(a_l+1)/2 + g_l(g_l+1)/2 + 4]
///            + Σ_recurrent [a_l(a_l+1)/2 + g_l(g_l+1)/2 + a_l² + g_l² + (T_cap + 1) + 7]
///     bytes_stat = 2(P−1)/P · m_stat · s        per rank, on statistics steps (every T_stat)
///     bytes_grad = 2(P−1)/P · (N + 3) · s       per rank, every step (DataParallelGradients)
///     bytes_agree = 2(P−1)/P · sizeof(int)      per rank, every step (the any-rank agreement)
///     bytes_inv  = (P−1) · Σ_l [a_l(a_l+1) + g_l(g_l+1) + 6] · s
///                                              over all ranks, on refresh steps (every T_inv):
///                                              eigenvectors and eigenvalues of A_l and G_l
///                                              (n for a diagonal factor), + 3-scalar headers;
///                                              with Cholesky Σ_{dense l} [a_l² + g_l² + 6] · s
///                                              (the damped inverses) + the recurrent layers'
///                                              eigendecompositions; 0 with
///                                              distribute_refresh = false
///     bytes_pre  = (P−1) · Σ_l (a_l g_l + 1) · s    over all ranks, every step, with
///                                              broadcast_preconditioned_gradients (instead
///                                              of bytes_inv and bytes_prep)
///     bytes_prep = (P−1) · Σ_{recurrent l} [a_l(2 + b·a_l) + g_l(2 + b·g_l) + 6] · s
///                                              over all ranks, after each refresh and on steps
///                                              whose damping changed (b = 2 for Option 2,
///                                              else 1; 0 for exact damping)
///
/// (the +4 per dense layer: row and non-finite counts of A and G; the +7 per recurrent
/// layer: real steps, sequences, non-finite counts of A and G and the exceeded-length count;
/// T_cap = DistributedKfacOptions::max_sequence_length). `statistics_message_size()` is
/// m_stat for the registered layers, and Communicator::traffic() counts what was sent.
///
/// Per refresh, the broadcasts take 2 calls per part (4 per layer, and 4 more per recurrent
/// layer's preparation), and the largest rank's refresh work drops from Σ_l 9(a_l³ + g_l³)
/// (plus Σ_recurrent 15 or 20 (a_l³ + g_l³) of preparation) to each round's makespan (at
/// most (4/3 − 1/(3P)) × the best split, Graham's bound) plus the ≈ 2n³ install checks of
/// the eigendecompositions it did not compute. (The preparation is a round of its own
/// because its damping shifts depend on both factors' traces.)
///
/// ## Requirements
///
/// Every rank registers the same layers (names, kinds, shapes, options) in the same order
/// before constructing the DistributedKfac, starts from the same parameters (e.g. broadcast
/// from rank 0) and calls step() / step_weighted() on every step; record_* only on statistics
/// steps (InvalidInputError otherwise); a layer recorded several times in one step takes
/// the union of those batches as one batch. Usage errors (shapes, ids) are thrown on the rank
/// that made them, before any communication, as for any MPI collective; errors that depend
/// on the reduced data (a sequence longer than max_sequence_length on some rank, no layer
/// statistics at the first step) are thrown on every rank at once.
///
/// Not copyable or movable (the gradient synchronizer points into it); one per Kfac.

#include <Eigen/Core>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "kfopt/core/error.hpp"
#include "kfopt/core/parameter_block.hpp"
#include "kfopt/core/validate.hpp"
#include "kfopt/mpi/communicator.hpp"
#include "kfopt/mpi/data_parallel_gradients.hpp"
#include "kfopt/mpi/work_assignment.hpp"
#include "kfopt/optim/kfac/kfac.hpp"

namespace kfopt {
namespace mpi {

/// Settings of DistributedKfac.
struct DistributedKfacOptions {
  /// T_cap ≥ 1: the longest sequence a recurrent layer's length counts hold; each recurrent
  /// layer sends T_cap + 1 counts per statistics step. A longer sequence on any rank makes
  /// the step throw InvalidInputError on every rank. Default 512.
  int max_sequence_length = 512;

  /// Split the refreshes among the ranks: each refresh part (a dense layer's factor
  /// eigendecomposition or damped Cholesky inverse) is computed by one owner rank, assigned greedily by cost
  /// (assign_greedy), and broadcast; false: every rank computes every refresh. Both give
  /// bit-for-bit identical state on all ranks. Default true.
  bool distribute_refresh = true;

  /// KAISA's memory-optimal end (Pauloski et al. 2021): each layer has one owner rank
  /// (assigned greedily by the layer's refresh cost, once), which alone refreshes the layer
  /// and, every step, preconditions its gradient and broadcasts the result (out × in (+1)
  /// scalars); the other ranks hold no inverse of that layer. Every rank's parameters,
  /// momentum and factors stay bit-for-bit identical; the refreshed spectra differ (each
  /// rank holds its own layers'), so such a run's checkpoints cannot be saved with
  /// mpi::save_checkpoint's identical-state check. Not with adaptive damping on a recurrent
  /// layer (its quadratic model needs the layer's refresh on every rank: InvalidInputError).
  /// Overrides distribute_refresh. Default false (broadcast the refreshes instead).
  bool broadcast_preconditioned_gradients = false;

  /// Throws HyperparameterError naming the field if it is out of range.
  void validate() const {
    kfopt::detail::require_hyperparameter(max_sequence_length >= 1,
                                          "kfopt::mpi::DistributedKfacOptions",
                                          "max_sequence_length", max_sequence_length, "[1, inf)");
  }
};

/// Data-parallel K-FAC over a Communicator (see distributed_kfac.hpp).
template <typename Scalar>
class DistributedKfac {
 public:
  /// Dense dynamic-size matrix of Scalar.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// Dense dynamic-size column vector of Scalar.
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

  /// Keeps pointers to `kfac` and `comm` (both must outlive this object); the layers must
  /// all be registered. Throws HyperparameterError for bad options, and for a Kfac with
  /// KfacOptions::refresh_delay > 0 (the ranks split each refresh among themselves at the
  /// step it is due).
  DistributedKfac(Kfac<Scalar>& kfac, Communicator& comm, DistributedKfacOptions options = {})
      : kfac_(&kfac),
        comm_(&comm),
        options_(validated(options, kfac)),
        params_(kfac.parameters()),
        gradients_(params_, comm) {
    for (std::size_t i = 0; i < kfac.num_layers(); ++i) {
      contributions_.push_back(kfac.empty_contribution(i, options_.max_sequence_length));
    }
    admitted_.assign(contributions_.size(), Status::NotComputed);
    Counter counter;
    for (auto& c : contributions_) c->visit(counter);
    message_size_ = counter.size;
    buffer_.resize(message_size_);
    if (options_.broadcast_preconditioned_gradients) assign_layer_owners();
  }
  DistributedKfac(const DistributedKfac&) = delete;
  DistributedKfac& operator=(const DistributedKfac&) = delete;

  /// Whether this step takes statistics (Kfac::wants_statistics, the same on every rank).
  bool wants_statistics() const noexcept { return kfac_->wants_statistics(); }

  /// Adds this rank's batch of a dense layer (`a` k × in, `g` k × out, k ≥ 0; as
  /// Kfac::record_statistics) to the step's contribution; no communication. Returns
  /// NonFiniteInput for NaN/Inf (then the step is refused on every rank). Throws
  /// InvalidInputError when !wants_statistics().
  Status record_statistics(std::size_t id, const Eigen::Ref<const Matrix>& a,
                           const Eigen::Ref<const Matrix>& g) {
    return kfac_->add_statistics_contribution(
        id, a, g, contribution("kfopt::mpi::DistributedKfac::record_statistics", id));
  }

  /// Adds this rank's batch of m sequences of a recurrent layer (time-major, lengths; as
  /// Kfac::record_sequence_statistics; m ≥ 0) to the step's contribution.
  Status record_sequence_statistics(std::size_t id, const Eigen::Ref<const Matrix>& a,
                                    const Eigen::Ref<const Matrix>& g,
                                    const Eigen::Ref<const Eigen::VectorXi>& lengths) {
    return kfac_->add_sequence_statistics_contribution(
        id, a, g, lengths,
        contribution("kfopt::mpi::DistributedKfac::record_sequence_statistics", id));
  }

  /// One data-parallel K-FAC step, the local gradients being those of the local mean loss
  /// over equal local batches (see the file comment). Returns the status of Kfac::step, or
  /// the refusal's (NonFiniteInput, Overflow) on every rank.
  Status step() { return run(nullptr); }

  /// As step(), with the gradients weighted by `local_weight` (this rank's batch size) for
  /// unequal local batches: Σ_r w_r g_r / Σ_r w_r (DataParallelGradients::average_weighted).
  Status step_weighted(double local_weight) { return run(&local_weight); }

  /// Scalars of the statistics all-reduce: m_stat of the file comment.
  Eigen::Index statistics_message_size() const noexcept { return message_size_; }
  /// Ranks whose gradient was non-finite at the last step.
  int nonfinite_ranks() const noexcept { return gradients_.nonfinite_ranks(); }
  /// The optimizer every rank steps.
  const Kfac<Scalar>& optimizer() const noexcept { return *kfac_; }
  /// The options in use.
  const DistributedKfacOptions& options() const noexcept { return options_; }

 private:
  static const DistributedKfacOptions& validated(const DistributedKfacOptions& o,
                                                 const Kfac<Scalar>& kfac) {
    o.validate();
    kfopt::detail::require_hyperparameter(
        kfac.options().refresh_delay == 0, "kfopt::mpi::DistributedKfac", "refresh_delay",
        kfac.options().refresh_delay, "0 (the ranks split each refresh at the step it is due)");
    return o;
  }

  KfacStatisticsContribution<Scalar>& contribution(const char* op, std::size_t id) {
    require_layers(op);
    if (!kfac_->wants_statistics()) {
      throw InvalidInputError(std::string(op) +
                              ": this step takes no statistics (wants_statistics() is false); "
                              "every rank records on the statistics steps only");
    }
    if (id >= contributions_.size()) {
      throw InvalidInputError(std::string(op) + ": no layer with id " + std::to_string(id) +
                              " (" + std::to_string(contributions_.size()) + " registered)");
    }
    return *contributions_[id];
  }

  void require_layers(const char* op) const {
    if (kfac_->num_layers() != contributions_.size()) {
      throw InvalidInputError(std::string(op) + ": the optimizer has " +
                              std::to_string(kfac_->num_layers()) +
                              " layers but had " + std::to_string(contributions_.size()) +
                              " when the DistributedKfac was made (register every layer first)");
    }
  }

  // Visitors: message size, pack into buffer_, unpack from it.
  struct Counter final : ContributionVisitor<Scalar> {
    Eigen::Index size = 0;
    void symmetric(Matrix& m) override { size += detail::packed_triangle_size(m.rows()); }
    void general(Matrix& m) override { size += m.size(); }
    void count(double&) override { ++size; }
  };
  struct Packer final : ContributionVisitor<Scalar> {
    Scalar* cursor = nullptr;
    void symmetric(Matrix& m) override {
      detail::pack_lower(m, cursor);
      cursor += detail::packed_triangle_size(m.rows());
    }
    void general(Matrix& m) override {
      Eigen::Map<Matrix>(cursor, m.rows(), m.cols()) = m;
      cursor += m.size();
    }
    void count(double& x) override { *cursor++ = static_cast<Scalar>(x); }
  };
  struct Unpacker final : ContributionVisitor<Scalar> {
    const Scalar* cursor = nullptr;
    void symmetric(Matrix& m) override {
      detail::unpack_symmetric(cursor, m);
      cursor += detail::packed_triangle_size(m.rows());
    }
    void general(Matrix& m) override {
      m = Eigen::Map<const Matrix>(cursor, m.rows(), m.cols());
      cursor += m.size();
    }
    void count(double& x) override { x = static_cast<double>(*cursor++); }
  };

  /// Every layer's contribution ← its sum over the ranks (one MPI_Allreduce).
  void reduce_statistics() {
    Packer pack;
    pack.cursor = buffer_.data();
    for (auto& c : contributions_) c->visit(pack);
    comm_->allreduce_sum(buffer_);
    Unpacker unpack;
    unpack.cursor = buffer_.data();
    for (auto& c : contributions_) c->visit(unpack);
  }

  void clear_statistics() {
    for (auto& c : contributions_) c->clear();
  }

  // NaN into every registered gradient, so that Kfac::step refuses (and counts) the step.
  void poison_gradients() {
    for (const auto& block : params_) {
      Eigen::Map<Vector>(const_cast<Scalar*>(block.gradient().data()), block.size())
          .setConstant(std::numeric_limits<Scalar>::quiet_NaN());
    }
  }

  Status run(const double* weight) {
    constexpr const char* op = "kfopt::mpi::DistributedKfac::step";
    require_layers(op);
    const bool statistics = kfac_->wants_statistics();
    if (statistics) reduce_statistics();
    Status gradient_status = Status::Success;
    try {
      gradient_status = weight != nullptr ? gradients_.average_weighted(*weight) : gradients_.average();
    } catch (...) {
      clear_statistics();
      throw;
    }
    Status refused = Status::Success;
    if (statistics) {
      for (std::size_t i = 0; i < contributions_.size(); ++i) {
        try {
          admitted_[i] = kfac_->admit_statistics(i, *contributions_[i]);
        } catch (...) {  // data-dependent (e.g. a sequence longer than the counts hold): every rank
          clear_statistics();
          throw;
        }
        if (admitted_[i] != Status::Success && admitted_[i] != Status::NotComputed &&
            refused == Status::Success) {
          refused = admitted_[i];
        }
      }
    }
    const bool local_refusal = refused != Status::Success || gradient_status != Status::Success;
    if (comm_->any_rank(local_refusal)) {
      // All or nothing: no layer takes its statistics, no parameter moves, on any rank.
      if (statistics) {
        for (std::size_t i = 0; i < contributions_.size(); ++i) {
          if (admitted_[i] != Status::Success && admitted_[i] != Status::NotComputed) {
            (void)kfac_->record_statistics(i, *contributions_[i]);  // refused again: counted
          }
        }
      }
      clear_statistics();
      if (gradient_status == Status::Success) poison_gradients();
      const Status s = kfac_->step();  // refuses the non-finite gradients and counts the skip
      return refused != Status::Success ? refused : s;
    }
    if (statistics) {
      for (std::size_t i = 0; i < contributions_.size(); ++i) {
        (void)kfac_->record_statistics(i, *contributions_[i]);  // Success, or NotComputed (empty)
      }
    }
    clear_statistics();
    if (options_.broadcast_preconditioned_gradients) return step_with_owned_layers();
    if (!options_.distribute_refresh) return kfac_->step();
    refresh_distributed();
    return kfac_->step_with_installed_refresh();
  }

  /// Owners of the layers for broadcast_preconditioned_gradients: greedy over each layer's
  /// refresh cost (its refresh parts' and preparation parts' flops, from the shapes).
  void assign_layer_owners() {
    const char* op = "kfopt::mpi::DistributedKfac";
    std::vector<double> cost;
    for (std::size_t i = 0; i < contributions_.size(); ++i) {
      const bool recurrent = kfac_->is_recurrent(i);
      if (recurrent && kfac_->options().adaptive_damping) {
        throw InvalidInputError(std::string(op) + ": broadcast_preconditioned_gradients with "
                                "adaptive damping needs every recurrent layer's refresh on every "
                                "rank (layer " + std::to_string(i) + " is recurrent)");
      }
      double c = 0.0;
      for (int k = 0; k < kfac_->refresh_part_count(i); ++k) c += kfac_->refresh_part_cost(i, k);
      cost.push_back(c);
    }
    layer_owner_ = assign_greedy(cost, comm_->size()).owner;
  }

  /// A step with broadcast_preconditioned_gradients: each rank refreshes the layers it owns
  /// when due, and the step takes every layer's preconditioned gradient from its owner.
  Status step_with_owned_layers() {
    const int rank = comm_->rank();
    for (std::size_t i = 0; i < layer_owner_.size(); ++i) {
      if (layer_owner_[i] == rank && kfac_->refresh_pending(i)) (void)kfac_->refresh_layer(i);
    }
    return kfac_->step_with_preconditioner(
        [this, rank](std::size_t i, const Matrix& gradient, Matrix& direction) {
          const int owner = layer_owner_[i];
          Status s = Status::Success;
          if (owner == rank) {
            s = kfac_->precondition(i, gradient, direction);
          }
          Eigen::Matrix<Scalar, 1, 1> header;
          header(0) = static_cast<Scalar>(static_cast<int>(s));
          comm_->broadcast(header, owner);
          s = static_cast<Status>(static_cast<int>(header(0)));
          if (s != Status::Success) return s;
          direction.resize(gradient.rows(), gradient.cols());
          comm_->broadcast(direction, owner);
          return s;
        });
  }

  /// The pending layers' refresh parts, then the preparation parts the refreshed layers (or
  /// a changed damping) call for: each round assigned greedily by cost, computed by the
  /// part's owner, broadcast and installed on every rank.
  void refresh_distributed() {
    for (std::size_t i = 0; i < contributions_.size(); ++i) {
      if (kfac_->refresh_pending(i) && kfac_->refresh_part_count(i) > 0) {
        kfac_->begin_refresh_parts(i);  // on every rank
      }
    }
    distribute_parts(
        [this](std::size_t i) { return kfac_->refresh_pending(i) ? kfac_->refresh_part_count(i) : 0; },
        [this](std::size_t i, int k) { return kfac_->refresh_part_cost(i, k); },
        [this](std::size_t i, int k, Matrix& r) { return kfac_->compute_refresh_part(i, k, r); },
        [this](std::size_t i, const std::vector<Matrix>& r) { kfac_->install_refresh(i, r); });
    distribute_parts(
        [this](std::size_t i) { return kfac_->preparation_part_count(i); },
        [this](std::size_t i, int k) { return kfac_->preparation_part_cost(i, k); },
        [this](std::size_t i, int k, Matrix& r) { return kfac_->compute_preparation_part(i, k, r); },
        [this](std::size_t i, const std::vector<Matrix>& r) {
          (void)kfac_->install_preparation(i, r);  // refused: the step prepares and refuses
        });
  }

  /// One round of parts: every rank lists the same parts (count(layer), cost(layer, k)),
  /// plans the same greedy assignment, computes its own (compute(layer, k, result)), and
  /// for each part the owner broadcasts a 3-scalar header (status and shape), then the
  /// result; every layer whose parts all succeeded is installed (install(layer, results)),
  /// the others keep what they had.
  template <typename Count, typename Cost, typename Compute, typename Install>
  void distribute_parts(Count count, Cost cost, Compute compute, Install install) {
    part_layer_.clear();
    part_index_.clear();
    part_cost_.clear();
    for (std::size_t i = 0; i < contributions_.size(); ++i) {
      const int parts_of_layer = count(i);
      for (int k = 0; k < parts_of_layer; ++k) {
        part_layer_.push_back(i);
        part_index_.push_back(k);
        part_cost_.push_back(cost(i, k));
      }
    }
    if (part_layer_.empty()) return;
    const WorkAssignment plan = assign_greedy(part_cost_, comm_->size());
    const std::size_t parts = part_layer_.size();
    if (results_.size() < parts) results_.resize(parts);
    part_status_.assign(parts, Status::Success);
    for (std::size_t t : plan.tasks_of[static_cast<std::size_t>(comm_->rank())]) {
      part_status_[t] = compute(part_layer_[t], part_index_[t], results_[t]);
      ++parts_computed_;
    }
    for (std::size_t t = 0; t < parts; ++t) {
      const int owner = plan.owner[t];
      Eigen::Matrix<Scalar, 3, 1> header;
      header << static_cast<Scalar>(static_cast<int>(part_status_[t])),
          static_cast<Scalar>(results_[t].rows()), static_cast<Scalar>(results_[t].cols());
      comm_->broadcast(header, owner);
      part_status_[t] = static_cast<Status>(static_cast<int>(header(0)));
      if (part_status_[t] != Status::Success) continue;
      results_[t].resize(static_cast<Eigen::Index>(header(1)), static_cast<Eigen::Index>(header(2)));
      comm_->broadcast(results_[t], owner);
    }
    std::size_t t = 0;
    while (t < parts) {
      const std::size_t layer = part_layer_[t];
      std::size_t end = t;
      bool ok = true;
      layer_results_.clear();
      while (end < parts && part_layer_[end] == layer) {
        ok = ok && part_status_[end] == Status::Success;
        layer_results_.push_back(results_[end]);
        ++end;
      }
      if (ok) install(layer, layer_results_);
      t = end;
    }
  }

 public:
  /// With broadcast_preconditioned_gradients: the rank that owns layer `id` (refreshes and
  /// preconditions it); -1 otherwise.
  int layer_owner(std::size_t id) const {
    return id < layer_owner_.size() ? layer_owner_[id] : -1;
  }

  /// Refresh and preparation parts this rank has computed so far (its share of the
  /// assignments).
  std::int64_t refresh_parts_computed() const noexcept { return parts_computed_; }

 private:

  Kfac<Scalar>* kfac_;
  Communicator* comm_;
  DistributedKfacOptions options_;
  ParameterSet<Scalar> params_;
  DataParallelGradients<Scalar> gradients_;
  std::vector<std::unique_ptr<KfacStatisticsContribution<Scalar>>> contributions_;
  std::vector<Status> admitted_;
  Eigen::Index message_size_ = 0;
  Vector buffer_;
  // Refresh parts of the current step: layer, part index, cost, status, result.
  std::vector<std::size_t> part_layer_;
  std::vector<int> part_index_;
  std::vector<double> part_cost_;
  std::vector<Status> part_status_;
  std::vector<Matrix> results_, layer_results_;
  std::int64_t parts_computed_ = 0;
  std::vector<int> layer_owner_;  // broadcast_preconditioned_gradients: each layer's owner
};

}  // namespace mpi
}  // namespace kfopt
