// A minimal test harness for the C++ tests (no GoogleTest: nothing is fetched at build time).
//
// GK_TEST(name) { ... } registers a test; main.cpp runs the ones named on the command line (all without arguments)
// and ctest runs each name as its own test. Checks throw gktest::Failure, which fails only the current test;
// gktest::Skip skips it.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>

namespace gktest {

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Thrown by a test that cannot run here (e.g. no GPU); ctest reports it as skipped (exit code kSkipExitCode).
struct Skip : std::runtime_error {
  using std::runtime_error::runtime_error;
};
constexpr int kSkipExitCode = 77;

using TestFn = void (*)();
std::map<std::string, TestFn>& registry();

struct Registrar {
  Registrar(const char* name, TestFn fn) { registry()[name] = fn; }
};

#define GK_TEST(name)                                                   \
  static void name();                                                   \
  static const ::gktest::Registrar name##_registrar_(#name, &name);     \
  static void name()

#define GK_CHECK(cond, what)                                                                       \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      std::ostringstream gk_msg_;                                                                  \
      gk_msg_ << __FILE__ << ":" << __LINE__ << ": check failed: " #cond " (" << what << ")";      \
      throw ::gktest::Failure(gk_msg_.str());                                                      \
    }                                                                                              \
  } while (0)

// |actual - expected| <= atol + rtol * |expected| elementwise, with the worst element in the message. `expected`
// is usually float64; `actual` is compared in float64.
void check_close(const at::Tensor& actual, const at::Tensor& expected, double rtol, double atol,
                 const std::string& what);

// Runs f and checks that it throws exactly an E (or a subclass) whose message contains `substring`.
template <typename E, typename F>
void check_throws(F&& f, const std::string& substring, const std::string& what) {
  try {
    f();
  } catch (const E& e) {
    const std::string msg = e.what();
    if (msg.find(substring) == std::string::npos) {
      throw Failure(what + ": the error message does not mention '" + substring + "': " + msg);
    }
    return;
  } catch (const std::exception& e) {
    throw Failure(what + ": threw the wrong exception type: " + e.what());
  }
  throw Failure(what + ": did not throw");
}

}  // namespace gktest
