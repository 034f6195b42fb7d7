// Every storage kind through the one registration concept (ParameterBlock): Eigen objects,
// raw column-major buffers, raw row-major buffers (a C array, a std::vector, another
// framework's tensor) and Eigen maps of either order. Kfac (dense and recurrent layers, its
// step and its preconditioner), KroneckerFilter and Adam over each kind take exactly the steps
// they take over Eigen matrices; shapes, strided views and wrong biases are refused.
#include <catch2/catch.hpp>
#include <kfopt/core/state_dict.hpp>
#include <kfopt/optim/bayes_filter/kronecker_filter.hpp>
#include <kfopt/optim/first_order/adam.hpp>
#include <kfopt/optim/kfac/kfac.hpp>

#include <vector>

#include "support/dense_reference.hpp"

using namespace kfopt_test;

namespace {

template <typename Scalar>
using RowMajor = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// A matrix's entries in row-major order, as a C array holds them.
template <typename Scalar>
std::vector<Scalar> row_major_copy(const Mat<Scalar>& M) {
  std::vector<Scalar> out(static_cast<std::size_t>(M.size()));
  Eigen::Map<RowMajor<Scalar>>(out.data(), M.rows(), M.cols()) = M;
  return out;
}
template <typename Scalar>
void assign_row_major(std::vector<Scalar>& out, const Mat<Scalar>& M) {
  Eigen::Map<RowMajor<Scalar>>(out.data(), M.rows(), M.cols()) = M;
}
template <typename A, typename B>
double max_abs_diff(const A& a, const B& b) {
  return (a.template cast<double>() - b.template cast<double>()).cwiseAbs().maxCoeff();
}
template <typename Scalar>
Mat<Scalar> from_row_major(const std::vector<Scalar>& v, Eigen::Index rows, Eigen::Index cols) {
  return Eigen::Map<const RowMajor<Scalar>>(v.data(), rows, cols);
}

// Bit for bit without clipping. With clipping the global gradient norm is summed in storage
// order, so a row-major buffer rounds it differently: equal to a few ulps.
template <typename Scalar>
void check_kfac_storage_kinds(double max_gradient_norm, double tolerance) {
  Rng rng(3);
  kfopt::KfacOptions o;
  o.learning_rate = 0.3;
  o.damping = 0.05;
  o.weight_decay = 1e-3;
  o.inverse_period = 2;
  o.max_gradient_norm = max_gradient_norm;
  // Reference: Eigen objects.
  Mat<Scalar> W1 = rng.normal<double>(4, 5).cast<Scalar>(), dW1 = Mat<Scalar>::Zero(4, 5);
  Vec<Scalar> b1 = rng.normal<double>(4, 1).cast<Scalar>(), db1 = Vec<Scalar>::Zero(4);
  Mat<Scalar> W2 = rng.normal<double>(3, 4).cast<Scalar>(), dW2 = Mat<Scalar>::Zero(3, 4);
  Vec<Scalar> b2 = rng.normal<double>(3, 1).cast<Scalar>(), db2 = Vec<Scalar>::Zero(3);
  // The same model in other storage: fc1 in raw row-major buffers (a C array) with a raw
  // bias, fc2's weight in a column-major Map and its bias an Eigen object... through view().
  std::vector<Scalar> w1 = row_major_copy(W1), dw1(20), bias1(b1.data(), b1.data() + 4), dbias1(4);
  std::vector<Scalar> w2(W2.data(), W2.data() + 12), dw2(12);
  Vec<Scalar> b2_other = b2, db2_other = db2;
  using Block = kfopt::ParameterBlock<Scalar>;
  kfopt::Kfac<Scalar> reference(o), other(o);
  reference.add_dense_layer("fc1", W1, dW1, b1, db1);
  reference.add_dense_layer("fc2", W2, dW2, b2, db2);
  other.add_dense_layer("fc1", Block::row_major("w", w1.data(), dw1.data(), 4, 5),
                        Block("b", bias1.data(), dbias1.data(), 4, 1));
  Eigen::Map<Mat<Scalar>> w2_map(w2.data(), 3, 4), dw2_map(dw2.data(), 3, 4);
  other.add_dense_layer("fc2", Block::view("w", w2_map, dw2_map), Block::view("b", b2_other, db2_other));
  CHECK(other.parameters()[0].name() == "fc1.weight");
  CHECK(other.parameters()[0].is_row_major());
  for (int t = 0; t < 8; ++t) {
    const Mat<Scalar> x1 = rng.normal<double>(6, 5).cast<Scalar>(), g1 = rng.normal<double>(6, 4).cast<Scalar>();
    const Mat<Scalar> x2 = rng.normal<double>(6, 4).cast<Scalar>(), g2 = rng.normal<double>(6, 3).cast<Scalar>();
    for (kfopt::Kfac<Scalar>* k : {&reference, &other}) {
      REQUIRE(k->record_statistics(0, x1, g1) == kfopt::Status::Success);
      REQUIRE(k->record_statistics(1, x2, g2) == kfopt::Status::Success);
    }
    dW1 = rng.normal<double>(4, 5).cast<Scalar>();
    db1 = rng.normal<double>(4, 1).cast<Scalar>();
    dW2 = rng.normal<double>(3, 4).cast<Scalar>();
    db2 = rng.normal<double>(3, 1).cast<Scalar>();
    assign_row_major(dw1, dW1);
    Eigen::Map<Vec<Scalar>>(dbias1.data(), 4) = db1;
    dw2_map = dW2;
    db2_other = db2;
    if (t < 7) {
      REQUIRE(reference.step() == kfopt::Status::Success);
      REQUIRE(other.step() == kfopt::Status::Success);
    } else {  // the preconditioner writes the direction back into each kind of storage
      REQUIRE(reference.precondition_gradients() == kfopt::Status::Success);
      REQUIRE(other.precondition_gradients() == kfopt::Status::Success);
      CHECK(max_abs_diff(from_row_major(dw1, 4, 5), dW1) <= tolerance);
      CHECK(max_abs_diff(Eigen::Map<Vec<Scalar>>(dbias1.data(), 4), db1) <= tolerance);
      CHECK(max_abs_diff(dw2_map, dW2) <= tolerance);
      CHECK(max_abs_diff(db2_other, db2) <= tolerance);
    }
    INFO("step " << t);
    REQUIRE(max_abs_diff(from_row_major(w1, 4, 5), W1) <= tolerance);
    REQUIRE(max_abs_diff(Eigen::Map<Vec<Scalar>>(bias1.data(), 4), b1) <= tolerance);
    REQUIRE(max_abs_diff(w2_map, W2) <= tolerance);
    REQUIRE(max_abs_diff(b2_other, b2) <= tolerance);
  }
  if (tolerance > 0) return;
  // The parameters' state dict holds the rows × cols matrices whatever the storage order, so
  // a checkpoint of one storage kind loads into another.
  const kfopt::StateDict saved = kfopt::parameters_state_dict(reference.parameters());
  CHECK(kfopt::parameters_state_dict(other.parameters()) == saved);
  assign_row_major(w1, Mat<Scalar>(Mat<Scalar>::Zero(4, 5)));
  kfopt::ParameterSet<Scalar> other_params;
  for (const auto& block : other.parameters()) other_params.add(block);
  kfopt::load_parameters(other_params, saved);
  CHECK(from_row_major(w1, 4, 5) == W1);
}

}  // namespace

TEST_CASE("Kfac over raw row-major and column-major buffers and Eigen maps takes the steps it "
          "takes over Eigen matrices, bit for bit (to rounding with clipping)", "[optim][kfac][storage]") {
  check_kfac_storage_kinds<double>(0.0, 0.0);
  check_kfac_storage_kinds<float>(0.0, 0.0);
  check_kfac_storage_kinds<double>(5.0, 1e-13);
  check_kfac_storage_kinds<float>(5.0, 1e-5);
}

TEST_CASE("A recurrent layer in a row-major Map takes the same steps", "[optim][kfac][storage]") {
  Rng rng(4);
  const int T = 3, m = 4, in = 3, out = 3;
  Mat<double> W = rng.normal<double>(out, in), dW = Mat<double>::Zero(out, in);
  Vec<double> b = rng.normal<double>(out, 1), db = Vec<double>::Zero(out);
  RowMajor<double> Wr = W, dWr = dW;
  Vec<double> br = b, dbr = db;
  kfopt::KfacOptions o;
  o.learning_rate = 0.2;
  o.damping = 0.1;
  kfopt::Kfac<double> reference(o), other(o);
  reference.add_recurrent_layer("rnn", W, dW, b, db, {kfopt::RecurrentApproximation::Option2});
  Eigen::Map<RowMajor<double>> w_map(Wr.data(), out, in), dw_map(dWr.data(), out, in);
  other.add_recurrent_layer("rnn", kfopt::ParameterBlock<double>::view("w", w_map, dw_map),
                            kfopt::ParameterBlock<double>::view("b", br, dbr),
                            {kfopt::RecurrentApproximation::Option2});
  for (int t = 0; t < 5; ++t) {
    const Mat<double> a = rng.normal<double>(T * m, in), g = rng.normal<double>(T * m, out);
    const Eigen::VectorXi lengths = Eigen::VectorXi::Constant(m, T);
    REQUIRE(reference.record_sequence_statistics(0, a, g, lengths) == kfopt::Status::Success);
    REQUIRE(other.record_sequence_statistics(0, a, g, lengths) == kfopt::Status::Success);
    dW = rng.normal<double>(out, in);
    db = rng.normal<double>(out, 1);
    dWr = dW;
    dbr = db;
    REQUIRE(reference.step() == kfopt::Status::Success);
    REQUIRE(other.step() == kfopt::Status::Success);
    INFO("step " << t);
    REQUIRE(Mat<double>(Wr) == W);
    REQUIRE(br == b);
  }
}

TEST_CASE("KroneckerFilter and Adam over row-major storage take the same steps",
          "[optim][storage]") {
  Rng rng(5);
  Mat<double> W = rng.normal<double>(3, 4), dW = Mat<double>::Zero(3, 4);
  std::vector<double> w = row_major_copy(W), dw(12);
  kfopt::KroneckerFilter<double> reference(kfopt::KroneckerFilterOptions::whitening(0.05, 0.3));
  kfopt::KroneckerFilter<double> other(kfopt::KroneckerFilterOptions::whitening(0.05, 0.3));
  reference.add_dense_layer("fc", W, dW);
  other.add_dense_layer("fc", kfopt::ParameterBlock<double>::row_major("w", w.data(), dw.data(), 3, 4));
  for (int t = 0; t < 6; ++t) {
    const Mat<double> a = rng.normal<double>(5, 4), g = rng.normal<double>(5, 3);
    REQUIRE(reference.record_statistics(0, a, g) == kfopt::Status::Success);
    REQUIRE(other.record_statistics(0, a, g) == kfopt::Status::Success);
    dW = rng.normal<double>(3, 4);
    assign_row_major(dw, dW);
    REQUIRE(reference.step() == kfopt::Status::Success);
    REQUIRE(other.step() == kfopt::Status::Success);
    INFO("step " << t);
    REQUIRE(from_row_major(w, 3, 4) == W);
  }

  // Adam: element-wise, so a row-major view is stepped in storage order.
  Mat<double> V = rng.normal<double>(3, 4), dV = Mat<double>::Zero(3, 4);
  RowMajor<double> Vr = V, dVr = dV;
  kfopt::ParameterSet<double> p1, p2;
  p1.add("v", V, dV);
  p2.add(kfopt::ParameterBlock<double>::view("v", Vr, dVr));
  kfopt::Adam<double> a1(p1), a2(p2);
  for (int t = 0; t < 4; ++t) {
    dV = rng.normal<double>(3, 4);
    dVr = dV;
    REQUIRE(a1.step() == kfopt::Status::Success);
    REQUIRE(a2.step() == kfopt::Status::Success);
    REQUIRE(Mat<double>(Vr) == V);
  }
}

TEST_CASE("Registration refuses strided views, mismatched gradients and biases, naming them",
          "[optim][storage]") {
  RowMajor<double> M = RowMajor<double>::Zero(4, 6), dM = M;
  // Three columns of a row-major matrix are not contiguous.
  CHECK_THROWS_WITH(kfopt::ParameterBlock<double>::view("w", M.leftCols(3), dM.leftCols(3)),
                    Catch::Contains("'w' is not contiguous"));
  // Whole rows of it are.
  auto rows = kfopt::ParameterBlock<double>::view("w", M.topRows(2), dM.topRows(2));
  CHECK(rows.rows() == 2);
  CHECK(rows.cols() == 6);
  CHECK(rows.is_row_major());
  CHECK_THROWS_AS(kfopt::ParameterBlock<double>::view("w", M, dM.topRows(3)), kfopt::ShapeError);
  std::vector<double> w(12), dw(12), b(4), db(4);
  kfopt::Kfac<double> kfac;
  CHECK_THROWS_WITH(
      kfac.add_dense_layer("fc", kfopt::ParameterBlock<double>::row_major("w", w.data(), dw.data(), 3, 4),
                           kfopt::ParameterBlock<double>("b", b.data(), db.data(), 4, 1)),
      Catch::Contains("kfopt::Kfac::add_dense_layer (layer 'fc'): W is 3x4 but b is 4x1"));
  CHECK(kfac.num_layers() == 0);
  CHECK_THROWS_AS(kfopt::ParameterBlock<double>::row_major("w", nullptr, dw.data(), 3, 4),
                  kfopt::InvalidInputError);
}
