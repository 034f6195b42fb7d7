// Statistics as contributions (sums over examples that add over batches): the sum of the
// contributions of the parts of a batch, taken as one batch, equals the moving average's
// update on the whole batch (to rounding), for dense, homogeneous and diagonal factors,
// time-major sequences with mixed lengths, and the length histogram; refusals (NaN/Inf,
// overflow) change nothing.
#include <catch2/catch.hpp>
#include <kfopt/kron/factor_moments.hpp>
#include <kfopt/kron/sequence_lengths.hpp>

#include <limits>
#include <random>
#include <vector>

namespace {

template <typename Scalar>
using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

template <typename Scalar>
Mat<Scalar> random_rows(std::mt19937_64& gen, Eigen::Index rows, Eigen::Index cols) {
  std::normal_distribution<double> normal(0.0, 1.0);
  Mat<Scalar> m(rows, cols);
  for (Eigen::Index k = 0; k < m.size(); ++k) m(k) = static_cast<Scalar>(normal(gen));
  return m;
}

template <typename Scalar>
double relative(const Mat<Scalar>& x, const Mat<Scalar>& y) {
  return static_cast<double>((x - y).cwiseAbs().maxCoeff() / y.cwiseAbs().maxCoeff());
}

template <typename Scalar>
double tolerance() {
  return std::is_same<Scalar, float>::value ? 2e-5 : 1e-13;
}

}  // namespace

TEMPLATE_TEST_CASE("FactorContribution: parts summed equal the whole batch", "[kron][contribution]",
                   float, double) {
  using Scalar = TestType;
  for (const bool homogeneous : {false, true}) {
    for (const bool diagonal : {false, true}) {
      kfopt::FactorAverageOptions o;
      o.decay = 0.8;  // the lazy scale folds back within the 30 batches
      o.homogeneous = homogeneous;
      o.diagonal = diagonal;
      kfopt::FactorMovingAverage<Scalar> whole(5, o), parts(5, o);
      std::mt19937_64 gen(11);
      for (int b = 0; b < 30; ++b) {
        const Mat<Scalar> X = random_rows<Scalar>(gen, 9, 5);
        REQUIRE(whole.update(X) == kfopt::Status::Success);
        auto c = parts.empty_contribution();
        REQUIRE(parts.add_contribution(X.topRows(2), c) == kfopt::Status::Success);
        REQUIRE(parts.add_contribution(X.middleRows(2, 0), c) == kfopt::Status::Success);  // empty
        REQUIRE(parts.add_contribution(X.bottomRows(7), c) == kfopt::Status::Success);
        REQUIRE(c.rows == 9.0);
        REQUIRE(parts.admit(c) == kfopt::Status::Success);
        REQUIRE(parts.update(c) == kfopt::Status::Success);
        INFO("homogeneous " << homogeneous << ", diagonal " << diagonal << ", batch " << b);
        REQUIRE(relative(parts.value(), whole.value()) < tolerance<Scalar>());
      }
      REQUIRE(parts.updates() == whole.updates());

      // An empty contribution changes nothing; a non-finite batch is refused, counted.
      const auto before = parts.value();
      auto empty = parts.empty_contribution();
      REQUIRE(parts.update(empty) == kfopt::Status::NotComputed);
      Mat<Scalar> bad = random_rows<Scalar>(gen, 4, 5);
      bad(2, 3) = std::numeric_limits<Scalar>::quiet_NaN();
      auto c = parts.empty_contribution();
      REQUIRE(parts.add_contribution(bad, c) == kfopt::Status::NonFiniteInput);
      REQUIRE(c.nonfinite == 1.0);
      REQUIRE(c.rows == 0.0);
      REQUIRE(parts.update(c) == kfopt::Status::NonFiniteInput);
      // A finite batch whose squares overflow the factor: refused as update(batch) would.
      Mat<Scalar> huge = random_rows<Scalar>(gen, 4, 5);
      huge(1, 1) = std::numeric_limits<Scalar>::max() / Scalar(4);
      auto h = parts.empty_contribution();
      REQUIRE(parts.add_contribution(huge, h) == kfopt::Status::Success);
      REQUIRE(parts.update(h) == kfopt::Status::Overflow);
      REQUIRE(parts.update(huge) == kfopt::Status::Overflow);
      REQUIRE(parts.value() == before);
      REQUIRE(parts.updates() == whole.updates());
    }
  }
}

TEMPLATE_TEST_CASE("TemporalFactorContribution and length counts: groups of sequences summed "
                   "equal the whole batch", "[kron][contribution]", float, double) {
  using Scalar = TestType;
  for (const bool homogeneous : {false, true}) {
    kfopt::FactorAverageOptions o;
    o.decay = 0.9;
    o.homogeneous = homogeneous;
    kfopt::TemporalFactorMovingAverage<Scalar> whole(4, o), parts(4, o);
    kfopt::SequenceLengthAverage whole_lengths(0.9), parts_lengths(0.9);
    std::mt19937_64 gen(5);
    std::uniform_int_distribution<int> length(0, 6);
    for (int b = 0; b < 20; ++b) {
      // 7 sequences: the first 3 form one group, the other 4 another, each in its own layout.
      const Eigen::Index m = 7;
      Eigen::VectorXi lengths(m);
      for (Eigen::Index i = 0; i < m; ++i) lengths(i) = length(gen);
      lengths(0) = 6;
      std::vector<Mat<Scalar>> seq;
      for (Eigen::Index i = 0; i < m; ++i) seq.push_back(random_rows<Scalar>(gen, lengths(i), 4));
      auto layout = [&](Eigen::Index first, Eigen::Index count) {
        const Eigen::Index t_max = lengths.segment(first, count).maxCoeff();
        Mat<Scalar> X = Mat<Scalar>::Constant(t_max * count, 4, std::numeric_limits<Scalar>::quiet_NaN());
        for (Eigen::Index i = 0; i < count; ++i)
          for (Eigen::Index t = 0; t < lengths(first + i); ++t) X.row(t * count + i) = seq[first + i].row(t);
        return X;
      };
      REQUIRE(whole.update(layout(0, m), lengths) == kfopt::Status::Success);
      whole_lengths.update(lengths);
      auto c = parts.empty_contribution();
      REQUIRE(parts.add_contribution(layout(0, 3), lengths.head(3), c) == kfopt::Status::Success);
      if (lengths.tail(4).maxCoeff() > 0) {
        REQUIRE(parts.add_contribution(layout(3, 4), lengths.tail(4), c) == kfopt::Status::Success);
      }
      REQUIRE(parts.update(c) == kfopt::Status::Success);
      Eigen::VectorXd counts = Eigen::VectorXd::Zero(9);
      REQUIRE(kfopt::SequenceLengthAverage::add_counts(lengths.head(3), counts) == 0);
      REQUIRE(kfopt::SequenceLengthAverage::add_counts(lengths.tail(4), counts) == 0);
      parts_lengths.update_counts(counts);
      INFO("homogeneous " << homogeneous << ", batch " << b);
      REQUIRE(relative(parts.a0(), whole.a0()) < tolerance<Scalar>());
      REQUIRE(relative(parts.a1(), whole.a1()) < tolerance<Scalar>());
      REQUIRE(parts.state().last_mean_length == Approx(whole.state().last_mean_length));
      const auto& hp = parts_lengths.state().histogram;
      const auto& hw = whole_lengths.state().histogram;
      REQUIRE(hp.size() == hw.size());
      for (std::size_t t = 0; t < hw.size(); ++t) REQUIRE(hp[t] == Approx(hw[t]).margin(1e-15));
    }
    // A NaN in a real step is refused; in a padded step it is never read.
    Eigen::VectorXi lengths(2);
    lengths << 2, 1;
    Mat<Scalar> X = random_rows<Scalar>(gen, 4, 4);
    X(3, 0) = std::numeric_limits<Scalar>::quiet_NaN();  // step 1 of sequence 1: padded
    auto c = parts.empty_contribution();
    REQUIRE(parts.add_contribution(X, lengths, c) == kfopt::Status::Success);
    X(2, 1) = std::numeric_limits<Scalar>::infinity();  // step 1 of sequence 0: real
    auto bad = parts.empty_contribution();
    REQUIRE(parts.add_contribution(X, lengths, bad) == kfopt::Status::NonFiniteInput);
    const Mat<Scalar> a0 = parts.a0();
    REQUIRE(parts.update(bad) == kfopt::Status::NonFiniteInput);
    REQUIRE(parts.a0() == a0);
    // Lengths beyond the counts' capacity are reported, not counted.
    Eigen::VectorXd counts = Eigen::VectorXd::Zero(2);
    REQUIRE(kfopt::SequenceLengthAverage::add_counts(lengths, counts) == 1);
    REQUIRE(counts(1) == 1.0);
  }
}
