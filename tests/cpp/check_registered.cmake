# cmake -DTEST_EXE=<ghostkernels_cpp_tests> -DEXPECTED=<a;b;...> -P check_registered.cmake
# Fails when the executable's `--list` differs from the ctest names in tests/cpp/CMakeLists.txt.
execute_process(COMMAND "${TEST_EXE}" --list OUTPUT_VARIABLE listed RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${TEST_EXE} --list failed with ${rc}")
endif()
string(STRIP "${listed}" listed)
string(REPLACE "\n" ";" listed "${listed}")
list(SORT listed)
set(expected ${EXPECTED})
list(SORT expected)
if(NOT listed STREQUAL expected)
  message(FATAL_ERROR "C++ test cases (${listed}) differ from the ctest names (${expected}); "
                      "update GK_CPP_TESTS in tests/cpp/CMakeLists.txt")
endif()
