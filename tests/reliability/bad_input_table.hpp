#pragma once
// The harness of the bad-input suite (test_bad_input.cpp): a Fixture per optimizer, the table
// of bad values and positions, the trial loop and its checks, and the printed summary.
//
// A Fixture exposes what the table needs and nothing else:
//   good_inputs()  puts finite, moderate gradients / statistics / observations in place;
//   step()         one training step on the current inputs (returns the optimizer's Status);
//   sites()        the places a bad value can be injected (gradients, statistics,
//                  observations, the caller's parameter storage), by name;
//   snapshot()     the bytes of the parameters and of every state entry that a refused step
//                  must leave unchanged (refusal counters excluded);
//   finite()       whether the parameters and the state are all finite;
//   misuses()      calls that must throw a clear error and change nothing (corrupted
//                  restores, wrong shapes, bad setters, zero-size batches);
//   recoverable()  whether a good step must succeed after a refused trial (false for a
//                  fixture whose schedule is bad from some step on).

#include <Eigen/Core>

#include <cmath>
#include <cstring>
#include <functional>
#include <iomanip>
#include <limits>
#include <memory>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <kfopt/core/error.hpp>

namespace kfopt_reliability {

template <typename Scalar>
using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
template <typename Scalar>
using Vec = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

inline double inf() { return std::numeric_limits<double>::infinity(); }
inline double nan() { return std::numeric_limits<double>::quiet_NaN(); }
template <typename Scalar>
Scalar inf_of() { return std::numeric_limits<Scalar>::infinity(); }
template <typename Scalar>
Scalar nan_of() { return std::numeric_limits<Scalar>::quiet_NaN(); }

/// One place a value can be injected: an Eigen object of the fixture, by reference.
struct Site {
  std::string name;
  std::function<Eigen::Index()> size;
  std::function<long double(Eigen::Index)> get;
  std::function<void(Eigen::Index, long double)> set;
};

template <typename Derived>
Site site(std::string name, Eigen::PlainObjectBase<Derived>& m) {
  using Scalar = typename Derived::Scalar;
  return Site{std::move(name), [&m] { return m.size(); },
              [&m](Eigen::Index k) { return static_cast<long double>(m.data()[k]); },
              [&m](Eigen::Index k, long double v) { m.data()[k] = static_cast<Scalar>(v); }};
}

/// Bytes of parameters and state, for bit-for-bit comparison, and their finiteness.
class Bytes {
 public:
  template <typename Derived>
  Bytes& add(const Eigen::DenseBase<Derived>& x) {
    using Scalar = typename Derived::Scalar;
    const Mat<Scalar> m = x;
    const auto* p = reinterpret_cast<const char*>(m.data());
    bytes_.append(p, sizeof(Scalar) * static_cast<std::size_t>(m.size()));
    finite_ = finite_ && m.allFinite();
    return *this;
  }
  template <typename Scalar>
  Bytes& add(const std::vector<Mat<Scalar>>& buffers) {
    for (const auto& b : buffers) add(b);
    return *this;
  }
  Bytes& add(std::int64_t v) {
    bytes_.append(reinterpret_cast<const char*>(&v), sizeof v);
    return *this;
  }
  Bytes& add_real(double v) {
    bytes_.append(reinterpret_cast<const char*>(&v), sizeof v);
    finite_ = finite_ && std::isfinite(v);
    return *this;
  }
  const std::string& str() const { return bytes_; }
  bool finite() const { return finite_; }

 private:
  std::string bytes_;
  bool finite_ = true;
};

/// A call that must throw a clear error and change nothing.
struct Misuse {
  std::string name;
  std::function<void()> call;
};

class Fixture {
 public:
  virtual ~Fixture() = default;
  virtual void good_inputs() = 0;
  virtual kfopt::Status step() = 0;
  virtual std::vector<Site> sites() = 0;
  virtual std::string snapshot() = 0;
  virtual bool finite() = 0;
  virtual std::vector<Misuse> misuses() = 0;
  virtual bool recoverable() const { return true; }
};

struct Entry {
  std::string name;
  std::function<std::unique_ptr<Fixture>()> make;
};

// ------------------------------------------------------------------ state serialization

#define KFOPT_RELIABILITY_HAS(member)                                                    \
  template <typename T, typename = void>                                                 \
  struct has_##member : std::false_type {};                                              \
  template <typename T>                                                                  \
  struct has_##member<T, std::void_t<decltype(std::declval<T&>().member)>> : std::true_type {};

KFOPT_RELIABILITY_HAS(momentum)
KFOPT_RELIABILITY_HAS(first_moment)
KFOPT_RELIABILITY_HAS(second_moment)
KFOPT_RELIABILITY_HAS(max_second_moment)
KFOPT_RELIABILITY_HAS(square_average)
KFOPT_RELIABILITY_HAS(gradient_average)
KFOPT_RELIABILITY_HAS(variance)
KFOPT_RELIABILITY_HAS(weight_variance)
KFOPT_RELIABILITY_HAS(cross_covariance)
KFOPT_RELIABILITY_HAS(momentum_variance)
KFOPT_RELIABILITY_HAS(centering_weight)
KFOPT_RELIABILITY_HAS(phase)
KFOPT_RELIABILITY_HAS(clamped_variances)
KFOPT_RELIABILITY_HAS(covariance)
KFOPT_RELIABILITY_HAS(fisher)
KFOPT_RELIABILITY_HAS(last_step_size)
KFOPT_RELIABILITY_HAS(hidden)
KFOPT_RELIABILITY_HAS(recurrent)

/// Calls `f(name, buffers, nonnegative)` for every per-block buffer member of a State.
template <typename State, typename F>
void for_each_buffer(State& s, F&& f) {
  if constexpr (has_momentum<State>::value) f("momentum", s.momentum, false);
  if constexpr (has_first_moment<State>::value) f("first_moment", s.first_moment, false);
  if constexpr (has_second_moment<State>::value) f("second_moment", s.second_moment, true);
  if constexpr (has_max_second_moment<State>::value) f("max_second_moment", s.max_second_moment, true);
  if constexpr (has_square_average<State>::value) f("square_average", s.square_average, true);
  if constexpr (has_gradient_average<State>::value) f("gradient_average", s.gradient_average, false);
  if constexpr (has_variance<State>::value) f("variance", s.variance, true);
  if constexpr (has_weight_variance<State>::value) f("weight_variance", s.weight_variance, true);
  if constexpr (has_cross_covariance<State>::value) f("cross_covariance", s.cross_covariance, false);
  if constexpr (has_momentum_variance<State>::value) f("momentum_variance", s.momentum_variance, true);
}

/// A ParameterSet optimizer's State, refusal counters excluded.
template <typename State>
void add_state(Bytes& b, const State& s) {
  State copy = s;
  for_each_buffer(copy, [&](const char*, const auto& buffers, bool) { b.add(buffers); });
  if constexpr (has_centering_weight<State>::value) b.add_real(s.centering_weight);
  if constexpr (has_phase<State>::value) b.add(static_cast<std::int64_t>(s.phase));
  if constexpr (has_clamped_variances<State>::value) b.add(static_cast<std::int64_t>(s.clamped_variances));
  b.add(static_cast<std::int64_t>(s.counters.steps));
}

/// Corrupted copies of a ParameterSet optimizer's State, each of which set_state must refuse.
template <typename State>
std::vector<std::pair<std::string, State>> corrupt_restores(const State& good) {
  std::vector<std::pair<std::string, State>> out;
  State probe = good;
  for_each_buffer(probe, [&](const char* name, auto& buffers, bool nonnegative) {
    if (buffers.empty()) return;
    using Scalar = typename std::decay_t<decltype(buffers[0])>::Scalar;
    const std::string n = name;
    auto with = [&](const std::string& what, auto edit) {
      State s = good;
      for_each_buffer(s, [&](const char* other, auto& bufs, bool) {
        if (n == other) edit(bufs);
      });
      out.emplace_back(n + " " + what, std::move(s));
    };
    with("NaN", [](auto& bufs) { bufs[0](0, 0) = std::numeric_limits<Scalar>::quiet_NaN(); });
    with("+Inf", [](auto& bufs) { bufs.back()(bufs.back().size() - 1) = std::numeric_limits<Scalar>::infinity(); });
    with("-Inf", [](auto& bufs) { bufs[0](0, 0) = -std::numeric_limits<Scalar>::infinity(); });
    if (nonnegative) with("negative", [](auto& bufs) { bufs[0](0, 0) = Scalar(-1); });
    with("wrong shape", [](auto& bufs) { bufs[0].resize(1, 1); bufs[0].setZero(); });
    with("missing block", [](auto& bufs) { bufs.pop_back(); });
    if (n == "max_second_moment") with("below second_moment", [](auto& bufs) { for (auto& b : bufs) b.setZero(); });
    if (n == "cross_covariance") with("not PSD", [](auto& bufs) { bufs[0](0, 0) = Scalar(10); });
  });
  State s = good;
  s.counters.steps = -1;
  out.emplace_back("counters.steps = -1", s);
  s = good;
  s.counters.skipped_nonfinite = -3;
  out.emplace_back("counters.skipped_nonfinite = -3", s);
  if constexpr (has_centering_weight<State>::value) {
    s = good;
    s.centering_weight = std::numeric_limits<double>::quiet_NaN();
    out.emplace_back("centering_weight NaN", s);
    s = good;
    s.centering_weight = -1.0;
    out.emplace_back("centering_weight -1", s);
  }
  return out;
}

/// Kalman states (EKF, online natural gradient, joint EKF, natural gradient on RTRL).
template <typename State>
void add_kalman_state(Bytes& b, const State& s) {
  if constexpr (has_covariance<State>::value) b.add(s.covariance.storage());
  if constexpr (has_fisher<State>::value) b.add(s.fisher.storage());
  if constexpr (has_hidden<State>::value) b.add(s.hidden);
  if constexpr (has_last_step_size<State>::value) {
    b.add_real(static_cast<double>(s.last_step_size)).add_real(static_cast<double>(s.last_fisher_rate));
  }
  b.add(static_cast<std::int64_t>(s.step)).add_real(static_cast<double>(s.last_loss));
}

template <typename Belief, typename State>
void corrupt_belief(std::vector<std::pair<std::string, State>>& out, const State& good,
                    const std::string& name, Belief State::*member) {
  using Scalar = typename std::decay_t<decltype((good.*member).storage())>::Scalar;
  const Eigen::Index d = (good.*member).storage().rows();
  auto with = [&](const std::string& what, auto edit) {
    State s = good;
    edit((s.*member).storage());
    out.emplace_back(name + " " + what, std::move(s));
  };
  with("NaN", [](auto& M) { M(1, 1) = std::numeric_limits<Scalar>::quiet_NaN(); });
  with("Inf", [d](auto& M) { M(d - 1, 0) = M(0, d - 1) = std::numeric_limits<Scalar>::infinity(); });
  with("negative diagonal", [](auto& M) { M(0, 0) = Scalar(-1); });
  if ((good.*member).stores_covariance()) {
    with("not symmetric", [d](auto& M) { M(d - 1, 0) += Scalar(0.5); });
    with("indefinite", [d](auto& M) { M(0, d - 1) = M(d - 1, 0) = Scalar(10) * (std::abs(M(0, 0)) + std::abs(M(d - 1, d - 1)) + Scalar(1)); });
  } else {
    with("not lower triangular", [d](auto& M) { M(0, d - 1) = Scalar(0.5); });
  }
  with("wrong shape", [](auto& M) { M.resize(1, 1); M.setOnes(); });
}

template <typename State>
std::vector<std::pair<std::string, State>> corrupt_kalman_restores(const State& good) {
  std::vector<std::pair<std::string, State>> out;
  if constexpr (has_covariance<State>::value) corrupt_belief(out, good, "covariance", &State::covariance);
  if constexpr (has_fisher<State>::value) corrupt_belief(out, good, "fisher", &State::fisher);
  if constexpr (has_hidden<State>::value) {
    State s = good;
    s.hidden(0) = std::numeric_limits<typename decltype(s.hidden)::Scalar>::quiet_NaN();
    out.emplace_back("hidden NaN", s);
  }
  State s = good;
  s.step = -1;
  out.emplace_back("step = -1", s);
  s = good;
  s.skipped = -1;
  out.emplace_back("skipped = -1", s);
  s = good;
  s.last_loss = std::numeric_limits<decltype(s.last_loss)>::infinity();
  out.emplace_back("last_loss Inf", s);
  return out;
}

/// Recurrent states: the joint EKF's (hidden, covariance) or NaturalGradientRtrl's parts.
template <typename State>
void add_recurrent_state(Bytes& b, const State& s) {
  if constexpr (has_recurrent<State>::value) {
    b.add(s.recurrent.hidden).add(s.recurrent.tangent);
    add_kalman_state(b, s.natural_gradient);
  } else {
    add_kalman_state(b, s);
  }
}

template <typename State>
std::vector<std::pair<std::string, State>> corrupt_recurrent_restores(const State& good) {
  std::vector<std::pair<std::string, State>> out;
  if constexpr (has_recurrent<State>::value) {
    using Scalar = typename decltype(good.recurrent.hidden)::Scalar;
    State s = good;
    s.recurrent.hidden(0) = std::numeric_limits<Scalar>::quiet_NaN();
    out.emplace_back("recurrent.hidden NaN", s);
    s = good;
    s.recurrent.tangent(1, 0) = std::numeric_limits<Scalar>::infinity();
    out.emplace_back("recurrent.tangent Inf", s);
    s = good;
    s.recurrent.tangent.resize(1, 1);
    out.emplace_back("recurrent.tangent wrong shape", s);
    for (auto& r : corrupt_kalman_restores(good.natural_gradient)) {
      s = good;
      s.natural_gradient = r.second;
      s.recurrent.hidden.setConstant(Scalar(0.5));  // a valid part restored with a bad one
      out.emplace_back("natural_gradient." + r.first, s);
    }
    s = good;
    s.skipped = -1;
    out.emplace_back("skipped = -1", s);
  } else {
    out = corrupt_kalman_restores(good);
  }
  return out;
}

// ------------------------------------------------------------------ trials and summary

struct Tally {
  long trials = 0, refused = 0, errors = 0, accepted = 0, silent_nonfinite = 0, failures = 0;
  std::vector<std::string> notes;
  void fail(const std::string& what) {
    ++failures;
    if (notes.size() < 12) notes.push_back(what);
  }
};

/// Runs `call`, classifying its outcome: returns 0 for no exception, 1 for a clear kfopt
/// error (message names a kfopt operation), and records a failure for anything else.
inline int classify(const std::function<void()>& call, Tally& t, const std::string& what) {
  try {
    call();
    return 0;
  } catch (const std::invalid_argument& e) {
    if (std::string(e.what()).rfind("kfopt::", 0) != 0) t.fail(what + ": unclear message: " + e.what());
    return 1;
  } catch (const std::runtime_error& e) {
    if (std::string(e.what()).rfind("kfopt::", 0) != 0) t.fail(what + ": unclear message: " + e.what());
    return 1;
  } catch (...) {
    t.fail(what + ": unexpected exception type");
    return 1;
  }
}

inline bool warm_up(Fixture& f, Tally& t, const std::string& what) {
  for (int i = 0; i < 3; ++i) {
    f.good_inputs();
    if (f.step() != kfopt::Status::Success || !f.finite()) {
      t.fail(what + ": warm-up step failed");
      return false;
    }
  }
  f.good_inputs();
  return true;
}

inline void check_recovery(Fixture& f, Tally& t, const std::string& what) {
  if (!f.recoverable()) return;
  f.good_inputs();
  kfopt::Status s = kfopt::Status::NotComputed;
  const int thrown = classify([&] { s = f.step(); }, t, what + " (recovery step)");
  if (thrown || s != kfopt::Status::Success || !f.finite()) {
    t.fail(what + ": a good step afterwards did not succeed (" + kfopt::to_string(s) + ")");
  }
}

/// The bad values of the table for a scalar type.
template <typename Scalar>
std::vector<std::pair<std::string, long double>> bad_values() {
  using L = std::numeric_limits<Scalar>;
  const long double huge = sizeof(Scalar) == sizeof(float) ? 1e30L : 1e300L;
  return {{"NaN", static_cast<long double>(L::quiet_NaN())},
          {"+Inf", static_cast<long double>(L::infinity())},
          {"-Inf", -static_cast<long double>(L::infinity())},
          {"max", static_cast<long double>(L::max())},
          {"-max", -static_cast<long double>(L::max())},
          {"huge", huge},
          {"-huge", -huge},
          {"denormal", static_cast<long double>(L::denorm_min())}};
}

/// Every (site, value, position) trial on a fresh, warmed-up fixture, then every misuse.
template <typename Scalar>
Tally run_table(const std::string& name, const std::function<std::unique_ptr<Fixture>()>& make) {
  Tally t;
  const std::size_t n_sites = make()->sites().size();
  const char* positions[] = {"first entry", "last entry", "every entry"};
  for (std::size_t si = 0; si < n_sites; ++si) {
    for (const auto& value : bad_values<Scalar>()) {
      for (int pos = 0; pos < 3; ++pos) {
        auto f = make();
        std::vector<Site> sites = f->sites();
        const std::string what = name + ": " + value.first + " in " + sites[si].name + " (" +
                                 positions[pos] + ")";
        if (!warm_up(*f, t, what)) continue;
        sites = f->sites();
        Site& s = sites[si];
        const Eigen::Index n = s.size();
        std::vector<long double> saved(static_cast<std::size_t>(n));
        for (Eigen::Index k = 0; k < n; ++k) saved[static_cast<std::size_t>(k)] = s.get(k);
        const Eigen::Index lo = pos == 1 ? n - 1 : 0, hi = pos == 0 ? 1 : n;
        for (Eigen::Index k = lo; k < hi; ++k) s.set(k, value.second);
        const std::string before = f->snapshot();
        kfopt::Status status = kfopt::Status::NotComputed;
        ++t.trials;
        const int thrown = classify([&] { status = f->step(); }, t, what);
        if (thrown || status != kfopt::Status::Success) {
          if (thrown) ++t.errors; else ++t.refused;
          if (f->snapshot() != before) t.fail(what + ": refused but parameters or state changed");
        } else {
          ++t.accepted;
          if (!f->finite()) {
            ++t.silent_nonfinite;
            t.fail(what + ": accepted with a non-finite parameter or state");
          }
        }
        for (Eigen::Index k = 0; k < n; ++k) s.set(k, saved[static_cast<std::size_t>(k)]);
        if (thrown || status != kfopt::Status::Success) check_recovery(*f, t, what);
      }
    }
  }
  const std::size_t n_misuses = make()->misuses().size();
  for (std::size_t mi = 0; mi < n_misuses; ++mi) {
    auto f = make();
    if (!warm_up(*f, t, name)) continue;
    std::vector<Misuse> misuses = f->misuses();
    const std::string what = name + ": " + misuses[mi].name;
    const std::string before = f->snapshot();
    ++t.trials;
    if (classify(misuses[mi].call, t, what)) {
      ++t.errors;
    } else {
      t.fail(what + ": accepted without an error");
    }
    if (f->snapshot() != before) t.fail(what + ": rejected but parameters or state changed");
    check_recovery(*f, t, what);
  }
  return t;
}

/// Misuses without a fixture (hyperparameter structs): each must throw a clear error.
inline Tally run_misuses(const std::vector<Misuse>& misuses, Fixture*) {
  Tally t;
  for (const auto& m : misuses) {
    ++t.trials;
    if (classify(m.call, t, m.name)) {
      ++t.errors;
    } else {
      t.fail(m.name + ": accepted without an error");
    }
  }
  return t;
}

class Summary {
 public:
  void add(const std::string& name, const Tally& t) { rows_.emplace_back(name, t); }
  long silent_nonfinite() const {
    long n = 0;
    for (const auto& r : rows_) n += r.second.silent_nonfinite;
    return n;
  }
  long failures() const {
    long n = 0;
    for (const auto& r : rows_) n += r.second.failures;
    return n;
  }
  void print(std::ostream& os) const {
    Tally total;
    os << "\nbad-input suite summary\n";
    os << std::left << std::setw(56) << "optimizer" << std::right << std::setw(8) << "trials"
       << std::setw(9) << "refused" << std::setw(8) << "errors" << std::setw(10) << "accepted"
       << std::setw(18) << "silent non-finite" << std::setw(10) << "failures" << "\n";
    for (const auto& r : rows_) {
      const Tally& t = r.second;
      os << std::left << std::setw(56) << r.first << std::right << std::setw(8) << t.trials
         << std::setw(9) << t.refused << std::setw(8) << t.errors << std::setw(10) << t.accepted
         << std::setw(18) << t.silent_nonfinite << std::setw(10) << t.failures << "\n";
      for (const auto& note : t.notes) os << "    ! " << note << "\n";
      total.trials += t.trials;
      total.refused += t.refused;
      total.errors += t.errors;
      total.accepted += t.accepted;
      total.silent_nonfinite += t.silent_nonfinite;
      total.failures += t.failures;
    }
    os << std::left << std::setw(56) << "total" << std::right << std::setw(8) << total.trials
       << std::setw(9) << total.refused << std::setw(8) << total.errors << std::setw(10)
       << total.accepted << std::setw(18) << total.silent_nonfinite << std::setw(10)
       << total.failures << "\n";
  }

 private:
  std::vector<std::pair<std::string, Tally>> rows_;
};

}  // namespace kfopt_reliability
