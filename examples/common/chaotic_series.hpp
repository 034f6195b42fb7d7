#pragma once
/// \file chaotic_series.hpp
/// \brief The Mackey–Glass delay-differential equation, integrated and sampled: the chaotic
/// series the recurrent task of examples/ekf_online.cpp learns online.
///
///     dx/dt = β x(t − τ) / (1 + x(t − τ)^p) − γ x(t)
///
/// (Mackey & Glass 1977). With the classic β = 0.2, γ = 0.1, p = 10 and τ = 17 the solution
/// is chaotic (a low-dimensional strange attractor, values roughly in [0.2, 1.4]); it is the
/// series on which recurrent networks trained by extended Kalman filters were first shown
/// (Puskorius & Feldkamp; Haykin, "Kalman filtering and neural networks", 2001).
///
/// Integration: classical Runge–Kutta (RK4) with step dt on a grid where τ/dt is an integer,
/// so x(t − τ) and x(t − τ + dt) are stored grid values and x(t − τ + dt/2) is their mean
/// (linear interpolation, O(dt²) like the rest of the step's delay error). The history
/// before t = 0 is the constant `initial`. Cost O(τ/dt) memory, O(1) per grid step.

#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

namespace kfopt_examples {

/// Parameters of the Mackey–Glass equation and of its sampling.
struct MackeyGlassParameters {
  double beta = 0.2;        ///< production rate β > 0
  double gamma = 0.1;       ///< decay rate γ > 0
  double exponent = 10.0;   ///< nonlinearity p > 0
  double delay = 17.0;      ///< τ > 0 (17: chaotic; below ~16.8 the solution is periodic)
  double dt = 0.1;          ///< RK4 step; τ/dt and sample_every/dt must be integers
  double sample_every = 1.0;  ///< time between two returned samples
  double initial = 1.2;     ///< x(t) for t ≤ 0
  double discard = 500.0;   ///< transient (time units) integrated and dropped first
};

/// `count` samples x(t_0), x(t_0 + Δ), … with t_0 = discard and Δ = sample_every.
/// Throws std::invalid_argument for parameters outside their range or grids that do not
/// divide evenly.
inline std::vector<double> mackey_glass(std::size_t count, const MackeyGlassParameters& p = {}) {
  auto steps_of = [&](double span, const char* what) {
    const double ratio = span / p.dt;
    const long rounded = std::lround(ratio);
    if (!(p.dt > 0) || rounded < 1 || std::abs(ratio - static_cast<double>(rounded)) > 1e-9) {
      throw std::invalid_argument(std::string("mackey_glass: ") + what +
                                  " must be a positive multiple of dt");
    }
    return static_cast<std::size_t>(rounded);
  };
  if (!(p.beta > 0) || !(p.gamma > 0) || !(p.exponent > 0) || !std::isfinite(p.initial) ||
      !(p.discard >= 0)) {
    throw std::invalid_argument("mackey_glass: needs beta, gamma, exponent > 0, a finite initial "
                                "value and discard >= 0");
  }
  const std::size_t lag = steps_of(p.delay, "delay");
  const std::size_t stride = steps_of(p.sample_every, "sample_every");
  const std::size_t skip = p.discard > 0 ? steps_of(p.discard, "discard") : 0;

  // history[(i) % (lag + 1)] holds x at grid step i for the last lag + 1 grid steps.
  std::vector<double> history(lag + 1, p.initial);
  auto delayed = [&](std::size_t i) {  // x at grid step i − lag (constant before 0)
    return i < lag ? p.initial : history[(i - lag) % (lag + 1)];
  };
  auto rhs = [&](double x, double x_lag) {
    return p.beta * x_lag / (1.0 + std::pow(x_lag, p.exponent)) - p.gamma * x;
  };

  std::vector<double> out;
  out.reserve(count);
  double x = p.initial;
  history[0] = x;
  for (std::size_t i = 0; out.size() < count; ++i) {
    if (i >= skip && (i - skip) % stride == 0) out.push_back(x);
    if (out.size() == count) break;
    const double lag0 = delayed(i);
    const double lag1 = delayed(i + 1);
    const double lag_half = 0.5 * (lag0 + lag1);
    const double k1 = rhs(x, lag0);
    const double k2 = rhs(x + 0.5 * p.dt * k1, lag_half);
    const double k3 = rhs(x + 0.5 * p.dt * k2, lag_half);
    const double k4 = rhs(x + p.dt * k3, lag1);
    x += p.dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4);
    history[(i + 1) % (lag + 1)] = x;
  }
  return out;
}

}  // namespace kfopt_examples
