// ParameterBlock / ParameterSet: views of caller storage, shape checks, resize detection.
#include <catch2/catch.hpp>
#include <kfopt/core/parameter_block.hpp>

TEST_CASE("parameter blocks view the caller's storage without copying", "[core][params]") {
  Eigen::MatrixXd W = Eigen::MatrixXd::Ones(3, 2), dW = Eigen::MatrixXd::Zero(3, 2);
  Eigen::VectorXd b = Eigen::VectorXd::Ones(3), db = Eigen::VectorXd::Zero(3);
  kfopt::ParameterSet<double> params;
  auto& wblock = params.add("W", W, dW);
  params.add("b", b, db);
  CHECK(params.size() == 2);
  CHECK(params.total_size() == 9);
  CHECK(wblock.value().data() == W.data());
  CHECK(wblock.gradient().data() == dW.data());
  CHECK(params[1].rows() == 3);
  CHECK(params[1].cols() == 1);
  params[0].value()(2, 1) = 5.0;  // writes through to W
  CHECK(W(2, 1) == 5.0);
  dW(0, 0) = 2.0;  // gradient changes are seen
  CHECK(params[0].gradient()(0, 0) == 2.0);
  CHECK(params.index_of("b") == 1);
  CHECK(params.gradients_finite());
  db(1) = std::numeric_limits<double>::infinity();
  CHECK_FALSE(params.gradients_finite());
}

TEST_CASE("parameter blocks reject bad registrations and detect a resized matrix",
          "[core][params][errors]") {
  Eigen::MatrixXd W = Eigen::MatrixXd::Ones(3, 2), dW = Eigen::MatrixXd::Zero(2, 3);
  kfopt::ParameterSet<double> params;
  try {
    params.add("fc1.W", W, dW);
    FAIL("expected ShapeError");
  } catch (const kfopt::ShapeError& e) {
    const std::string msg = e.what();
    CHECK(msg.find("fc1.W") != std::string::npos);
    CHECK(msg.find("2x3") != std::string::npos);
    CHECK(msg.find("3x2") != std::string::npos);
  }
  dW.resize(3, 2);
  params.add("fc1.W", W, dW);
  CHECK_THROWS_AS(params.add("fc1.W", W, dW), kfopt::InvalidInputError);  // duplicate name
  CHECK_THROWS_AS(params.index_of("nope"), kfopt::InvalidInputError);
  W.resize(4, 2);
  CHECK_THROWS_WITH(params[0].value(), Catch::Contains("fc1.W") && Catch::Contains("4x2"));
  double raw[4] = {0, 0, 0, 0};
  CHECK_THROWS_AS(params.add("raw", nullptr, raw, 2, 2), kfopt::InvalidInputError);
}
