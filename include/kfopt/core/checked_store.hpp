#pragma once
/// \file checked_store.hpp
/// \brief Several element-wise assignments to tiles in one vectorized pass that also tells
/// whether every value stored (or only checked) is finite — the result check of a guarded
/// step (core/step_guard.hpp) at no extra pass over the data.
///
///     const bool finite = detail::store_checked<Scalar>(n,
///         detail::store(mn, b1 * m + (1 - b1) * g),
///         detail::store(pn, p - lr * mn),      // reads mn as just stored, element by element
///         detail::check(g));                   // checked, not stored
///
/// Terms are evaluated in order, element by element (a SIMD packet at a time), so a term may
/// read what an earlier term stored at the same index. Every term must be element-wise (no
/// products, reductions or shifted reads). The check ORs the bits of `x · 0` over the values
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

template <typename Packet, typename Eval, typename Scalar, typename Expr>
EIGEN_STRONG_INLINE Packet packet_term(const Eval& eval, const StoreTerm<Scalar, Expr>& term,
                                       Eigen::Index k, const Packet& acc, const Packet& zero) {
  const Packet x = eval.template packet<Eigen::Unaligned, Packet>(k);
  Eigen::internal::pstoreu(term.data + k, x);
  return Eigen::internal::por(acc, Eigen::internal::pmul(x, zero));
}
template <typename Packet, typename Eval, typename Expr>
EIGEN_STRONG_INLINE Packet packet_term(const Eval& eval, const CheckTerm<Expr>&, Eigen::Index k,
                                       const Packet& acc, const Packet& zero) {
  const Packet x = eval.template packet<Eigen::Unaligned, Packet>(k);
  return Eigen::internal::por(acc, Eigen::internal::pmul(x, zero));
}

template <typename Scalar, typename Eval, typename Expr>
EIGEN_STRONG_INLINE Scalar scalar_term(const Eval& eval, const StoreTerm<Scalar, Expr>& term,
                                       Eigen::Index k, Scalar acc) {
  const Scalar x = eval.coeff(k);
  term.data[k] = x;
  return acc + x * Scalar(0);
}
template <typename Scalar, typename Eval, typename Expr>
EIGEN_STRONG_INLINE Scalar scalar_term(const Eval& eval, const CheckTerm<Expr>&, Eigen::Index k,
                                       Scalar acc) {
  return acc + eval.coeff(k) * Scalar(0);
}

template <typename Scalar, typename Evals, typename Terms, std::size_t... I>
bool run(Eigen::Index n, Evals& evals, const Terms& terms, std::index_sequence<I...>) {
  using Packet = typename Eigen::internal::packet_traits<Scalar>::type;
  constexpr bool vectorize =
      Eigen::internal::packet_traits<Scalar>::Vectorizable &&
      (packet_access<typename ExprOf<std::decay_t<std::tuple_element_t<I, Terms>>>::type>() && ...);
  Eigen::Index k = 0;
  Scalar acc = Scalar(0);
  if constexpr (vectorize) {
    constexpr Eigen::Index size = Eigen::internal::unpacket_traits<Packet>::size;
    const Packet zero = Eigen::internal::pset1<Packet>(Scalar(0));
    Packet packed = zero;
    for (; k + size <= n; k += size) {
      ((packed = packet_term(std::get<I>(evals), std::get<I>(terms), k, packed, zero)), ...);
    }
    acc = Eigen::internal::predux(packed);
  }
  for (; k < n; ++k) {
    ((acc = scalar_term<Scalar>(std::get<I>(evals), std::get<I>(terms), k, acc)), ...);
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
