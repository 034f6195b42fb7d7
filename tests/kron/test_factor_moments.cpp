// Factor moving averages (A0 from batches; A0, A1 from variable-length sequences) against
// explicit loops over samples and time steps, the Adam-style bias correction written out,
// and the spectral bound of RNN K-FAC appendix B.2 (Lemma 1).
#include <catch2/catch.hpp>
#include <kfopt/kron/factor_moments.hpp>

#include <Eigen/Eigenvalues>
#include <limits>
#include <vector>

#include "support/dense_reference.hpp"

using namespace kfopt_test;

namespace {

// Σ_rows x xᵀ / rows, by explicit outer products (with the homogeneous 1 if asked).
template <typename Scalar>
Mat<double> reference_moment(const Mat<Scalar>& X, bool homogeneous) {
  const Eigen::Index n = X.cols() + (homogeneous ? 1 : 0);
  Mat<double> M = Mat<double>::Zero(n, n);
  for (Eigen::Index r = 0; r < X.rows(); ++r) {
    Vec<double> x(n);
    x.head(X.cols()) = X.row(r).transpose().template cast<double>();
    if (homogeneous) x(n - 1) = 1.0;
    M += x * x.transpose();
  }
  return M / static_cast<double>(X.rows());
}

struct SequenceReference {
  Mat<double> a0, a1;
};

// A0 = Σ_i Σ_{t<T_i} a aᵀ / Σ T_i, A1 = Σ_i Σ_{t<T_i−1} a_{t+1} a_tᵀ / Σ T_i, from the
// time-major layout, by explicit loops over sequences and steps (mask version: real steps).
template <typename Scalar>
SequenceReference reference_sequences(const Mat<Scalar>& X, Eigen::Index m,
                                      const std::vector<std::vector<bool>>& real,
                                      bool homogeneous) {
  const Eigen::Index t_max = X.rows() / m;
  const Eigen::Index n = X.cols() + (homogeneous ? 1 : 0);
  auto vec_at = [&](Eigen::Index t, Eigen::Index i) {
    Vec<double> x(n);
    x.head(X.cols()) = X.row(t * m + i).transpose().template cast<double>();
    if (homogeneous) x(n - 1) = 1.0;
    return x;
  };
  SequenceReference ref{Mat<double>::Zero(n, n), Mat<double>::Zero(n, n)};
  double count = 0;
  for (Eigen::Index i = 0; i < m; ++i) {
    for (Eigen::Index t = 0; t < t_max; ++t) {
      if (!real[t][i]) continue;
      count += 1;
      ref.a0 += vec_at(t, i) * vec_at(t, i).transpose();
      if (t + 1 < t_max && real[t + 1][i]) ref.a1 += vec_at(t + 1, i) * vec_at(t, i).transpose();
    }
  }
  ref.a0 /= count;
  ref.a1 /= count;
  return ref;
}

std::vector<std::vector<bool>> real_from_lengths(const Eigen::VectorXi& lengths, int t_max) {
  std::vector<std::vector<bool>> real(t_max, std::vector<bool>(lengths.size()));
  for (int t = 0; t < t_max; ++t)
    for (Eigen::Index i = 0; i < lengths.size(); ++i) real[t][i] = t < lengths(i);
  return real;
}

}  // namespace

TEMPLATE_TEST_CASE("factor average: bias-corrected EMA of batch second moments",
                   "[kron][moments]", float, double) {
  Rng rng(31);
  for (bool homogeneous : {false, true}) {
    for (double decay : {0.9, 0.5, 1.0}) {
      kfopt::FactorAverageOptions opt;
      opt.decay = decay;
      opt.homogeneous = homogeneous;
      kfopt::FactorMovingAverage<TestType> avg(4, opt);
      CHECK(avg.dimension() == (homogeneous ? 5 : 4));
      // Adam-style reference: S_t = β S_{t−1} + (1 − β) M_t, Â_t = S_t / (1 − β^t); for β = 1
      // the plain mean of the batch moments.
      Mat<double> S = Mat<double>::Zero(avg.dimension(), avg.dimension());
      Mat<double> sum = S;
      for (int t = 1; t <= 6; ++t) {
        const Mat<TestType> X = rng.normal<TestType>(3 + t, 4);
        REQUIRE(avg.update(X) == kfopt::Status::Success);
        const Mat<double> M = reference_moment(X, homogeneous);
        S = decay * S + (1 - decay) * M;
        sum += M;
        const Mat<double> expected =
            decay < 1.0 ? Mat<double>(S / (1 - std::pow(decay, t))) : Mat<double>(sum / t);
        CHECK(relative_error(Mat<double>(avg.value().template cast<double>()), expected) <=
              Tolerance<TestType>::dense);
        CHECK((avg.value() - avg.value().transpose()).norm() == 0);
      }
      CHECK(avg.state().updates == 6);
    }
  }
}

// Sizes above the Gram kernel's leaf (detail::kGramLeaf = 64) exercise its recursion with
// uneven splits; the in-place blend of the Eigen path and BLAS syrk of the LAPACK backend
// must both match the brute-force Adam-style average and stay exactly symmetric.
TEMPLATE_TEST_CASE("factor average: factors larger than the Gram kernel's leaf",
                   "[kron][moments]", float, double) {
  Rng rng(35);
  for (Eigen::Index n : {65, 150, 257}) {
    for (bool homogeneous : {false, true}) {
      kfopt::FactorAverageOptions opt;
      opt.decay = 0.9;
      opt.homogeneous = homogeneous;
      kfopt::FactorMovingAverage<TestType> avg(n, opt);
      Mat<double> S = Mat<double>::Zero(avg.dimension(), avg.dimension());
      for (int t = 1; t <= 3; ++t) {
        const Mat<TestType> X = rng.normal<TestType>(20 + 7 * t, n);
        REQUIRE(avg.update(X) == kfopt::Status::Success);
        S = 0.9 * S + 0.1 * reference_moment(X, homogeneous);
        const Mat<double> expected = S / (1 - std::pow(0.9, t));
        CHECK(relative_error(Mat<double>(avg.value().template cast<double>()), expected) <=
              Tolerance<TestType>::dense);
        CHECK((avg.value() - avg.value().transpose()).norm() == 0);
      }
    }
  }
  // Temporal moments of the same sizes: A0 through the Gram kernel, A1 through one product.
  for (Eigen::Index n : {70, 130}) {
    for (bool homogeneous : {false, true}) {
      kfopt::FactorAverageOptions opt;
      opt.decay = 0.8;
      opt.homogeneous = homogeneous;
      kfopt::TemporalFactorMovingAverage<TestType> avg(n, opt);
      const Eigen::Index m = 3, t_max = 9;
      const Eigen::VectorXi lengths = Eigen::Vector3i(9, 4, 7);
      Mat<double> S0 = Mat<double>::Zero(avg.dimension(), avg.dimension()), S1 = S0;
      for (int t = 1; t <= 2; ++t) {
        const Mat<TestType> X = rng.normal<TestType>(t_max * m, n);
        const auto ref = t == 1 ? reference_sequences(X, m, real_from_lengths(lengths, t_max),
                                                      homogeneous)
                                : reference_sequences(
                                      X, m, real_from_lengths(Eigen::Vector3i(9, 9, 9), t_max),
                                      homogeneous);
        REQUIRE((t == 1 ? avg.update(X, lengths) : avg.update_full(X, m)) ==
                kfopt::Status::Success);
        S0 = 0.8 * S0 + 0.2 * ref.a0;
        S1 = 0.8 * S1 + 0.2 * ref.a1;
        const double correction = 1 - std::pow(0.8, t);
        CHECK(relative_error(Mat<double>(avg.a0().template cast<double>()),
                             Mat<double>(S0 / correction)) <= Tolerance<TestType>::dense);
        CHECK(relative_error(Mat<double>(avg.a1().template cast<double>()),
                             Mat<double>(S1 / correction)) <= Tolerance<TestType>::dense);
        CHECK((avg.a0() - avg.a0().transpose()).norm() == 0);
      }
    }
  }
}

// Both backends of the Gram kernel (Eigen's product kernel; BLAS syrk with KFOPT_USE_LAPACK)
// give the same averages to rounding.
TEST_CASE("factor average: Eigen and LAPACK (BLAS syrk) backends agree", "[kron][moments]") {
  using kfopt::DecompositionBackend;
  Rng rng(36);
  kfopt::FactorMovingAverage<double, DecompositionBackend::Eigen> eigen_avg(300, {0.95, true});
  kfopt::TemporalFactorMovingAverage<double, DecompositionBackend::Eigen> eigen_temporal(90);
#ifdef KFOPT_USE_LAPACK
  kfopt::FactorMovingAverage<double, DecompositionBackend::Lapack> lapack_avg(300, {0.95, true});
  kfopt::TemporalFactorMovingAverage<double, DecompositionBackend::Lapack> lapack_temporal(90);
#endif
  for (int t = 0; t < 3; ++t) {
    const Mat<double> X = rng.normal<double>(256, 300);
    const Mat<double> Y = rng.normal<double>(40, 90);
    REQUIRE(eigen_avg.update(X) == kfopt::Status::Success);
    REQUIRE(eigen_temporal.update_full(Y, 4) == kfopt::Status::Success);
    CHECK(relative_error(eigen_avg.value(), reference_moment(X, true)) < 1.0);  // sanity
#ifdef KFOPT_USE_LAPACK
    REQUIRE(lapack_avg.update(X) == kfopt::Status::Success);
    REQUIRE(lapack_temporal.update_full(Y, 4) == kfopt::Status::Success);
    CHECK(relative_error(lapack_avg.value(), eigen_avg.value()) <= 1e-12);
    CHECK(relative_error(lapack_temporal.a0(), eigen_temporal.a0()) <= 1e-12);
    CHECK(relative_error(lapack_temporal.a1(), eigen_temporal.a1()) <= 1e-12);
    CHECK((lapack_avg.value() - lapack_avg.value().transpose()).norm() == 0);
#endif
  }
}

TEST_CASE("factor average: a non-finite batch is refused and leaves the state unchanged",
          "[kron][moments][errors]") {
  Rng rng(32);
  kfopt::FactorMovingAverage<double> avg(3, {0.9, true});
  avg.update(rng.normal<double>(5, 3));
  const Mat<double> before = avg.value();
  const double weight_before = avg.state().weight.weight;
  Mat<double> bad = rng.normal<double>(5, 3);
  bad(2, 1) = std::numeric_limits<double>::infinity();
  CHECK(avg.update(bad) == kfopt::Status::NonFiniteInput);
  bad(2, 1) = std::numeric_limits<double>::quiet_NaN();
  CHECK(avg.update(bad) == kfopt::Status::NonFiniteInput);
  CHECK(avg.value() == before);
  CHECK(avg.state().weight.weight == weight_before);
  CHECK(avg.state().updates == 1);
  CHECK(avg.state().skipped_nonfinite == 2);
  // Shape errors: wrong width, empty batch; the message names both shapes.
  try {
    avg.update(Mat<double>::Ones(4, 2));
    FAIL("expected ShapeError");
  } catch (const kfopt::ShapeError& e) {
    CHECK(std::string(e.what()).find("4x2") != std::string::npos);
    CHECK(std::string(e.what()).find("length 3") != std::string::npos);
  }
  CHECK_THROWS_AS(avg.update(Mat<double>(0, 3)), kfopt::ShapeError);
  CHECK(avg.value() == before);
  // Hyperparameters.
  CHECK_THROWS_WITH((kfopt::FactorMovingAverage<double>(3, {0.0, false})),
                    Catch::Contains("decay"));
  CHECK_THROWS_AS((kfopt::FactorMovingAverage<double>(3, {1.5, false})), kfopt::HyperparameterError);
  CHECK_THROWS_AS((kfopt::FactorMovingAverage<double>(0)), kfopt::ShapeError);
}

TEMPLATE_TEST_CASE("temporal moments: A0 and A1 with per-sequence lengths and masks",
                   "[kron][moments][temporal]", float, double) {
  Rng rng(33);
  const int m = 4, t_max = 5, n = 3;
  for (bool homogeneous : {false, true}) {
    Mat<TestType> X = rng.normal<TestType>(t_max * m, n);
    Eigen::VectorXi lengths(m);
    lengths << 5, 2, 1, 4;
    const auto real = real_from_lengths(lengths, t_max);
    // Padding holds NaN: it must never be read as a number.
    for (int t = 0; t < t_max; ++t)
      for (int i = 0; i < m; ++i)
        if (!real[t][i]) X.row(t * m + i).setConstant(std::numeric_limits<TestType>::quiet_NaN());
    kfopt::TemporalFactorMovingAverage<TestType> avg(n, {0.9, homogeneous});
    REQUIRE(avg.update(X, lengths) == kfopt::Status::Success);
    const auto ref = reference_sequences(X, m, real, homogeneous);
    CHECK(relative_error(Mat<double>(avg.a0().template cast<double>()), ref.a0) <=
          Tolerance<TestType>::dense);
    CHECK(relative_error(Mat<double>(avg.a1().template cast<double>()), ref.a1) <=
          Tolerance<TestType>::dense);
    CHECK(avg.state().last_mean_length == Approx(12.0 / 4));

    // The same batch through a mask, and an irregular mask (a gap inside a sequence).
    Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic> mask(t_max, m);
    for (int t = 0; t < t_max; ++t)
      for (int i = 0; i < m; ++i) mask(t, i) = real[t][i];
    kfopt::TemporalFactorMovingAverage<TestType> masked(n, {0.9, homogeneous});
    REQUIRE(masked.update(X, mask) == kfopt::Status::Success);
    CHECK(relative_error(masked.a0(), avg.a0()) <= Tolerance<TestType>::dense);
    CHECK(relative_error(masked.a1(), avg.a1()) <= Tolerance<TestType>::dense);
    auto gappy = real;
    gappy[2][0] = false;
    mask(2, 0) = false;
    kfopt::TemporalFactorMovingAverage<TestType> gap(n, {0.9, homogeneous});
    REQUIRE(gap.update(X, mask) == kfopt::Status::Success);
    const auto ref_gap = reference_sequences(X, m, gappy, homogeneous);
    CHECK(relative_error(Mat<double>(gap.a1().template cast<double>()), ref_gap.a1) <=
          Tolerance<TestType>::dense);

    // All sequences full length: the no-copy path equals the reference too.
    const Mat<TestType> full = rng.normal<TestType>(t_max * m, n);
    kfopt::TemporalFactorMovingAverage<TestType> f(n, {0.9, homogeneous});
    REQUIRE(f.update_full(full, m) == kfopt::Status::Success);
    const auto ref_full = reference_sequences(
        full, m, real_from_lengths(Eigen::VectorXi::Constant(m, t_max), t_max), homogeneous);
    CHECK(relative_error(Mat<double>(f.a0().template cast<double>()), ref_full.a0) <=
          Tolerance<TestType>::dense);
    CHECK(relative_error(Mat<double>(f.a1().template cast<double>()), ref_full.a1) <=
          Tolerance<TestType>::dense);
  }
}

TEST_CASE("temporal moments: sequences of length 1 have no A1 term", "[kron][moments][temporal]") {
  Rng rng(34);
  kfopt::TemporalFactorMovingAverage<double> avg(3);
  REQUIRE(avg.update_full(rng.normal<double>(6, 3), 6) == kfopt::Status::Success);  // T_max = 1
  CHECK(avg.a1().norm() == 0.0);
  CHECK(avg.a0().norm() > 0.0);
}

TEST_CASE("temporal moments: bad lengths, empty and all-masked batches are refused",
          "[kron][moments][temporal][errors]") {
  Rng rng(35);
  kfopt::TemporalFactorMovingAverage<double> avg(2);
  const Mat<double> X = rng.normal<double>(6, 2);  // 3 sequences × 2 steps
  REQUIRE(avg.update(X, Eigen::Vector3i(2, 1, 2)) == kfopt::Status::Success);
  const Mat<double> a0 = avg.a0(), a1 = avg.a1();
  CHECK_THROWS_AS(avg.update(X, Eigen::Vector3i(3, 1, 1)), kfopt::InvalidInputError);
  CHECK_THROWS_AS(avg.update(X, Eigen::Vector3i(-1, 1, 1)), kfopt::InvalidInputError);
  CHECK_THROWS_WITH(avg.update(X, Eigen::Vector3i(0, 0, 0)), Catch::Contains("masked"));
  CHECK_THROWS_AS(avg.update(X, Eigen::Vector4i(1, 1, 1, 1)), kfopt::ShapeError);  // 6 % 4
  CHECK_THROWS_AS(avg.update(Mat<double>(6, 3), Eigen::Vector3i(2, 2, 2)), kfopt::ShapeError);
  Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic> mask(3, 3);
  mask.setConstant(true);
  CHECK_THROWS_AS(avg.update(X, mask), kfopt::ShapeError);  // 3 steps × 3 ≠ 6 rows
  Mat<double> bad = X;
  bad(1, 0) = std::numeric_limits<double>::quiet_NaN();  // step 0 of sequence 1: real
  CHECK(avg.update(bad, Eigen::Vector3i(2, 1, 2)) == kfopt::Status::NonFiniteInput);
  CHECK(avg.a0() == a0);
  CHECK(avg.a1() == a1);
  CHECK(avg.state().skipped_nonfinite == 1);
  // NaN in step 1 of sequence 1 is padding (length 1): accepted.
  bad = X;
  bad(4, 1) = std::numeric_limits<double>::quiet_NaN();
  CHECK(avg.update(bad, Eigen::Vector3i(2, 1, 2)) == kfopt::Status::Success);
  CHECK(avg.a0().allFinite());
}

TEST_CASE("temporal moments: [[A0, A1], [A1ᵀ, A0]] ⪰ 0 and ρ(A1 A0⁻¹) ≤ 1 (appendix B.2)",
          "[kron][moments][temporal]") {
  Rng rng(36);
  const int n = 4, m = 6, t_max = 8;
  // Strongly autocorrelated sequences (a_{t+1} = 0.98 a_t + small noise) push ρ towards 1,
  // where a wrong normalizer of A1 or a wrong pairing of steps would cross the bound.
  for (double rho_true : {0.3, 0.98, 1.0}) {
    kfopt::TemporalFactorMovingAverage<double> avg(n, {0.8, false});
    double worst_radius = 0;
    for (int batch = 0; batch < 10; ++batch) {
      Mat<double> X(t_max * m, n);
      Eigen::VectorXi lengths(m);
      for (int i = 0; i < m; ++i) {
        lengths(i) = rng.integer(1, t_max);
        Vec<double> a = rng.normal<double>(n, 1);
        for (int t = 0; t < t_max; ++t) {
          X.row(t * m + i) = a.transpose();
          a = rho_true * a + (rho_true < 1.0 ? 0.2 : 0.0) * rng.normal<double>(n, 1);
        }
      }
      REQUIRE(avg.update(X, lengths) == kfopt::Status::Success);
      Mat<double> block(2 * n, 2 * n);
      block << avg.a0(), avg.a1(), avg.a1().transpose(), avg.a0();
      const double scale = avg.a0().norm();
      CHECK(Eigen::SelfAdjointEigenSolver<Mat<double>>(block).eigenvalues().minCoeff() >=
            -1e-12 * scale);
      const Mat<double> ratio = avg.a1() * avg.a0().inverse();
      const double radius = Eigen::EigenSolver<Mat<double>>(ratio).eigenvalues().cwiseAbs().maxCoeff();
      CHECK(radius <= 1.0 + 1e-9);
      worst_radius = std::max(worst_radius, radius);
    }
    if (rho_true >= 0.98) CHECK(worst_radius > 0.5);  // the test does probe near the bound
  }
}

// The dense average is kept as s·R between reads (a lazy decay scale s, only R's lower
// triangle current) and folds s back into R when s < 1/4096. Over hundreds of batches — many
// renormalizations for β = 0.5 and 0.9, a few for 0.99 — the value read at any time must
// equal the direct brute-force blend, in float as in double, with and without the
// homogeneous border, whether or not value() was read in between (a read finishes the lazy
// blend in place; later batches continue from there).
TEMPLATE_TEST_CASE("factor average: lazy decay scale over many batches equals the direct blend",
                   "[kron][moments]", float, double) {
  Rng rng(37);
  const Eigen::Index n = 9;
  for (double decay : {0.5, 0.9, 0.99}) {
    for (bool homogeneous : {false, true}) {
      kfopt::FactorAverageOptions opt;
      opt.decay = decay;
      opt.homogeneous = homogeneous;
      kfopt::FactorMovingAverage<TestType, kfopt::DecompositionBackend::Eigen> eigen_avg(n, opt);
      kfopt::FactorMovingAverage<TestType> default_avg(n, opt);  // LAPACK when enabled
      const Eigen::Index d = eigen_avg.dimension();
      Mat<double> average = Mat<double>::Zero(d, d);
      double weight = 0.0;
      for (int t = 1; t <= 600; ++t) {
        // Scales that change from batch to batch, so that the old average matters.
        const TestType scale = static_cast<TestType>(0.5 + (t % 7) * 0.25);
        const Mat<TestType> X = scale * rng.normal<TestType>(4 + t % 5, n);
        REQUIRE(eigen_avg.update(X) == kfopt::Status::Success);
        REQUIRE(default_avg.update(X) == kfopt::Status::Success);
        weight = decay * weight + 1.0;
        average += (reference_moment(X, homogeneous) - average) / weight;
        // Read at irregular times: several pending batches between most reads.
        if (t % 37 == 0 || t % 101 == 0 || t > 590) {
          for (const Mat<TestType>* value : {&eigen_avg.value(), &default_avg.value()}) {
            CHECK(relative_error(Mat<double>(value->template cast<double>()), average) <=
                  Tolerance<TestType>::dense);
            CHECK((*value - value->transpose()).norm() == 0);
          }
        }
      }
      CHECK(eigen_avg.state().updates == 600);
      CHECK(std::abs(eigen_avg.state().weight.weight - weight) <= 1e-12 * weight);
    }
  }
}

// A NaN or Inf batch that arrives while the lazy blend is pending (no value() read since the
// last batches) leaves the average exactly as a twin that never saw it, and is counted.
TEMPLATE_TEST_CASE("factor average: a non-finite batch between lazy updates changes nothing",
                   "[kron][moments][errors]", float, double) {
  Rng rng(38);
  for (bool homogeneous : {false, true}) {
    kfopt::FactorAverageOptions opt;
    opt.decay = 0.5;  // renormalizations within the run
    opt.homogeneous = homogeneous;
    kfopt::FactorMovingAverage<TestType> avg(70, opt), twin(70, opt);
    for (int t = 0; t < 40; ++t) {
      const Mat<TestType> X = rng.normal<TestType>(16, 70);
      REQUIRE(avg.update(X) == kfopt::Status::Success);
      REQUIRE(twin.update(X) == kfopt::Status::Success);
      if (t % 13 == 5) {
        Mat<TestType> bad = rng.normal<TestType>(16, 70);
        bad(t % 16, (3 * t) % 70) = (t % 2 == 0) ? std::numeric_limits<TestType>::quiet_NaN()
                                                 : std::numeric_limits<TestType>::infinity();
        CHECK(avg.update(bad) == kfopt::Status::NonFiniteInput);
      }
    }
    CHECK(avg.value() == twin.value());
    CHECK(avg.value().allFinite());
    CHECK(avg.state().updates == twin.state().updates);
    CHECK(avg.state().skipped_nonfinite == 3);
    CHECK(avg.state().weight.weight == twin.state().weight.weight);
  }
}

// state() and set_state() see the finished average: a checkpoint taken while updates are
// pending restores into an object that continues exactly like the original; reset() forgets
// the pending scale too.
TEST_CASE("factor average: checkpoint and reset with a pending lazy blend", "[kron][moments]") {
  Rng rng(39);
  kfopt::FactorMovingAverage<double> avg(12, {0.7, true});
  for (int t = 0; t < 30; ++t) avg.update(rng.normal<double>(8, 12));
  const auto checkpoint = avg.state();  // finishes the pending blend
  CHECK((checkpoint.average - checkpoint.average.transpose()).norm() == 0);
  kfopt::FactorMovingAverage<double> restored(12, {0.7, true});
  restored.set_state(checkpoint);
  for (int t = 0; t < 25; ++t) {
    const Mat<double> X = rng.normal<double>(8, 12);
    avg.update(X);
    restored.update(X);
  }
  CHECK(restored.value() == avg.value());
  avg.reset();
  CHECK(avg.value() == Mat<double>::Zero(13, 13));
  const Mat<double> X = rng.normal<double>(8, 12);
  avg.update(X);
  CHECK(relative_error(avg.value(), reference_moment(X, true)) <= 1e-12);
}

TEST_CASE("factor average: a non-finite checkpoint is refused and the state kept",
          "[kron][moments]") {
  Rng rng(41);
  kfopt::FactorMovingAverage<double> avg(5, {0.9, true});
  avg.update(rng.normal<double>(7, 5));
  const Mat<double> before = avg.value();
  auto bad = avg.state();
  bad.average(2, 3) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(avg.set_state(bad), kfopt::InvalidInputError);
  CHECK(avg.value() == before);

  kfopt::TemporalFactorMovingAverage<double> temporal(4);
  REQUIRE(temporal.update_full(rng.normal<double>(12, 4), 3) == kfopt::Status::Success);
  const auto kept = temporal.state();
  auto bad_temporal = kept;
  bad_temporal.average1(0, 1) = std::numeric_limits<double>::infinity();
  CHECK_THROWS_AS(temporal.set_state(bad_temporal), kfopt::InvalidInputError);
  CHECK(temporal.state().average1 == kept.average1);
  CHECK(temporal.state().average0 == kept.average0);
}

TEMPLATE_TEST_CASE("factor average: the raw state keeps the lazy blend pending, bit for bit",
                   "[kron][moments]", float, double) {
  using S = TestType;
  Rng rng(43);
  const kfopt::FactorAverageOptions options{0.8, true};
  kfopt::FactorMovingAverage<S> watched(6, options), plain(6, options);
  bool pending_seen = false;
  for (int t = 0; t < 40; ++t) {
    const Mat<S> X = rng.normal<S>(5, 6);
    watched.update(X);
    plain.update(X);
    // Taking the raw state does not fold the scale in (value() would, rounding the average
    // differently from the lazy path): the two averages stay bit-identical.
    const auto raw = watched.raw_state();
    pending_seen = pending_seen || raw.scale < 1.0;
    CHECK(raw.scale >= 1.0 / 4096.0);
    CHECK(raw.scale <= 1.0);
    CHECK(raw.average == raw.average.transpose());
    // A fresh average restored from it continues exactly as the original.
    if (t % 9 == 4) {
      kfopt::FactorMovingAverage<S> restored(6, options);
      restored.set_raw_state(raw);
      CHECK(restored.raw_state().average == raw.average);
      CHECK(restored.raw_state().scale == raw.scale);
      kfopt::FactorMovingAverage<S> original = plain;
      for (int u = 0; u < 5; ++u) {
        const Mat<S> Y = rng.normal<S>(5, 6);
        restored.update(Y);
        original.update(Y);
      }
      CHECK(restored.value() == original.value());
    }
  }
  CHECK(pending_seen);
  CHECK(watched.value() == plain.value());
  // The factor is scale · average.
  const auto raw = plain.raw_state();
  CHECK(relative_error(Mat<S>(static_cast<S>(raw.scale) * raw.average), Mat<S>(plain.value())) <= 1e-6);
}

TEST_CASE("factor average: an invalid raw state is refused and the state kept", "[kron][moments]") {
  Rng rng(47);
  kfopt::FactorMovingAverage<double> avg(4, {0.8, false});
  for (int t = 0; t < 3; ++t) avg.update(rng.normal<double>(6, 4));
  const auto good = avg.raw_state();
  auto refused = [&](const kfopt::FactorMovingAverage<double>::RawState& r, const char* what) {
    try {
      avg.set_raw_state(r);
      FAIL("accepted");
    } catch (const std::exception& e) {
      CHECK(std::string(e.what()).find(what) != std::string::npos);
    }
    CHECK(avg.raw_state().average == good.average);
    CHECK(avg.raw_state().scale == good.scale);
  };
  auto r = good;
  r.scale = 1e-5;
  refused(r, "lazy scale");
  r = good;
  r.average(0, 1) += 1.0;
  refused(r, "symmetric");
  r = good;
  r.average.resize(3, 3);
  refused(r, "average is 3x3 but must be 4x4");
  r = good;
  r.updates = -1;
  refused(r, "updates -1");
  kfopt::FactorMovingAverage<double> diagonal(4, {0.8, false, true});
  auto d = diagonal.raw_state();
  d.scale = 0.5;
  CHECK_THROWS_AS(diagonal.set_raw_state(d), kfopt::InvalidInputError);
}
