#pragma once
/// \file checked_store.hpp
/// \brief Several element-wise assignments to tiles in one vectorized pass that also tells
/// whether every value stored (or only checked) is finite — the result check of a guarded
/// step (core/step_guard.hpp) at no extra pass over the data.
///
///     const bool finite = detail::store_checked<Scalar>(n,
///         detail::store(mn, b1 * m + (1 - b1) * g),
///         detail::store(p, p - lr * (b1 * m + (1 - b1) * g)),  // in place; the expression again
///         detail::check(g));                   // checked, not stored
///
/// Terms are evaluated element by element (a SIMD packet at a time): at each index every
/// term is computed first, then the stores are made, so a term reads the values its inputs
/// had before the pass (a store may target an input of the same index, e.g. the new
/// parameters over the old), never what another term stores. Every term must be element-wise
/// (no products, reductions or shifted reads). The check ORs the bits of `x · 0` over the values
/// (±0 when all are finite, a NaN otherwise: no dependency chain through an adder), so it must not be compiled with -ffinite-math-only (or
/// -ffast-math), which kfopt never uses. Cost: one pass over the tiles' elements with one
/// extra multiply-add per value checked; no allocation.

#include <Eigen/Core>
#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>

namespace kfopt {
namespace detail {

/// A term of store_checked: `data[k] ← expr[k]`, then check it.
template <typename Scalar, typename Expr>
struct StoreTerm {
  Scalar* data;  ///< destination (n elements)
  Expr expr;     ///< element-wise array expression of n elements
};

/// A term of store_checked that only checks `expr[k]`.
template <typename Expr>
struct CheckTerm {
  Expr expr;  ///< element-wise array expression of n elements
};

/// `dest ← expr` as a term of store_checked (dest: a contiguous array map, e.g. a Tile).
template <typename Scalar, int Options, typename ExprDerived>
StoreTerm<Scalar, ExprDerived> store(Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>, Options> dest,
                                     const Eigen::ArrayBase<ExprDerived>& expr) {
  return StoreTerm<Scalar, ExprDerived>{dest.data(), expr.derived()};
}

/// Checks `expr` (not stored) as a term of store_checked.
template <typename ExprDerived>
CheckTerm<ExprDerived> check(const Eigen::ArrayBase<ExprDerived>& expr) {
  return CheckTerm<ExprDerived>{expr.derived()};
}

namespace checked_store_impl {

template <typename T>
struct ExprOf;
template <typename Scalar, typename Expr>
struct ExprOf<StoreTerm<Scalar, Expr>> {
  using type = Expr;
};
template <typename Expr>
struct ExprOf<CheckTerm<Expr>> {
  using type = Expr;
};

template <typename Expr>
constexpr bool packet_access() {
  using Eval = Eigen::internal::evaluator<Expr>;
  return (static_cast<unsigned>(Eval::Flags) & Eigen::PacketAccessBit) != 0 &&
         (static_cast<unsigned>(Eval::Flags) & Eigen::LinearAccessBit) != 0;
}

template <typename Packet, typename Scalar, typename Expr>
EIGEN_STRONG_INLINE void store_packet(const StoreTerm<Scalar, Expr>& term, Eigen::Index k, const Packet& x) {
  Eigen::internal::pstoreu(term.data + k, x);
}
template <typename Packet, typename Expr>
EIGEN_STRONG_INLINE void store_packet(const CheckTerm<Expr>&, Eigen::Index, const Packet&) {}

template <typename Scalar, typename Expr>
EIGEN_STRONG_INLINE void store_scalar(const StoreTerm<Scalar, Expr>& term, Eigen::Index k, Scalar x) {
  term.data[k] = x;
}
template <typename Scalar, typename Expr>
EIGEN_STRONG_INLINE void store_scalar(const CheckTerm<Expr>&, Eigen::Index, Scalar) {}

template <typename Scalar, typename Evals, typename Terms, std::size_t... I>
bool run(Eigen::Index n, Evals& evals, const Terms& terms, std::index_sequence<I...>) {
  using Packet = typename Eigen::internal::packet_traits<Scalar>::type;
  constexpr bool vectorize =
      Eigen::internal::packet_traits<Scalar>::Vectorizable &&
      (packet_access<typename ExprOf<std::decay_t<std::tuple_element_t<I, Terms>>>::type>() && ...);
  Eigen::Index k = 0;
  Scalar acc = Scalar(0);
  if constexpr (vectorize) {
    constexpr Eigen::Index size = Eigen::internal::packet_traits<Scalar>::size;
    const Packet zero = Eigen::internal::pset1<Packet>(Scalar(0));
    Packet packed = zero;
    for (; k + size <= n; k += size) {
      // Every term's packet is loaded and computed before any is stored: no load waits on
      // a store, and loads shared by several terms can be merged.
      const Packet x[] = {std::get<I>(evals).template packet<Eigen::Unaligned, Packet>(k)...};
      (store_packet(std::get<I>(terms), k, x[I]), ...);
      ((packed = Eigen::internal::por(packed, Eigen::internal::pmul(x[I], zero))), ...);
    }
    // The lanes, summed one by one (GCC 12 reports a false -Wuninitialized inside the
    // AVX-512 extract intrinsics of Eigen's predux).
    Scalar lanes[size];
    Eigen::internal::pstoreu(lanes, packed);
    for (const Scalar lane : lanes) acc += lane;
  }
  for (; k < n; ++k) {
    const Scalar x[] = {std::get<I>(evals).coeff(k)...};
    (store_scalar(std::get<I>(terms), k, x[I]), ...);
    ((acc = acc + x[I] * Scalar(0)), ...);
  }
  return acc == Scalar(0);
}

}  // namespace checked_store_impl

/// Evaluates the terms (`store(dest, expr)`, `check(expr)`) over elements [0, n), in order,
/// in one vectorized pass, and returns whether every value stored or checked is finite.
template <typename Scalar, typename... Terms>
bool store_checked(Eigen::Index n, const Terms&... terms) {
  std::tuple<Eigen::internal::evaluator<typename checked_store_impl::ExprOf<Terms>::type>...> evals(
      terms.expr...);
  return checked_store_impl::run<Scalar>(n, evals, std::forward_as_tuple(terms...),
                                         std::index_sequence_for<Terms...>{});
}

}  // namespace detail
}  // namespace kfopt
