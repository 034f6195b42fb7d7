#pragma once
/// \file lanes.hpp
/// \brief One element-wise formula for both a SIMD packet and a single scalar: `Lanes`, a
/// packet of Scalar (Eigen's packet type of this build) with arithmetic operators, the
/// comparisons, selects and masks that branch-free code needs, the loop that runs a formula
/// over a tile a packet at a time and then on the remaining scalars, and two accumulators over
/// such a loop: the true lanes of masks (LaneCounter) and the finiteness of values
/// (LaneFiniteness).
///
/// A formula written once as a template over its value type `T` (Scalar or `Lanes<Scalar>`)
/// performs, in every lane, the operations the scalar code performs, in the same order, so
/// the vectorized body and the scalar remainder of a loop give the same bits (and the scalar
/// instantiation is plain C++: `bool` masks, `?:` selects). Used by the element-wise filters
/// (filter/elementwise_filter.hpp), whose clamps and overflow branches GCC does not vectorize
/// from scalar code.
///
///     template <typename T> T relu_scaled(T x, T s) {
///       return select(lanes_lt(x, T(0)), T(0), s * x);
///     }
///     for_each_lane<Scalar>(n, [&](Eigen::Index k, auto lane) {
///       using L = decltype(lane);                 // Lanes<Scalar> or Scalar
///       lane_store(y + k, relu_scaled(lane_load<L>(x + k), L(s)));
///     });
///
/// Masks follow the scalar comparisons exactly, NaN included: `lanes_not_ge(a, b)` is
/// `!(a >= b)` (true when either is NaN), `lanes_lt(a, b)` is `a < b` (false for NaN). Cost:
/// nothing beyond the packet instructions; no allocation.
///
/// **Contraction.** A compiler that fuses a product into the sum that uses it (GCC with FMA
/// hardware, e.g. -march=native, fuses across statements by default) decides per product, in
/// the order the products are computed; the operands of an overloaded operator are not
/// evaluated in the order of the built-in one (GCC evaluates `x*y + z*w` on Lanes right to
/// left). A formula shared by the scalar and the packet code therefore computes every product
/// that meets a sum or a difference as a statement of its own, in the order of the formula:
///
///     const T kept = keep * w;  const T pushed = eta * p;  w = kept + pushed;
///
/// so that both instantiations (and code written before as one scalar expression) are fused
/// alike and give the same bits. (Clang fuses only within one expression by default: there
/// neither instantiation is fused.) Each of +, −, ×, ÷ is one correctly rounded operation per
/// lane, the same as on a scalar.

#include <Eigen/Core>
#include <cstdint>
#include <type_traits>

namespace kfopt {
namespace detail {

/// A SIMD packet of Scalar (Eigen's widest packet for this build) as a value with the
/// arithmetic operators; scalars in mixed expressions are broadcast.
template <typename Scalar>
struct Lanes {
  /// Eigen's packet type of Scalar.
  using Packet = typename Eigen::internal::packet_traits<Scalar>::type;
  /// Number of lanes.
  static constexpr int size = Eigen::internal::unpacket_traits<Packet>::size;

  Packet v;  ///< the lanes

  Lanes() = default;
  /// Every lane set to `s`.
  Lanes(Scalar s) : v(Eigen::internal::pset1<Packet>(s)) {}  // NOLINT: broadcast, like Scalar(0)
  /// The given packet (a function, not a constructor: without SIMD, Eigen's packet of
  /// Scalar is Scalar itself).
  static Lanes wrap(const Packet& p) {
    Lanes x;
    x.v = p;
    return x;
  }

  friend Lanes operator+(const Lanes& a, const Lanes& b) { return wrap(Eigen::internal::padd(a.v, b.v)); }
  friend Lanes operator-(const Lanes& a, const Lanes& b) { return wrap(Eigen::internal::psub(a.v, b.v)); }
  friend Lanes operator*(const Lanes& a, const Lanes& b) { return wrap(Eigen::internal::pmul(a.v, b.v)); }
  friend Lanes operator/(const Lanes& a, const Lanes& b) { return wrap(Eigen::internal::pdiv(a.v, b.v)); }
  friend Lanes operator+(Scalar a, const Lanes& b) { return Lanes(a) + b; }
  friend Lanes operator-(Scalar a, const Lanes& b) { return Lanes(a) - b; }
  friend Lanes operator*(Scalar a, const Lanes& b) { return Lanes(a) * b; }
  friend Lanes operator/(Scalar a, const Lanes& b) { return Lanes(a) / b; }
  friend Lanes operator+(const Lanes& a, Scalar b) { return a + Lanes(b); }
  friend Lanes operator-(const Lanes& a, Scalar b) { return a - Lanes(b); }
  friend Lanes operator*(const Lanes& a, Scalar b) { return a * Lanes(b); }
  friend Lanes operator/(const Lanes& a, Scalar b) { return a / Lanes(b); }
  Lanes& operator+=(const Lanes& b) { return *this = *this + b; }
  Lanes& operator-=(const Lanes& b) { return *this = *this - b; }
  Lanes& operator*=(const Lanes& b) { return *this = *this * b; }
  Lanes& operator/=(const Lanes& b) { return *this = *this / b; }
};

/// A per-lane truth value of `Lanes<Scalar>` (all bits set where true, as Eigen's pcmp_*).
template <typename Scalar>
struct LaneMask {
  typename Lanes<Scalar>::Packet bits;  ///< all ones where true, zero where false

  friend LaneMask operator|(const LaneMask& a, const LaneMask& b) {
    return LaneMask{Eigen::internal::por(a.bits, b.bits)};
  }
  friend LaneMask operator&(const LaneMask& a, const LaneMask& b) {
    return LaneMask{Eigen::internal::pand(a.bits, b.bits)};
  }
};

/// The scalar type of a value type (Scalar itself, or the lanes' Scalar).
template <typename T>
struct LaneTraits {
  using Scalar = T;
  using Mask = bool;
};
template <typename S>
struct LaneTraits<Lanes<S>> {
  using Scalar = S;
  using Mask = LaneMask<S>;
};
/// The mask type of a value type: bool for a scalar, LaneMask for lanes.
template <typename T>
using LaneMaskOf = typename LaneTraits<T>::Mask;

// ---- scalars (plain C++) -----------------------------------------------------------------

/// `a < b` (false when either is NaN).
template <typename T, typename = std::enable_if_t<std::is_floating_point<T>::value>>
inline bool lanes_lt(T a, T b) noexcept { return a < b; }
/// `!(a >= b)` (true when either is NaN).
template <typename T, typename = std::enable_if_t<std::is_floating_point<T>::value>>
inline bool lanes_not_ge(T a, T b) noexcept { return !(a >= b); }
/// `m ? a : b`.
template <typename T, typename = std::enable_if_t<std::is_floating_point<T>::value>>
inline T select(bool m, T a, T b) noexcept { return m ? a : b; }
/// `a && !b`.
inline bool and_not(bool a, bool b) noexcept { return a && !b; }
/// Whether the mask is true (in any lane).
inline bool any(bool m) noexcept { return m; }
/// `*p`.
template <typename T, typename Scalar,
          typename = std::enable_if_t<std::is_floating_point<T>::value>>
inline T lane_load(const Scalar* p) noexcept { return *p; }
/// `*p = x`.
template <typename Scalar>
inline void lane_store(Scalar* p, Scalar x) noexcept { *p = x; }
/// 1 where the mask is true (as a count).
inline std::int64_t lane_count(bool m) noexcept { return m ? 1 : 0; }

// ---- packets ------------------------------------------------------------------------------

/// `a < b` per lane (false when either is NaN).
template <typename S>
inline LaneMask<S> lanes_lt(const Lanes<S>& a, const Lanes<S>& b) {
  return LaneMask<S>{Eigen::internal::pcmp_lt(a.v, b.v)};
}
/// `!(a >= b)` per lane (true when either is NaN).
template <typename S>
inline LaneMask<S> lanes_not_ge(const Lanes<S>& a, const Lanes<S>& b) {
  return LaneMask<S>{Eigen::internal::pcmp_lt_or_nan(a.v, b.v)};
}
/// Per lane `m ? a : b`.
template <typename S>
inline Lanes<S> select(const LaneMask<S>& m, const Lanes<S>& a, const Lanes<S>& b) {
  return Lanes<S>::wrap(Eigen::internal::pselect(m.bits, a.v, b.v));
}
/// Per lane `a && !b`.
template <typename S>
inline LaneMask<S> and_not(const LaneMask<S>& a, const LaneMask<S>& b) {
  return LaneMask<S>{Eigen::internal::pandnot(a.bits, b.bits)};
}
/// Whether any lane of a comparison mask is set: Eigen's predux_any, and a movemask / test
/// for the double packets of x86, for which Eigen 3.4 has no specialization (its generic
/// form sums the lanes).
template <typename Packet>
inline bool packet_any(const Packet& bits) {
  return Eigen::internal::predux_any(bits);
}
#if defined(EIGEN_VECTORIZE_AVX512)
inline bool packet_any(const Eigen::internal::Packet8d& bits) {
  const __m512i b = _mm512_castpd_si512(bits);
  return _mm512_test_epi64_mask(b, b) != 0;
}
#endif
#if defined(EIGEN_VECTORIZE_AVX)
inline bool packet_any(const Eigen::internal::Packet4d& bits) { return _mm256_movemask_pd(bits) != 0; }
#endif
#if defined(EIGEN_VECTORIZE_SSE2)
inline bool packet_any(const Eigen::internal::Packet2d& bits) { return _mm_movemask_pd(bits) != 0; }
#endif

/// Whether the mask is true in any lane.
template <typename S>
inline bool any(const LaneMask<S>& m) {
  return packet_any(m.bits);
}
/// The lanes at p (unaligned).
template <typename L, typename S, typename = std::enable_if_t<std::is_same<L, Lanes<S>>::value>>
inline Lanes<S> lane_load(const S* p) {
  return Lanes<S>::wrap(Eigen::internal::ploadu<typename Lanes<S>::Packet>(p));
}
/// Stores the lanes at p (unaligned).
template <typename S>
inline void lane_store(S* p, const Lanes<S>& x) {
  Eigen::internal::pstoreu(p, x.v);
}

/// Counts the true lanes of masks (e.g. clamp events) over a loop of `for_each_lane`: a
/// per-lane sum in the packet body (exact while each lane's count stays below 2^24, i.e.
/// for any tile shorter than 2^24 packets), an integer for the scalars.
template <typename Scalar>
class LaneCounter {
 public:
  /// Adds the true lanes of `m`.
  void add(const LaneMask<Scalar>& m) {
    packed_ = Eigen::internal::padd(
        packed_, Eigen::internal::pand(m.bits, Eigen::internal::pset1<Packet>(Scalar(1))));
  }
  /// Adds 1 if `m`.
  void add(bool m) { scalar_ += lane_count(m); }
  /// The count so far.
  std::int64_t total() const {
    // The lanes, added one by one (GCC 12 reports a false -Wuninitialized inside the
    // AVX-512 extract intrinsics of Eigen's predux).
    Scalar lanes[Lanes<Scalar>::size];
    Eigen::internal::pstoreu(lanes, packed_);
    std::int64_t sum = scalar_;
    for (const Scalar lane : lanes) sum += static_cast<std::int64_t>(lane);
    return sum;
  }

 private:
  using Packet = typename Lanes<Scalar>::Packet;
  Packet packed_ = Eigen::internal::pset1<Packet>(Scalar(0));
  std::int64_t scalar_ = 0;
};

/// Sums values over a loop of `for_each_lane`: a per-lane sum in the packet body, a Scalar
/// for the scalars, added together in double by total() (for diagnostics: the lanes of a
/// tile are summed in Scalar).
template <typename Scalar>
class LaneSum {
 public:
  /// Adds the lanes of `x`.
  void add(const Lanes<Scalar>& x) { packed_ = Eigen::internal::padd(packed_, x.v); }
  /// Adds `x`.
  void add(Scalar x) { scalar_ += x; }
  /// The sum so far.
  double total() const {
    Scalar lanes[Lanes<Scalar>::size];
    Eigen::internal::pstoreu(lanes, packed_);
    double sum = static_cast<double>(scalar_);
    for (const Scalar lane : lanes) sum += static_cast<double>(lane);
    return sum;
  }

 private:
  using Packet = typename Lanes<Scalar>::Packet;
  Packet packed_ = Eigen::internal::pset1<Packet>(Scalar(0));
  Scalar scalar_ = Scalar(0);
};

/// Whether every value added (over a loop of `for_each_lane`) is finite: ORs the bits of
/// `x · 0` (±0 for a finite x, NaN otherwise) in the packet body, adds them for the scalars
/// (as core/checked_store.hpp: not to be compiled with -ffinite-math-only).
template <typename Scalar>
class LaneFiniteness {
 public:
  /// Adds the lanes of `x`.
  void add(const Lanes<Scalar>& x) {
    packed_ = Eigen::internal::por(packed_, Eigen::internal::pmul(x.v, zero_));
  }
  /// Adds `x`.
  void add(Scalar x) { scalar_ = scalar_ + x * Scalar(0); }
  /// Whether every value added was finite.
  bool finite() const {
    Scalar lanes[Lanes<Scalar>::size];
    Eigen::internal::pstoreu(lanes, packed_);
    Scalar sum = scalar_;
    for (const Scalar lane : lanes) sum += lane;
    return sum == Scalar(0);
  }

 private:
  using Packet = typename Lanes<Scalar>::Packet;
  Packet zero_ = Eigen::internal::pset1<Packet>(Scalar(0));
  Packet packed_ = zero_;
  Scalar scalar_ = Scalar(0);
};

/// Calls `f(k, Lanes<Scalar>{})` for k = 0, P, 2P, ... while a whole packet of P lanes fits
/// in [0, n), then `f(k, Scalar{})` for each remaining k: `f` (a generic lambda) loads,
/// computes and stores the elements [k, k + lanes) with the value type it is given.
template <typename Scalar, typename F>
EIGEN_STRONG_INLINE void for_each_lane(Eigen::Index n, F&& f) {
  constexpr Eigen::Index p = Lanes<Scalar>::size;
  Eigen::Index k = 0;
  if constexpr (p > 1) {
    for (; k + p <= n; k += p) f(k, Lanes<Scalar>{});
  }
  for (; k < n; ++k) f(k, Scalar{});
}

}  // namespace detail
}  // namespace kfopt
