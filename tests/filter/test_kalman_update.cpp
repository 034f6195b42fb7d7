// Kalman update forms (covariance / Sherman–Morrison / Woodbury, Joseph, information) and
// the predict step, checked against the textbook dense Kalman formulas written out here
// with explicit inverses and explicit products, and against each other.
#include <catch2/catch.hpp>
#include <kfopt/filter/gaussian_belief.hpp>
#include <kfopt/filter/kalman_predict.hpp>
#include <kfopt/filter/kalman_update.hpp>
#include <kfopt/linalg/tiled_product.hpp>

#include <cstring>

#include "support/dense_reference.hpp"

using namespace kfopt_test;

namespace {

constexpr kfopt::KalmanForm kAllForms[] = {kfopt::KalmanForm::Covariance,
                                           kfopt::KalmanForm::Joseph,
                                           kfopt::KalmanForm::Information};

// Textbook EKF measurement update, everything explicit:
//   P̃ = c P + Q, S = H P̃ Hᵀ + R, K = P̃ Hᵀ S⁻¹, P⁺ = (I − K H) P̃, m⁺ = m + K e.
struct DenseKalman {
  Mat<double> P;
  Vec<double> m;
  void update(const Mat<double>& H, const Mat<double>& R, const Vec<double>& e, double c,
              const Mat<double>& Q) {
    const Eigen::Index d = P.rows();
    Mat<double> Pp = c * P;
    if (Q.size() > 0) Pp += Q;
    const Mat<double> S = H * Pp * H.transpose() + R;
    const Mat<double> K = Pp * H.transpose() * dense_inverse(S);
    P = (Mat<double>::Identity(d, d) - K * H) * Pp;
    m = m + K * e;
  }
};

template <typename Scalar>
Mat<Scalar> covariance_of(const kfopt::BeliefCovariance<Scalar>& cov) {
  return cov.covariance();
}

template <typename Scalar>
bool bitwise_equal(const Mat<Scalar>& a, const Mat<Scalar>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(Scalar) * static_cast<size_t>(a.size())) == 0;
}
template <typename Scalar>
bool bitwise_equal(const Vec<Scalar>& a, const Vec<Scalar>& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), sizeof(Scalar) * static_cast<size_t>(a.size())) == 0;
}

}  // namespace

TEMPLATE_TEST_CASE("cholesky_rank1_update equals the factor of L Lᵀ + v vᵀ", "[filter][kalman]",
                   float, double) {
  Rng rng(11);
  for (int n : {1, 2, 5, 9}) {
    const Mat<TestType> A = rng.spd<TestType>(n);
    Mat<TestType> L = Eigen::LLT<Mat<TestType>>(A).matrixL();
    const Vec<TestType> v = rng.normal<TestType>(n, 1);
    Vec<TestType> w = v;
    kfopt::detail::cholesky_rank1_update<TestType>(L, w);
    const Mat<double> Ld = L.template cast<double>();
    const Mat<double> expected = A.template cast<double>() + (v * v.transpose()).template cast<double>();
    CHECK(relative_error(Ld * Ld.transpose(), expected) <= Tolerance<TestType>::dense);
    CHECK(L.template triangularView<Eigen::StrictlyUpper>().toDenseMatrix().isZero(0));
  }
}

TEMPLATE_TEST_CASE("scalar and vector observations: every form equals the textbook Kalman update",
                   "[filter][kalman]", float, double) {
  Rng rng(21);
  const Eigen::Index d = 6;
  for (Eigen::Index k : {1, 3}) {
    for (double c : {1.0, 1.25}) {
      for (kfopt::KalmanForm form : kAllForms) {
        const Mat<TestType> P0 = rng.spd<TestType>(d);
        const Vec<TestType> m0 = rng.normal<TestType>(d, 1);
        DenseKalman ref{P0.template cast<double>(), m0.template cast<double>()};
        kfopt::GaussianBelief<TestType> belief(m0, P0, form);
        kfopt::KalmanUpdater<TestType> updater;
        for (int step = 0; step < 5; ++step) {
          const Mat<TestType> H = rng.normal<TestType>(k, d);
          const Mat<TestType> R = rng.spd<TestType>(k, 0.3, 2.0);
          const Vec<TestType> e = rng.normal<TestType>(k, 1);
          // The folded predict is exercised through an explicit fade beforehand, so the
          // mean-form API is tested with c = 1 and the fade separately.
          kfopt::kalman_fade(belief.covariance, static_cast<TestType>(1.0 - 1.0 / c));
          ref.update(H.template cast<double>(), R.template cast<double>(),
                     e.template cast<double>(), c, Mat<double>());
          REQUIRE(updater.update_linear(belief.mean, belief.covariance, H, R, e) ==
                  kfopt::Status::Success);
        }
        INFO("form " << kfopt::to_string(form) << ", k = " << k << ", c = " << c);
        CHECK(relative_error(covariance_of(belief.covariance).template cast<double>(), ref.P) <=
              20 * Tolerance<TestType>::dense);
        CHECK(relative_error(belief.mean.template cast<double>(), ref.m) <=
              20 * Tolerance<TestType>::dense);
        if (form != kfopt::KalmanForm::Information) {
          const Mat<TestType>& P = belief.covariance.storage();
          CHECK(bitwise_equal<TestType>(P, P.transpose().eval()));
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("square-root information update equals (P̃⁻¹ + GᵀG)⁻¹ with inflation and Q",
                   "[filter][kalman]", float, double) {
  Rng rng(31);
  const Eigen::Index d = 5;
  for (Eigen::Index r : {0, 1, 2, 4}) {
    for (kfopt::KalmanForm form : kAllForms) {
      const Mat<TestType> P = rng.spd<TestType>(d);
      const Mat<TestType> Gt = rng.normal<TestType>(d, r);
      const Vec<TestType> g = rng.normal<TestType>(d, 1);
      const Vec<TestType> m = rng.normal<TestType>(d, 1);
      const TestType c = TestType(1.5);
      const bool with_noise = form != kfopt::KalmanForm::Information;
      const Mat<TestType> Q = with_noise ? Mat<TestType>(0.1 * rng.spd<TestType>(d))
                                         : Mat<TestType>::Zero(d, d).eval();
      // Reference in double: information form written out with explicit inverses.
      const Mat<double> Pp = c * P.template cast<double>() + Q.template cast<double>();
      const Mat<double> Gtd = Gt.template cast<double>();
      const Mat<double> Pplus = dense_inverse<double>(dense_inverse(Pp) + Gtd * Gtd.transpose());
      const Vec<double> mplus = m.template cast<double>() + Pplus * g.template cast<double>();

      auto cov = kfopt::BeliefCovariance<TestType>::from_covariance(P, form);
      Vec<TestType> mean = m;
      kfopt::KalmanUpdater<TestType> updater(d, r);
      kfopt::Status status;
      if (with_noise) {
        status = updater.update_covariance(cov, Gt, g, c, Q);
        mean += updater.increment();
      } else {
        status = updater.update(mean, cov, Gt, g, c);
      }
      REQUIRE(status == kfopt::Status::Success);
      INFO("form " << kfopt::to_string(form) << ", r = " << r);
      CHECK(relative_error(cov.covariance().template cast<double>(), Pplus) <=
            10 * Tolerance<TestType>::dense);
      CHECK(relative_error(mean.template cast<double>(), mplus) <= 10 * Tolerance<TestType>::dense);
    }
  }
}

TEST_CASE("Joseph form equals the explicit Joseph product and the standard form",
          "[filter][kalman]") {
  Rng rng(41);
  const Eigen::Index d = 7, k = 2;
  const Mat<double> P = rng.spd<double>(d);
  const Mat<double> H = rng.normal<double>(k, d);
  const Mat<double> R = rng.spd<double>(k);
  const Vec<double> e = rng.normal<double>(k, 1);
  const Mat<double> S = H * P * H.transpose() + R;
  const Mat<double> K = P * H.transpose() * dense_inverse(S);
  const Mat<double> IKH = Mat<double>::Identity(d, d) - K * H;
  const Mat<double> joseph = IKH * P * IKH.transpose() + K * R * K.transpose();
  const Mat<double> standard = IKH * P;
  CHECK(relative_error(joseph, standard) <= 1e-12);  // the identity itself

  Vec<double> m1 = Vec<double>::Zero(d), m2 = m1;
  auto cj = kfopt::BeliefCovariance<double>::from_covariance(P, kfopt::KalmanForm::Joseph);
  auto cs = kfopt::BeliefCovariance<double>::from_covariance(P, kfopt::KalmanForm::Covariance);
  kfopt::KalmanUpdater<double> u1, u2;
  REQUIRE(u1.update_linear(m1, cj, H, R, e) == kfopt::Status::Success);
  REQUIRE(u2.update_linear(m2, cs, H, R, e) == kfopt::Status::Success);
  CHECK(relative_error(cj.covariance(), joseph) <= 1e-12);
  CHECK(relative_error(cs.covariance(), joseph) <= 1e-12);
  CHECK(relative_error(m1, K * e) <= 1e-12);
  CHECK(relative_error(m2, K * e) <= 1e-12);
}

TEST_CASE("Joseph form keeps a nearly singular posterior positive semi-definite",
          "[filter][kalman]") {
  // A very precise observation along one direction removes almost all variance there;
  // the Joseph form, a sum of PSD terms, never produces a negative eigenvalue beyond rounding.
  Rng rng(43);
  const Eigen::Index d = 6;
  auto cov = kfopt::BeliefCovariance<double>::from_covariance(1e4 * rng.spd<double>(d),
                                                              kfopt::KalmanForm::Joseph);
  Vec<double> m = Vec<double>::Zero(d);
  kfopt::KalmanUpdater<double> updater;
  for (int t = 0; t < 50; ++t) {
    const Mat<double> H = rng.normal<double>(1, d);
    const Mat<double> R = Mat<double>::Constant(1, 1, 1e-10);
    const Vec<double> e = rng.normal<double>(1, 1);
    REQUIRE(updater.update_linear(m, cov, H, R, e) == kfopt::Status::Success);
    const Eigen::SelfAdjointEigenSolver<Mat<double>> eig(cov.covariance());
    CHECK(eig.eigenvalues().minCoeff() >= -1e-9 * eig.eigenvalues().maxCoeff());
  }
}

TEMPLATE_TEST_CASE("information form equals covariance form over many updates",
                   "[filter][kalman]", float, double) {
  Rng rng(51);
  const Eigen::Index d = 8;
  const Mat<TestType> P0 = rng.spd<TestType>(d);
  kfopt::GaussianBelief<TestType> a(Vec<TestType>::Zero(d), P0, kfopt::KalmanForm::Covariance);
  kfopt::GaussianBelief<TestType> b(Vec<TestType>::Zero(d), P0, kfopt::KalmanForm::Information);
  kfopt::KalmanUpdater<TestType> ua, ub;
  for (int t = 0; t < 40; ++t) {
    const Eigen::Index r = 1 + t % 3;
    const Mat<TestType> Gt = rng.normal<TestType>(d, r) * TestType(0.5);
    const Vec<TestType> g = rng.normal<TestType>(d, 1);
    const TestType c = TestType(1.02);
    REQUIRE(ua.update(a, Gt, g, c) == kfopt::Status::Success);
    REQUIRE(ub.update(b, Gt, g, c) == kfopt::Status::Success);
  }
  CHECK(relative_error(a.covariance.covariance(), b.covariance.covariance()) <=
        100 * Tolerance<TestType>::dense);
  CHECK(relative_error(a.mean, b.mean) <= 100 * Tolerance<TestType>::dense);
  CHECK(relative_error(a.covariance.precision(), b.covariance.precision()) <=
        100 * Tolerance<TestType>::dense);
}

TEMPLATE_TEST_CASE("predict: fade, process noise and linear transition against dense formulas",
                   "[filter][kalman]", float, double) {
  Rng rng(61);
  const Eigen::Index d = 5;
  for (kfopt::KalmanForm form : kAllForms) {
    const Mat<TestType> P = rng.spd<TestType>(d);
    const Mat<TestType> F = rng.normal<TestType>(d, d);
    const Mat<TestType> Q = TestType(0.2) * rng.spd<TestType>(d);
    const Vec<TestType> m = rng.normal<TestType>(d, 1);

    auto faded = kfopt::BeliefCovariance<TestType>::from_covariance(P, form);
    kfopt::kalman_fade(faded, TestType(0.2));
    CHECK(relative_error(faded.covariance(), (P / TestType(0.8)).eval()) <=
          Tolerance<TestType>::dense);

    auto noisy = kfopt::BeliefCovariance<TestType>::from_covariance(P, form);
    REQUIRE(kfopt::kalman_add_process_noise<TestType>(noisy, Q) == kfopt::Status::Success);
    CHECK(relative_error(noisy.covariance(), (P + Q).eval()) <= Tolerance<TestType>::dense);

    kfopt::GaussianBelief<TestType> belief(m, P, form);
    Mat<TestType> work;
    REQUIRE(kfopt::kalman_predict<TestType>(belief, F, Q, work) == kfopt::Status::Success);
    const Mat<double> Fd = F.template cast<double>();
    const Mat<double> expected =
        Fd * P.template cast<double>() * Fd.transpose() + Q.template cast<double>();
    CHECK(relative_error(belief.covariance.covariance().template cast<double>(), expected) <=
          10 * Tolerance<TestType>::dense);
    CHECK(relative_error(belief.mean.template cast<double>(), (Fd * m.template cast<double>()).eval()) <=
          Tolerance<TestType>::dense);
  }
}

TEST_CASE("Kalman update: bad input leaves the belief bit-for-bit unchanged",
          "[filter][kalman][errors]") {
  Rng rng(71);
  const Eigen::Index d = 4;
  for (kfopt::KalmanForm form : kAllForms) {
    kfopt::GaussianBelief<double> belief(rng.normal<double>(d, 1), rng.spd<double>(d), form);
    const Mat<double> P_before = belief.covariance.storage();
    const Vec<double> m_before = belief.mean;
    kfopt::KalmanUpdater<double> updater;
    Mat<double> H = rng.normal<double>(1, d);
    const Mat<double> R = Mat<double>::Identity(1, 1);
    Vec<double> e = rng.normal<double>(1, 1);

    e(0) = std::numeric_limits<double>::quiet_NaN();
    CHECK(updater.update_linear(belief.mean, belief.covariance, H, R, e) ==
          kfopt::Status::NonFiniteInput);
    e(0) = 1.0;
    H(0, 2) = std::numeric_limits<double>::infinity();
    CHECK(updater.update_linear(belief.mean, belief.covariance, H, R, e) ==
          kfopt::Status::NonFiniteInput);
    H(0, 2) = 0.5;
    const Mat<double> R_bad = -Mat<double>::Identity(1, 1);
    CHECK_THROWS_AS(updater.update_linear(belief.mean, belief.covariance, H, R_bad, e),
                    kfopt::InvalidInputError);
    const Mat<double> H_wrong = rng.normal<double>(1, d + 1);
    try {
      updater.update_linear(belief.mean, belief.covariance, H_wrong, R, e);
      FAIL("expected ShapeError");
    } catch (const kfopt::ShapeError& err) {
      const std::string msg = err.what();
      CHECK(msg.find("update_linear") != std::string::npos);
      CHECK(msg.find("1x5") != std::string::npos);
      CHECK(msg.find("1x4") != std::string::npos);
    }
    Mat<double> Gt = rng.normal<double>(d, 2);
    Gt(1, 1) = std::numeric_limits<double>::quiet_NaN();
    CHECK(updater.update(belief, Gt, Vec<double>::Zero(d), 1.0) == kfopt::Status::NonFiniteInput);
    CHECK_THROWS_AS(updater.update(belief, rng.normal<double>(d, 1), Vec<double>::Zero(d), -1.0),
                    kfopt::InvalidInputError);
    CHECK(bitwise_equal(belief.covariance.storage(), P_before));
    CHECK(bitwise_equal(belief.mean, m_before));
  }
}

TEST_CASE("Belief construction rejects non-SPD covariances", "[filter][kalman][errors]") {
  Mat<double> P(2, 2);
  P << 1, 2, 2, 1;  // indefinite
  for (kfopt::KalmanForm form : kAllForms) {
    CHECK_THROWS_AS(kfopt::BeliefCovariance<double>::from_covariance(P, form),
                    kfopt::InvalidInputError);
  }
  Mat<double> A(2, 2);
  A << 1, 0.5, 0, 1;  // not symmetric
  CHECK_THROWS_AS(kfopt::BeliefCovariance<double>::from_covariance(A), kfopt::InvalidInputError);
  Mat<double> singular(2, 2);
  singular << 1, 1, 1, 1;  // PSD, rank 1
  CHECK_THROWS_AS(kfopt::BeliefCovariance<double>::from_covariance(singular),
                  kfopt::InvalidInputError);
  CHECK_NOTHROW(kfopt::BeliefCovariance<double>::from_covariance(
      singular, kfopt::KalmanForm::Covariance, /*allow_singular=*/true));
}

TEST_CASE("tiled products equal the plain products across tile boundaries", "[filter][kalman]") {
  Rng rng(81);
  const Mat<double> A = rng.normal<double>(257, 300);
  const Mat<double> B = rng.normal<double>(300, 131);
  Mat<double> C = rng.normal<double>(257, 131);
  const Mat<double> expected = C - 0.5 * A * B;
  kfopt::detail::tiled_multiply_add(C, A, B, -0.5);
  CHECK(relative_error(C, expected) <= 1e-13);
  const Mat<double> W = rng.normal<double>(300, 140);
  Mat<double> P = rng.spd<double>(300);
  const Mat<double> lower_expected = P + W * W.transpose();
  kfopt::detail::tiled_lower_outer_add(P, W, W, 1.0);
  kfopt::detail::symmetrize_from_lower(P);
  CHECK(relative_error(P, lower_expected) <= 1e-13);
}

TEST_CASE("updates in dimension 300 (several product tiles) equal the dense formulas",
          "[filter][kalman]") {
  Rng rng(82);
  const Eigen::Index d = 300;
  const Mat<double> P = rng.spd<double>(d, 0.5, 2.0);
  const Mat<double> Pinv = dense_inverse(P);
  for (Eigen::Index r : {1, 3, 130}) {
    const Mat<double> Gt = rng.normal<double>(d, r) / std::sqrt(double(d));
    const Vec<double> g = rng.normal<double>(d, 1);
    const Mat<double> Pplus = dense_inverse<double>((Pinv / 1.1 + Gt * Gt.transpose()).eval());
    const Vec<double> delta = Pplus * g;
    for (kfopt::KalmanForm form : kAllForms) {
      auto cov = kfopt::BeliefCovariance<double>::from_covariance(P, form);
      kfopt::KalmanUpdater<double> updater;
      REQUIRE(updater.update_covariance(cov, Gt, g, 1.1) == kfopt::Status::Success);
      INFO("form " << kfopt::to_string(form) << ", r = " << r);
      CHECK(relative_error(cov.covariance(), Pplus) <= 1e-10);
      CHECK(relative_error(updater.increment(), delta) <= 1e-10);
      if (form != kfopt::KalmanForm::Information) {
        CHECK(bitwise_equal<double>(cov.storage(), cov.storage().transpose().eval()));
      }
    }
  }
}

TEMPLATE_TEST_CASE("belief accessors: form conversion and P v without forming P",
                   "[filter][kalman]", float, double) {
  Rng rng(83);
  const Eigen::Index d = 6;
  const Mat<TestType> P = rng.spd<TestType>(d);
  const Vec<TestType> v = rng.normal<TestType>(d, 1);
  const Vec<double> expected = P.template cast<double>() * v.template cast<double>();
  for (kfopt::KalmanForm from : kAllForms) {
    for (kfopt::KalmanForm to : kAllForms) {
      auto cov = kfopt::BeliefCovariance<TestType>::from_covariance(P, from);
      cov.convert_to(to);
      CHECK(cov.form() == to);
      CHECK(relative_error(cov.covariance().template cast<double>(), P.template cast<double>()) <=
            10 * Tolerance<TestType>::dense);
      Vec<TestType> out(d);
      cov.multiply_covariance(v, out);
      CHECK(relative_error(out.template cast<double>(), expected) <= 10 * Tolerance<TestType>::dense);
    }
  }
  const auto info = kfopt::BeliefCovariance<TestType>::from_precision(P);
  CHECK(relative_error(info.precision().template cast<double>(), P.template cast<double>()) <=
        10 * Tolerance<TestType>::dense);
  CHECK(info.storage().template triangularView<Eigen::StrictlyUpper>().toDenseMatrix().isZero(0));
}
