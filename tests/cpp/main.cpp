// Runs the registered C++ tests: `ghostkernels_cpp_tests [name...]` (all tests without arguments, `--list` to list).
// Exit status: 0 when every selected test passed (or some skipped), kSkipExitCode when all were skipped, 1 when
// one failed or a requested name does not exist.
#include <ATen/ATen.h>

#include <cstring>
#include <iostream>
#include <vector>

#include "harness.h"

namespace gktest {

std::map<std::string, TestFn>& registry() {
  static std::map<std::string, TestFn> tests;
  return tests;
}

void check_close(const at::Tensor& actual, const at::Tensor& expected, double rtol, double atol,
                 const std::string& what) {
  GK_CHECK(actual.sizes() == expected.sizes(),
           what << ": shape " << actual.sizes() << " != expected " << expected.sizes());
  const at::Tensor a = actual.to(at::kDouble), e = expected.to(at::kDouble);
  GK_CHECK(a.isfinite().all().item<bool>(), what << ": non-finite values");
  const at::Tensor excess = (a - e).abs() - (atol + rtol * e.abs());
  const int64_t worst = excess.flatten().argmax().item<int64_t>();
  const double worst_excess = excess.flatten()[worst].item<double>();
  GK_CHECK(worst_excess <= 0.0, what << ": mismatch at flat index " << worst << ": got "
                                     << a.flatten()[worst].item<double>() << ", expected "
                                     << e.flatten()[worst].item<double>() << " (rtol=" << rtol
                                     << ", atol=" << atol << ")");
}

}  // namespace gktest

int main(int argc, char** argv) {
  auto& tests = gktest::registry();
  if (argc == 2 && std::strcmp(argv[1], "--list") == 0) {
    for (const auto& [name, fn] : tests) std::cout << name << "\n";
    return 0;
  }
  std::vector<std::string> selected;
  for (int i = 1; i < argc; ++i) selected.emplace_back(argv[i]);
  if (selected.empty()) {
    for (const auto& [name, fn] : tests) selected.push_back(name);
  }
  int failed = 0, skipped = 0;
  for (const auto& name : selected) {
    auto it = tests.find(name);
    if (it == tests.end()) {
      std::cerr << "UNKNOWN " << name << " (see --list)\n";
      ++failed;
      continue;
    }
    try {
      it->second();
      std::cout << "PASS " << name << "\n";
    } catch (const gktest::Skip& e) {
      std::cout << "SKIP " << name << ": " << e.what() << "\n";
      ++skipped;
    } catch (const std::exception& e) {
      std::cout << "FAIL " << name << ": " << e.what() << "\n";
      ++failed;
    }
  }
  std::cout << (selected.size() - failed - skipped) << " passed, " << skipped << " skipped, " << failed
            << " failed\n";
  if (failed > 0) return 1;
  return skipped == static_cast<int>(selected.size()) ? gktest::kSkipExitCode : 0;
}
