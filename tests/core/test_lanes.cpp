// SIMD lanes (core/lanes.hpp): a formula run through for_each_lane (packets, then the scalar
// remainder) gives the bits of a plain scalar loop written with the built-in operators, NaN
// and infinities included; masks follow the scalar comparisons; the counter counts; the
// finiteness check agrees with std::isfinite.
#include <catch2/catch.hpp>
#include <kfopt/core/lanes.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace {

// Branch-free: y = !(x >= z) ? x·z : x − z, then x / z where x < z, behind any().
template <typename T>
T formula(const T& x, const T& z, kfopt::detail::LaneMaskOf<T>& flagged) {
  using kfopt::detail::select;
  const auto not_ge = kfopt::detail::lanes_not_ge(x, z);
  const auto lt = kfopt::detail::lanes_lt(x, z);
  const T product = x * z;
  T y = select(not_ge, product, x - z);
  if (kfopt::detail::any(lt)) y = select(lt, x / z, y);
  flagged = not_ge;
  return y;
}

}  // namespace

TEMPLATE_TEST_CASE("Lanes: packets and the scalar remainder give the bits of a scalar loop", "[core][lanes]",
                   float, double) {
  using S = TestType;
  using L = std::numeric_limits<S>;
  std::mt19937 rng(9);
  std::uniform_real_distribution<double> u(-2.0, 2.0);
  std::uniform_int_distribution<int> pick(0, 15);
  const S specials[] = {L::quiet_NaN(), L::infinity(), -L::infinity(), L::max(), S(0), S(-0.0)};
  for (const Eigen::Index n : {Eigen::Index(1), Eigen::Index(5), Eigen::Index(16), Eigen::Index(67)}) {
    std::vector<S> x(n), z(n), y(n), expected(n);
    for (Eigen::Index k = 0; k < n; ++k) {
      x[k] = pick(rng) < 3 ? specials[pick(rng) % 6] : static_cast<S>(u(rng));
      z[k] = pick(rng) < 3 ? specials[pick(rng) % 6] : static_cast<S>(u(rng));
    }
    std::int64_t expected_count = 0;
    for (Eigen::Index k = 0; k < n; ++k) {  // the built-in operators
      const bool not_ge = !(x[k] >= z[k]);
      expected[k] = not_ge ? x[k] * z[k] : x[k] - z[k];
      if (x[k] < z[k]) expected[k] = x[k] / z[k];
      expected_count += not_ge ? 1 : 0;
    }
    kfopt::detail::LaneCounter<S> count;
    kfopt::detail::LaneFiniteness<S> finite;
    kfopt::detail::for_each_lane<S>(n, [&](Eigen::Index k, auto lane) {
      using T = decltype(lane);
      kfopt::detail::LaneMaskOf<T> flagged{};
      const T r = formula(kfopt::detail::lane_load<T>(x.data() + k), kfopt::detail::lane_load<T>(z.data() + k), flagged);
      kfopt::detail::lane_store(y.data() + k, r);
      count.add(flagged);
      finite.add(r);
    });
    bool expected_finite = true;
    for (const S v : expected) expected_finite = expected_finite && std::isfinite(v);
    INFO("n = " << n);
    CHECK(std::memcmp(y.data(), expected.data(), sizeof(S) * static_cast<std::size_t>(n)) == 0);
    CHECK(count.total() == expected_count);
    CHECK(finite.finite() == expected_finite);
  }
}
