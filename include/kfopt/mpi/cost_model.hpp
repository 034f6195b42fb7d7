#pragma once
/// \file cost_model.hpp
/// \brief Communication volume per training step of data-parallel kfopt on P ranks, for the
/// gradients, K-FAC's factor statistics and K-FAC's inverse (or preconditioned-gradient)
/// broadcasts, with L layers.
///
/// ## Assumptions
///
/// - s = sizeof(Scalar) bytes per element (8 for double, 4 for float); P ranks.
/// - **All-reduce of m elements: a ring** (reduce-scatter then all-gather, each in P − 1
///   steps of m/P elements; Patarasuk & Yuan 2009, bandwidth-optimal). Every rank sends
///   2(P−1)/P · m · s bytes and receives as many; all ranks together send 2(P−1) · m · s.
///   This is what Open MPI's `tuned` collective component uses for large messages
///   (`coll_tuned_allreduce_algorithm 4`); for small messages it picks recursive doubling
///   (log2(P) · m · s per rank, P a power of two), where latency dominates and bytes do not
///   matter. P = 1 sends nothing.
/// - **Broadcast of m elements from one root** (binomial tree or pipeline): every non-root
///   rank receives m · s bytes once, (P − 1) · m · s in total over the ranks; the root sends
///   between m · s (pipeline) and ⌈log2 P⌉ · m · s (binomial tree) of it.
/// - Latency (α per message) is not counted: the gradient path and each statistics step use
///   one message, which is why they are fused.
///
/// ## Per step
///
/// **Gradients** (DataParallelGradients, every step): one all-reduce of N + 3 elements
/// (N = total parameters; +3 = local weight, non-finite flag, invalid-weight flag):
///
///     bytes_grad(P, N) = 2(P−1)/P · (N + 3) · s          per rank per step
///
/// **K-FAC factor statistics** (every T_stat steps): layer l with input dimension a_l
/// (including the bias column) and output dimension g_l has factors A_l (a_l×a_l) and
/// G_l (g_l×g_l), both symmetric, all-reduced as packed lower triangles in one fused call:
///
///     m_stat = Σ_l [ a_l(a_l+1)/2 + g_l(g_l+1)/2 ]
///     bytes_stat(P) = 2(P−1)/P · m_stat · s / T_stat     per rank per step (amortized)
///
/// A recurrent layer (Martens, Ba & Johnson 2018) adds the lag-one moments A1_l, G1_l, which
/// are not symmetric (a_l² + g_l² elements; a variant that only uses their symmetric part may
/// send it packed instead), and its sequence-length histogram (T_max + 1 counts), so
/// m_stat,l = a_l(a_l+1)/2 + g_l(g_l+1)/2 + a_l² + g_l² + T_max + 1.
///
/// **K-FAC inverses, setting "broadcast inverses"** (every T_inv steps): each layer's
/// refresh (eigendecomposition or damped inverse of A_l and G_l, about 9n³ flops each for
/// an eigendecomposition) is computed by one owner rank, chosen greedily by cost (largest
/// first to the least-loaded rank, as KAISA, Pauloski et al. 2021), and broadcast:
///
///     m_inv = Σ_l [ a_l(a_l+1)/2 + g_l(g_l+1)/2 ]         (packed symmetric inverses), or
///     m_inv = Σ_l [ a_l² + a_l + g_l² + g_l ]             (eigenvectors + eigenvalues, for
///                                                          any-damping reuse)
///     bytes_inv(P) = (P−1) · m_inv · s / T_inv            over all ranks per step
///
/// Every rank then holds every layer's inverse (memory Σ_l a_l² + g_l²) and preconditions
/// locally.
///
/// **K-FAC inverses, setting "broadcast preconditioned gradients"** (KAISA's memory-optimal
/// end): only the owner keeps layer l's inverses and computes G_l⁻¹ ∇W_l A_l⁻¹ each step, then
/// broadcasts it (a_l·g_l elements):
///
///     bytes_pre(P) = (P−1) · Σ_l a_l g_l · s = (P−1) · N_kfac · s   over all ranks per step
///
/// Trade-off: "broadcast inverses" sends m_inv ≈ Σ (a_l² + g_l²)/2 once per T_inv steps and
/// keeps all inverses on every rank; "broadcast preconditioned gradients" sends about one
/// gradient's worth (N_kfac) every step (≈ half a ring all-reduce of the gradients) but
/// stores 1/P of the inverses. With T_inv ≥ 10 and a_l, g_l of the same order as each other,
/// the first sends less per step; the second wins when memory is the limit or T_inv is small.
///
/// **Data-parallel K-FAC as built** (DistributedKfac): the statistics message also carries
/// the counts that make unequal splits and refusals exact (distributed_kfac_statistics_count),
/// and the refresh broadcasts eigenvectors and eigenvalues with a small header per factor
/// (distributed_kfac_refresh_count), and a recurrent layer's damping-dependent preparation
/// (the Option 1/2 bases, or the Independent approximation's damped inverses) as two more
/// parts with their headers (distributed_kfac_preparation_count); the MPI tests check them
/// against the traffic counters.
///
/// ## Checked against the wire
///
/// The MPI tests check the gradient path's payload counter (Communicator::traffic) against
/// bytes_grad, and bytes_grad against the bytes MPI actually sent: with Open MPI's TCP
/// transport over the loopback interface and the ring forced
/// (`--mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include lo --mca
/// coll_tuned_use_dynamic_rules 1 --mca coll_tuned_allreduce_algorithm 4`), the interface's
/// transmit counter over 5 steps of N = 401 610 doubles is 1.0013 × P · bytes_grad at P = 2
/// and at P = 3 (the excess is TCP/IP and MPI headers). Left to its own decision, Open MPI 4.1
/// picks another algorithm at P = 3, which sent 1.13 × the ring's bytes for 9.6 MB messages;
/// at P = 2 every algorithm sends the ring's m · s per rank.

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <vector>

namespace kfopt {
namespace mpi {
namespace cost_model {

/// Bytes one rank sends in a ring all-reduce of `count` elements of `scalar_bytes` each:
/// 2(P−1)/P · count · scalar_bytes.
inline double ring_allreduce_bytes_per_rank(int ranks, std::int64_t count,
                                            std::size_t scalar_bytes) {
  if (ranks <= 1) return 0.0;
  return 2.0 * (ranks - 1) / ranks * static_cast<double>(count) *
         static_cast<double>(scalar_bytes);
}

/// Bytes all non-root ranks together receive in a broadcast of `count` elements:
/// (P−1) · count · scalar_bytes.
inline double broadcast_bytes_total(int ranks, std::int64_t count, std::size_t scalar_bytes) {
  if (ranks <= 1) return 0.0;
  return static_cast<double>(ranks - 1) * static_cast<double>(count) *
         static_cast<double>(scalar_bytes);
}

/// Elements of the packed lower triangle of an n×n symmetric matrix: n(n+1)/2.
inline std::int64_t packed_triangle_count(std::int64_t n) { return n * (n + 1) / 2; }

/// Elements DataParallelGradients sends per step for N parameters: N + 3.
inline std::int64_t gradient_message_count(std::int64_t parameters) { return parameters + 3; }

/// bytes_grad(P, N) = 2(P−1)/P · (N + 3) · s, per rank per step.
inline double gradient_bytes_per_rank(int ranks, std::int64_t parameters,
                                      std::size_t scalar_bytes) {
  return ring_allreduce_bytes_per_rank(ranks, gradient_message_count(parameters), scalar_bytes);
}

/// Shape of one K-FAC layer for the cost model.
struct LayerShape {
  std::int64_t input_dim = 0;   ///< a_l (with the bias column when the layer has a bias)
  std::int64_t output_dim = 0;  ///< g_l
  bool recurrent = false;       ///< adds A1, G1 (full) and the length histogram
  std::int64_t max_length = 0;  ///< T_max of the recurrent layer's sequences
  /// n × n bases per factor side of a recurrent layer's prepared inverse: 1 for the
  /// Independent approximation and Option 1, 2 for Option 2.
  std::int64_t prepared_bases = 1;
};

/// m_stat: elements of one fused statistics all-reduce over all layers.
inline std::int64_t kfac_statistics_count(const std::vector<LayerShape>& layers) {
  std::int64_t m = 0;
  for (const auto& l : layers) {
    m += packed_triangle_count(l.input_dim) + packed_triangle_count(l.output_dim);
    if (l.recurrent) {
      m += l.input_dim * l.input_dim + l.output_dim * l.output_dim + l.max_length + 1;
    }
  }
  return m;
}

/// bytes_stat per rank for one statistics step (divide by T_stat for a per-step average).
inline double kfac_statistics_bytes_per_rank(int ranks, const std::vector<LayerShape>& layers,
                                             std::size_t scalar_bytes) {
  return ring_allreduce_bytes_per_rank(ranks, kfac_statistics_count(layers), scalar_bytes);
}

/// m_inv with packed symmetric inverses: Σ_l a_l(a_l+1)/2 + g_l(g_l+1)/2.
inline std::int64_t kfac_inverse_count(const std::vector<LayerShape>& layers) {
  std::int64_t m = 0;
  for (const auto& l : layers) {
    m += packed_triangle_count(l.input_dim) + packed_triangle_count(l.output_dim);
  }
  return m;
}

/// bytes_inv over all ranks for one refresh (divide by T_inv for a per-step average).
inline double kfac_inverse_broadcast_bytes_total(int ranks,
                                                 const std::vector<LayerShape>& layers,
                                                 std::size_t scalar_bytes) {
  return broadcast_bytes_total(ranks, kfac_inverse_count(layers), scalar_bytes);
}

/// Elements of DistributedKfac's statistics all-reduce (distributed_kfac.hpp): the packed
/// factors of kfac_statistics_count with the recurrent layers' histograms sized T_cap + 1
/// (`max_length` = DistributedKfacOptions::max_sequence_length, replacing each layer's own),
/// plus the counts that travel with them: 4 per dense layer (rows and non-finite batches of
/// A and G), 7 per recurrent layer (real steps, sequences and non-finite batches of A and G,
/// and the sequences longer than T_cap). Dense factors only (a diagonal factor sends n).
inline std::int64_t distributed_kfac_statistics_count(const std::vector<LayerShape>& layers,
                                                      std::int64_t max_length) {
  std::int64_t m = 0;
  for (const auto& l : layers) {
    m += packed_triangle_count(l.input_dim) + packed_triangle_count(l.output_dim);
    if (l.recurrent) {
      m += l.input_dim * l.input_dim + l.output_dim * l.output_dim + max_length + 1 + 7;
    } else {
      m += 4;
    }
  }
  return m;
}

/// Elements DistributedKfac broadcasts per refresh with distribute_refresh (all layers
/// due): per factor of size n (A and G of a dense layer, A0 and G0 of a recurrent one) a
/// 3-element header and its eigenvalues and eigenvectors, n(n+1) + 3. Bytes over all ranks:
/// (P−1) · count · s (broadcast_bytes_total).
inline std::int64_t distributed_kfac_refresh_count(const std::vector<LayerShape>& layers) {
  std::int64_t m = 0;
  for (const auto& l : layers) {
    m += l.input_dim * (l.input_dim + 1) + 3 + l.output_dim * (l.output_dim + 1) + 3;
  }
  return m;
}

/// Elements DistributedKfac broadcasts per refresh with distribute_refresh and
/// InverseMethod::Cholesky: per dense factor of size n a 3-element header and its n × n
/// damped inverse, n² + 3; a recurrent layer's A0 and G0 are eigendecomposed whatever the
/// inverse method (n(n+1) + 3 each).
inline std::int64_t distributed_kfac_cholesky_refresh_count(const std::vector<LayerShape>& layers) {
  std::int64_t m = 0;
  for (const auto& l : layers) {
    if (l.recurrent) {
      m += l.input_dim * (l.input_dim + 1) + 3 + l.output_dim * (l.output_dim + 1) + 3;
    } else {
      m += l.input_dim * l.input_dim + 3 + l.output_dim * l.output_dim + 3;
    }
  }
  return m;
}

/// Elements DistributedKfac broadcasts per preparation of the recurrent layers (after each
/// refresh, and on any step whose damping changed; factored damping): per factor side of
/// size n a 3-element header and n × (2 + b·n) (the side's spectrum, its clip count and its
/// b = prepared_bases n × n bases). Dense layers prepare nothing.
inline std::int64_t distributed_kfac_preparation_count(const std::vector<LayerShape>& layers) {
  std::int64_t m = 0;
  for (const auto& l : layers) {
    if (!l.recurrent) continue;
    for (const std::int64_t n : {l.input_dim, l.output_dim}) m += n * (2 + l.prepared_bases * n) + 3;
  }
  return m;
}

/// Elements DistributedKfac broadcasts per step with broadcast_preconditioned_gradients: per
/// layer a 1-element header (the owner's status) and the preconditioned gradient,
/// a_l g_l + 1. Bytes over all ranks: (P−1) · count · s per step.
inline std::int64_t distributed_kfac_preconditioned_count(const std::vector<LayerShape>& layers) {
  std::int64_t m = 0;
  for (const auto& l : layers) m += l.input_dim * l.output_dim + 1;
  return m;
}

/// bytes_pre over all ranks per step: (P−1) · Σ_l a_l g_l · s.
inline double kfac_preconditioned_broadcast_bytes_total(int ranks,
                                                        const std::vector<LayerShape>& layers,
                                                        std::size_t scalar_bytes) {
  std::int64_t m = 0;
  for (const auto& l : layers) m += l.input_dim * l.output_dim;
  return broadcast_bytes_total(ranks, m, scalar_bytes);
}

}  // namespace cost_model
}  // namespace mpi
}  // namespace kfopt
