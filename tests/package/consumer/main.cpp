// Consumer smoke program: includes the umbrella header, checks one Kronecker identity and
// one K-FAC step against a dense computation. Built against kfopt::kfopt (header-only) and
// against kfopt::kfopt_compiled (precompiled instantiations, KFOPT_COMPILED defined).
#include <kfopt/kfopt.hpp>

#include <cstdio>

#if defined(KFOPT_CONSUMER_EXPECT_COMPILED) && !defined(KFOPT_COMPILED)
#error "linked to kfopt::kfopt_compiled but KFOPT_COMPILED is not defined"
#endif

int main() {
  Eigen::MatrixXd B = Eigen::MatrixXd::Random(3, 3);
  Eigen::MatrixXd C = Eigen::MatrixXd::Random(2, 2);
  Eigen::MatrixXd X = Eigen::MatrixXd::Random(2, 3);
  Eigen::MatrixXd Y(2, 3);
  kfopt::kron_matvec(B, C, X, Y);
  const double err = (Y - C * X * B.transpose()).norm();

  // One K-FAC step on a layer without bias, no momentum, no clipping: W ← W − η (G + δ_G I)⁻¹
  // ∇W (A + δ_A I)⁻¹ with A = aᵀa/k, G = gᵀg/k and π-damping δ_A = π√λ, δ_G = √λ/π.
  const int in = 4, out = 3, k = 16;
  Eigen::MatrixXd W = Eigen::MatrixXd::Random(out, in), dW = Eigen::MatrixXd::Random(out, in);
  const Eigen::MatrixXd W0 = W;
  const Eigen::MatrixXd a = Eigen::MatrixXd::Random(k, in), g = Eigen::MatrixXd::Random(k, out);
  kfopt::KfacOptions options;
  options.learning_rate = 0.1;
  options.momentum = 0.0;
  options.kl_clip = 0.0;
  options.damping = 1e-2;
  kfopt::Kfac<double> kfac(options);
  const auto id = kfac.add_dense_layer("layer", W, dW);
  if (kfac.record_statistics(id, a, g) != kfopt::Status::Success) return 1;
  if (kfac.step() != kfopt::Status::Success) return 1;
  const Eigen::MatrixXd A = a.transpose() * a / k, G = g.transpose() * g / k;
  const double pi = std::sqrt((A.trace() / in) / (G.trace() / out));
  const double root = std::sqrt(options.damping);
  const Eigen::MatrixXd Ad = A + pi * root * Eigen::MatrixXd::Identity(in, in);
  const Eigen::MatrixXd Gd = G + root / pi * Eigen::MatrixXd::Identity(out, out);
  const Eigen::MatrixXd expected = W0 - options.learning_rate * Gd.inverse() * dW * Ad.inverse();
  const double step_err = (W - expected).norm() / expected.norm();

  std::printf("kfopt %s consumer (%s): |kron error| = %g, K-FAC step relative error = %g\n",
              KFOPT_VERSION_STRING,
#ifdef KFOPT_COMPILED
              "kfopt_compiled",
#else
              "header-only",
#endif
              err, step_err);
  return err < 1e-12 && step_err < 1e-10 ? 0 : 1;
}
