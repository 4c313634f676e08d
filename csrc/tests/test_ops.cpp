// C++ checks of the CPU kernels through the dispatcher, against plain ATen expressions.
// Built by CMakeLists.txt (not by pip); run with ctest or ./tiue_ops_test.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <tuple>
#include <vector>

namespace {

int failures = 0;

void expect_close(const at::Tensor& actual, const at::Tensor& expected, const char* what) {
  const bool ok = at::allclose(actual.to(at::kDouble), expected.to(at::kDouble), 1e-4, 1e-5);
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  failures += ok ? 0 : 1;
}

void test_ddim_combine() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("tiue::ddim_combine_native", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::ArrayRef<double>,
                                  double, at::ScalarType)>();
  const at::Tensor noise = at::randn({2, 4, 9, 7});
  const at::Tensor eps = at::randn({2, 3, 4, 9, 7}).transpose(0, 1);  // strided eps[k]
  const std::vector<double> coeffs = {0.5, 0.25, -1.0, 2.0};
  at::Tensor expected = noise * coeffs[0];
  for (int64_t k = 0; k < 3; ++k) expected = expected + eps[k] * coeffs[k + 1];
  expect_close(op.call(noise, eps, coeffs, 2.0, at::kFloat), expected * 2.0, "ddim_combine strided");
  expect_close(op.call(noise, eps.contiguous(), coeffs, 2.0, at::kFloat), expected * 2.0,
               "ddim_combine contiguous");
}

void test_gaussian_kl_stats() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("tiue::gaussian_kl_stats_native", "")
                .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&)>();
  const at::Tensor x = at::randn({5, 10000}) * 0.01 + 1000.0;
  const auto [kl, mean, var] = op.call(x);
  const at::Tensor x64 = x.to(at::kDouble);
  const at::Tensor var64 = x64.var(1, /*unbiased=*/true), mean64 = x64.mean(1);
  expect_close(mean, mean64, "gaussian_kl mean");
  expect_close(var, var64, "gaussian_kl var (large offset)");
  expect_close(kl, -0.5 * (1.0 + var64.log() - mean64 * mean64 - var64), "gaussian_kl kl");
}

}  // namespace

int main() {
  at::manual_seed(0);
  test_ddim_combine();
  test_gaussian_kl_stats();
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
