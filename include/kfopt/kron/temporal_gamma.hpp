#pragma once
/// \file temporal_gamma.hpp
/// \brief The temporal sums of RNN K-FAC Option 1 (Martens, Ba & Johnson 2018, §3.5.2,
/// eq. 8 and appendix C.3), evaluated stably for every `x ∈ [−1, 1]` and every length:
///
///     η_T(x) = Σ_{d=−T}^{T} (T − |d|) x^{|d|}
///            = (T(1 − x²) − 2x(1 − x^T)) / (1 − x)²          (x ≠ 1),
///     γ(x)   = 1 / E_T[η_T(x)] = (1 − x)² / Σ_i ω_i (T_i(1 − x²) − 2x(1 − x^{T_i})).
///
/// η_T(x) is the whitened Fisher `F̂_T` of a length-T chain along an eigendirection of a
/// symmetric transition matrix Ψ̂ with eigenvalue x (eq. 7 with Ψ̂ = Ψ̂ᵀ): the sum of all
/// entries of the T×T matrix `[x^{|t−s|}]`, positive for |x| < 1 and T ≥ 1.
///
/// Why not the closed form alone: at x = 1 it is 0/0, and near 1 its numerator is a
/// difference of two terms of size 2Tu (u = 1 − x) whose result is about T²u², so it
/// loses a factor 1/(Tu) of relative accuracy. kfopt uses:
///
/// - **near x = 1** (x > 0 and T·u ≤ 1): the exact expansion in u = 1 − x,
///
///       η_T(1 − u) = T² + 2 Σ_{k=1}^{T−1} (−1)^k C(T+1, k+2) u^k,
///
///   (from `Σ_{d=0}^{T} (T − d) C(d, k) = C(T+1, k+2)`), summed as `T² (1 + 2 Σ (−1)^k s_k)`
///   with `s_1 = (T+1)(T−1) u / (6T)`, `s_{k+1} = s_k · u (T−k−1)/(k+3)`. Since
///   `s_{k+1}/s_k ≤ Tu/(k+3) ≤ 1/4` the alternating series converges in ≤ 30 terms to full
///   precision and its terms never overflow, for any T. At x = 1 it gives **η_T(1) = T²**,
///   so **γ(1) = 1 / E_T[T²]**, finite (the limit the closed form hides).
/// - **elsewhere**: the closed form with `1 − x² = u(1 + x)` and `|x|^T = 1 + expm1(T
///   log1p(−(1 − |x|)))`, so that `1 − x^T` is exact to rounding also for x near −1 (where
///   `1 − x^T → 0` for even T) and underflows harmlessly to 1 for large T. Both terms of the
///   numerator are then non-negative or the cancellation is bounded (T·u > 1), so the
///   relative error is a few ulps. No overflow: |x| ≤ 1, and T ≤ 2³¹ keeps T² finite.
///
/// At x = −1, η_T = 0 for even T (perfectly anti-correlated steps cancel) and 1 for odd T,
/// so γ(−1) can be +∞ when every length is even. RNN K-FAC keeps |x| ≤ ρ² < 1 by clipping
/// the transition factors' eigenvalues, which makes every η positive.
///
/// Cost: O(1) transcendental calls per (x, T) (≤ 30 multiply-adds near 1); γ over a
/// distribution of K lengths costs K of them.

#include <cmath>
#include <limits>
#include <string>

#include "kfopt/core/error.hpp"
#include "kfopt/kron/sequence_lengths.hpp"

namespace kfopt {

/// `η_T(x) = Σ_{d=−T}^{T} (T − |d|) x^{|d|}` for `x ∈ [−1, 1]` and integer `T ≥ 0`
/// (see temporal_gamma.hpp for the method). `Real` is float, double or long double; float
/// is evaluated in double. Throws InvalidInputError for |x| > 1, NaN, or a negative or
/// non-integer T.
template <typename Real>
Real temporal_eta(Real x, Real length) {
  using Work = typename std::conditional<(sizeof(Real) < sizeof(double)), double, Real>::type;
  const Work T = static_cast<Work>(length);
  const Work X = static_cast<Work>(x);
  if (!(X >= Work(-1) && X <= Work(1))) {
    throw InvalidInputError("kfopt::temporal_eta: x must lie in [-1, 1], got " +
                            std::to_string(static_cast<double>(x)));
  }
  if (!(T >= Work(0)) || !std::isfinite(T) || T != std::floor(T)) {
    throw InvalidInputError("kfopt::temporal_eta: T must be a finite integer >= 0, got " +
                            std::to_string(static_cast<double>(length)));
  }
  if (T == Work(0)) return Real(0);
  if (T == Work(1)) return Real(1);
  const Work u = Work(1) - X;  // exact for x ∈ [1/2, 1] (Sterbenz)
  if (X > Work(0) && T * u <= Work(1)) {
    // η = T² (1 + 2 Σ_{k=1}^{T−1} (−1)^k s_k),  s_k = C(T+1, k+2) u^k / T².
    Work s = (T + Work(1)) * (T - Work(1)) * u / (Work(6) * T);
    Work sum = Work(0);
    Work sign = Work(-1);
    const Work tiny = std::numeric_limits<Work>::epsilon() * Work(1e-3);
    for (Work k = Work(1); k <= T - Work(1) && s > tiny; k += Work(1)) {
      sum += sign * s;
      sign = -sign;
      s *= u * (T - k - Work(1)) / (k + Work(3));
    }
    return static_cast<Real>(T * T * (Work(1) + Work(2) * sum));
  }
  // Closed form: (T u (1 + x) − 2 x (1 − x^T)) / u².
  const Work a = std::abs(X);
  const Work e = std::expm1(T * std::log1p(-(Work(1) - a)));  // |x|^T − 1 ∈ [−1, 0]
  const bool positive_power = X >= Work(0) || std::fmod(T, Work(2)) == Work(0);
  const Work one_minus_power = positive_power ? -e : Work(2) + e;  // 1 − x^T
  const Work numerator = T * u * (Work(1) + X) - Work(2) * X * one_minus_power;
  return static_cast<Real>(numerator / (u * u));
}

/// `E_T[η_T(x)] = Σ_i ω_i η_{T_i}(x)` over a length distribution (the eigenvalue of the
/// whitened Option-1 Fisher `F̂ = E_T[η_T(Ψ̂)]`, §3.5.2). Same range and errors as
/// temporal_eta; `lengths` must be valid (SequenceLengths::validate).
template <typename Real>
Real temporal_eta_mean(Real x, const SequenceLengths& lengths) {
  using Work = typename std::conditional<(sizeof(Real) < sizeof(double)), double, Real>::type;
  Work s = Work(0);
  for (std::size_t i = 0; i < lengths.size(); ++i) {
    s += static_cast<Work>(lengths.weights[i]) *
         static_cast<Work>(temporal_eta<Work>(static_cast<Work>(x),
                                              static_cast<Work>(lengths.lengths[i])));
  }
  return static_cast<Real>(s);
}

/// `γ(x) = 1 / E_T[η_T(x)]` (RNN K-FAC eq. 8; appendix C.3). Finite and positive for
/// |x| < 1 whenever some length is ≥ 1; `γ(1) = 1/E_T[T²]`; +∞ where E_T[η] = 0 (x = −1
/// with only even lengths, or only zero lengths). Throws as temporal_eta.
template <typename Real>
Real temporal_gamma(Real x, const SequenceLengths& lengths) {
  using Work = typename std::conditional<(sizeof(Real) < sizeof(double)), double, Real>::type;
  const Work mean_eta = temporal_eta_mean<Work>(static_cast<Work>(x), lengths);
  if (!(mean_eta > Work(0))) return std::numeric_limits<Real>::infinity();
  return static_cast<Real>(Work(1) / mean_eta);
}

}  // namespace kfopt
