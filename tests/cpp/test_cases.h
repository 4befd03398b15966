// The shapes every numerical C++ test runs. Together they cover: ratio 2 and 3, k = 1, 3, 5 (k = 5 on a 4-row
// image, so the zero padding of x1 reaches across the whole image), out_channels cutting into the primary half, the
// cheap half or keeping everything (odd counts included), every activation, N > 1, channels_last input, and one
// image tall enough that the CPU kernel splits it into several row bands with halos.
#pragma once

#include <vector>

#include "reference.h"

namespace gktest {

inline const std::vector<GhostCase>& ghost_cases() {
  static const std::vector<GhostCase> cases = {
      // N  C  H   W  init mult k  out  act          channels_last
      {2, 5, 7, 6, 3, 1, 3, 6, "relu", false},
      {1, 8, 5, 5, 4, 2, 3, 11, "relu6", false},
      {2, 3, 4, 9, 5, 1, 5, 4, "silu", false},
      {1, 4, 3, 3, 2, 1, 1, 3, "hardswish", false},
      {2, 6, 6, 5, 4, 1, 3, 7, "identity", true},
      {1, 12, 10, 7, 6, 2, 5, 18, "hardswish", true},
      {1, 16, 48, 9, 8, 1, 3, 13, "relu", false},
  };
  return cases;
}

}  // namespace gktest
