// kfopt's product kernel (linalg/matrix_product_kernel.hpp) and the recursive triangular
// kernels built on it (damped_cholesky_inverse.hpp), against triple loops in long double and
// dense Eigen products with explicitly zeroed triangles.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "kfopt/linalg/damped_cholesky_inverse.hpp"
#include "kfopt/linalg/matrix_product_kernel.hpp"

namespace {

template <typename S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
using LMat = Eigen::Matrix<long double, Eigen::Dynamic, Eigen::Dynamic>;

// Reference C + α·A·B by the definition, in long double, with the bound
// |error| ≤ tol · (|C| + |α|·|A|·|B|) entrywise (tol = 4·(k + 2)·ε of the test's scalar).
template <typename S, typename DA, typename DB>
void check_product(const Mat<S>& C0, S alpha, const Eigen::MatrixBase<DA>& A,
                   const Eigen::MatrixBase<DB>& B, const Mat<S>& got) {
  const Eigen::Index m = C0.rows(), n = C0.cols(), k = A.cols();
  const long double tol =
      4.0L * static_cast<long double>(k + 2) * std::numeric_limits<S>::epsilon();
  for (Eigen::Index j = 0; j < n; ++j) {
    for (Eigen::Index i = 0; i < m; ++i) {
      long double sum = 0, mag = 0;
      for (Eigen::Index p = 0; p < k; ++p) {
        const long double t = static_cast<long double>(A(i, p)) * B(p, j);
        sum += t;
        mag += std::fabs(t);
      }
      const long double want = C0(i, j) + static_cast<long double>(alpha) * sum;
      const long double bound =
          tol * (std::fabs(static_cast<long double>(C0(i, j))) + std::fabs(alpha) * mag) +
          std::numeric_limits<S>::min();
      if (!(std::fabs(static_cast<long double>(got(i, j)) - want) <= bound)) {
        FAIL_CHECK("entry (" << i << ", " << j << ") of a " << m << "x" << n << "x" << k
                             << " product: got " << got(i, j) << ", want "
                             << static_cast<double>(want));
        return;
      }
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("product kernel: C += alpha A B against long-double triple loops",
                   "[kron][product]", float, double) {
  using S = TestType;
  using kfopt::detail::product_accumulate;
  using Shape = kfopt::detail::ProductKernelShape<S>;
  const Eigen::Index R = Shape::rows, NR = Shape::cols, KC = Shape::depth_block;
  const Eigen::Index P = Shape::packet_size;
  // Sizes around the register tile (a last panel of one, two or three packets), the depth
  // block and the row block of this build.
  const std::vector<std::tuple<Eigen::Index, Eigen::Index, Eigen::Index>> shapes = {
      {1, 1, 1},         {R - 1, NR - 1, 3},       {R, NR, KC},           {R + 1, NR + 1, KC + 1},
      {2 * R + 3, 3 * NR + 2, 2 * KC + 5},         {Shape::row_block + 7, 5, 17},
      {5, 2 * NR + 1, 1}, {97, 61, 130},           {R + P + 1, NR, 7},    {2 * P, 3, 9},
      {0, 4, 4},          {4, 0, 4},
      {4, 4, 0}};
  for (const auto& [m, n, k] : shapes) {
    for (const S alpha : {S(1), S(-0.75)}) {
      CAPTURE(m, n, k, alpha);
      const Mat<S> A = Mat<S>::Random(m, k), B = Mat<S>::Random(k, n);
      const Mat<S> C0 = Mat<S>::Random(m, n);
      Mat<S> C = C0;
      product_accumulate<S>(C, alpha, A, B);
      check_product<S>(C0, alpha, A, B, C);
    }
  }
}

TEMPLATE_TEST_CASE("product kernel: strided and transposed operands, C a block",
                   "[kron][product]", float, double) {
  using S = TestType;
  using kfopt::detail::product_accumulate;
  const Eigen::Index m = 53, n = 29, k = 300;
  // Operands are blocks of larger matrices (outer stride ≠ rows) or transposes of blocks
  // (rows contiguous): the four layouts of A·B, accumulated into an interior block of C.
  const Mat<S> big_a = Mat<S>::Random(m + 9, k + 4), big_at = Mat<S>::Random(k + 3, m + 5);
  const Mat<S> big_b = Mat<S>::Random(k + 2, n + 7), big_bt = Mat<S>::Random(n + 6, k + 1);
  const auto A = big_a.block(4, 2, m, k);
  const auto At = big_at.block(1, 3, k, m).transpose();
  const auto B = big_b.block(2, 5, k, n);
  const auto Bt = big_bt.block(3, 1, n, k).transpose();
  const Mat<S> host0 = Mat<S>::Random(m + 6, n + 8);
  auto run = [&](const auto& a, const auto& b) {
    Mat<S> host = host0;
    product_accumulate<S>(host.block(3, 5, m, n), S(0.5), a, b);
    const Mat<S> C0 = host0.block(3, 5, m, n), got = host.block(3, 5, m, n);
    check_product<S>(C0, S(0.5), a, b, got);
    // Nothing outside the block is written.
    Mat<S> outside = host - host0;
    outside.block(3, 5, m, n).setZero();
    CHECK(outside.cwiseAbs().maxCoeff() == S(0));
  };
  SECTION("A, B") { run(A, B); }
  SECTION("Aᵀ-stored, B") { run(At, B); }
  SECTION("A, Bᵀ-stored") { run(A, Bt); }
  SECTION("Aᵀ-stored, Bᵀ-stored") { run(At, Bt); }
}

TEST_CASE("product kernel: a column count past the column block", "[kron][product]") {
  using Shape = kfopt::detail::ProductKernelShape<double>;
  const Eigen::Index m = 5, n = Shape::col_block + 13, k = 40;
  const Mat<double> A = Mat<double>::Random(m, k), B = Mat<double>::Random(k, n);
  const Mat<double> C0 = Mat<double>::Random(m, n);
  Mat<double> C = C0;
  kfopt::detail::product_accumulate<double>(C, 2.0, A, B);
  check_product<double>(C0, 2.0, A, B, C);
}

TEMPLATE_TEST_CASE("lower product kernel: lower(C) += alpha A B, the strict upper triangle untouched",
                   "[kron][product]", float, double) {
  using S = TestType;
  using Shape = kfopt::detail::ProductKernelShape<S>;
  const Eigen::Index R = Shape::rows, NR = Shape::cols;
  // Square sizes around the tile edges, the row block and the column block; a general
  // (non-symmetric) A·B and the Gram form XᵀX with Xᵀ a transposed block, as the statistics
  // use it.
  for (const Eigen::Index n : {Eigen::Index(1), NR - 1, R + 1, Eigen::Index(97),
                               Shape::row_block + 3, Shape::col_block + 5}) {
    const Eigen::Index k = n > 300 ? 3 : 45;
    CAPTURE(n, k);
    const Mat<S> A = Mat<S>::Random(n, k), B = Mat<S>::Random(k, n);
    const Mat<S> X = Mat<S>::Random(k + 2, n + 1);
    const auto Xb = X.block(1, 1, k, n);
    const Mat<S> C0 = Mat<S>::Random(n, n);
    for (const bool gram : {false, true}) {
      CAPTURE(gram);
      Mat<S> C = C0;
      if (gram) {
        kfopt::detail::lower_product_accumulate<S>(C, S(-1.5), Xb.transpose(), Xb);
      } else {
        kfopt::detail::lower_product_accumulate<S>(C, S(-1.5), A, B);
      }
      // Strict upper triangle: bit for bit the old values.
      for (Eigen::Index j = 1; j < n; ++j) {
        CHECK((C.col(j).head(j) - C0.col(j).head(j)).cwiseAbs().maxCoeff() == S(0));
      }
      // Lower triangle against the long-double reference: compare a matrix whose upper
      // triangle is taken from a full reference product, so only the lower part is tested.
      Mat<S> full = C0;
      if (gram) {
        kfopt::detail::product_accumulate<S>(full, S(-1.5), Xb.transpose(), Xb);
      } else {
        kfopt::detail::product_accumulate<S>(full, S(-1.5), A, B);
      }
      Mat<S> lower_then_full = full;
      lower_then_full.template triangularView<Eigen::Lower>() = C;
      if (gram) {
        check_product<S>(C0, S(-1.5), Xb.transpose(), Xb, lower_then_full);
      } else {
        check_product<S>(C0, S(-1.5), A, B, lower_then_full);
      }
    }
  }
}

TEST_CASE("product kernel: other scalar types go to Eigen's product", "[kron][product]") {
  STATIC_REQUIRE_FALSE(kfopt::detail::kHasProductKernel<long double>);
  const LMat A = LMat::Random(7, 9), B = LMat::Random(9, 4), C0 = LMat::Random(7, 4);
  LMat C = C0;
  kfopt::detail::product_accumulate<long double>(C, -1.0L, A, B);
  CHECK((C - (C0 - A * B)).cwiseAbs().maxCoeff() < 1e-15L);
}

TEMPLATE_TEST_CASE("triangular kernels: products and solve against dense, upper triangle unread",
                   "[kron][product][triangular]", float, double) {
  using S = TestType;
  namespace d = kfopt::detail;
  const S tol = sizeof(S) == 8 ? S(1e-12) : S(2e-4);
  for (const Eigen::Index n : {Eigen::Index(1), Eigen::Index(64), Eigen::Index(65),
                               Eigen::Index(130), Eigen::Index(300)}) {
    CAPTURE(n);
    // A well-conditioned lower-triangular T (unit-sized diagonal); NaN in the strict upper
    // triangle, which no kernel may read.
    Mat<S> T = Mat<S>::Random(n, n) * S(0.5 / std::sqrt(double(n)));
    T.diagonal().array() = S(1) + T.diagonal().array().abs();
    const Mat<S> lower = T.template triangularView<Eigen::Lower>();
    for (Eigen::Index j = 1; j < n; ++j) T.col(j).head(j).setConstant(std::numeric_limits<S>::quiet_NaN());
    Mat<S> work;
    const Eigen::Index m = 37;
    const Mat<S> W_right = Mat<S>::Random(m, n), W_left = Mat<S>::Random(n, m);

    Mat<S> got = W_right;
    d::multiply_lower_right_inplace<Mat<S>>(T, got, S(-2), work);
    Mat<S> want = S(-2) * W_right * lower;
    CHECK((got - want).cwiseAbs().maxCoeff() <= tol * (1 + want.cwiseAbs().maxCoeff()));

    got = W_left;
    d::multiply_lower_left_inplace<Mat<S>, false>(T, got, work);
    want = lower * W_left;
    CHECK((got - want).cwiseAbs().maxCoeff() <= tol * (1 + want.cwiseAbs().maxCoeff()));

    got = W_left;
    d::multiply_lower_left_inplace<Mat<S>, true>(T, got, work);
    want = lower.transpose() * W_left;
    CHECK((got - want).cwiseAbs().maxCoeff() <= tol * (1 + want.cwiseAbs().maxCoeff()));

    // X ← X L⁻ᵀ: then X Lᵀ gives back the right-hand side.
    got = W_right;
    d::solve_lower_transposed_right_inplace<Mat<S>>(T, got);
    const Mat<S> back = got * lower.transpose();
    CHECK((back - W_right).cwiseAbs().maxCoeff() <= tol * 10);
  }
}
