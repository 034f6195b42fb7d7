// vec/unvec and (B ⊗ C) vec(X) = vec(C X Bᵀ), checked against the explicit Kronecker
// product built entry by entry.
#include <catch2/catch.hpp>
#include <kfopt/kron/vec.hpp>

#include "support/dense_reference.hpp"

using namespace kfopt_test;

TEMPLATE_TEST_CASE("vec and unvec agree with the column-stacking definition", "[kron][vec]",
                   float, double) {
  Rng rng(1);
  const Mat<TestType> X = rng.normal<TestType>(3, 5);
  const Vec<TestType> v = kfopt::vec(X);
  CHECK(v == dense_vec(X));
  CHECK(kfopt::unvec(v, 3, 5) == X);
  Mat<TestType> Y = X;
  CHECK(kfopt::vec_view(Y) == dense_vec(X));
  CHECK_THROWS_AS(kfopt::unvec(v, 4, 4), kfopt::ShapeError);
}

TEMPLATE_TEST_CASE("kron_matvec equals the explicit Kronecker product times vec(X)",
                   "[kron][vec]", float, double) {
  Rng rng(2);
  // Rectangular factors, and both multiplication orders (tall and wide shapes).
  const int shapes[][4] = {{3, 4, 2, 5}, {6, 2, 5, 3}, {1, 1, 4, 4}, {5, 5, 1, 7}, {2, 7, 6, 1}};
  for (const auto& s : shapes) {
    const Mat<TestType> B = rng.normal<TestType>(s[0], s[1]);
    const Mat<TestType> C = rng.normal<TestType>(s[2], s[3]);
    const Mat<TestType> X = rng.normal<TestType>(s[3], s[1]);
    Mat<TestType> out, work;
    kfopt::kron_matvec(B, C, X, out, work);
    const Vec<TestType> expected = dense_kron(B, C) * dense_vec(X);
    CHECK(relative_error(dense_vec(out), expected) <= Tolerance<TestType>::dense);
    CHECK(relative_error(kfopt::kronecker_product(B, C), dense_kron(B, C)) == 0.0);
  }
}

TEST_CASE("kron_matvec rejects a mismatched X and names the shapes", "[kron][vec][errors]") {
  Eigen::MatrixXd B(3, 4), C(2, 5), X(5, 3), out(7, 7), work;
  B.setOnes();
  C.setOnes();
  X.setOnes();
  const Eigen::MatrixXd before = out;
  try {
    kfopt::kron_matvec(B, C, X, out, work);
    FAIL("expected ShapeError");
  } catch (const kfopt::ShapeError& e) {
    const std::string msg = e.what();
    CHECK(msg.find("kron_matvec") != std::string::npos);
    CHECK(msg.find("5x3") != std::string::npos);
    CHECK(msg.find("5x4") != std::string::npos);
  }
  CHECK(out == before);
}
