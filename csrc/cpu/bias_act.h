// The epilogue of the CPU convolutions, run on a block of output pixels while it is in cache:
//   y = act(y + bias [+ add, ADD_BEFORE_ACT]) [+ add, ADD_AFTER_ACT]
#pragma once

#include "common.h"

namespace esr_cpu {

enum AddMode : int64_t { ADD_NONE = 0, ADD_AFTER_ACT = 1, ADD_BEFORE_ACT = 2 };

// `pixels` consecutive channels_last pixels of C channels at y (and at add, same layout).
template <int64_t ACT>
ESR_INLINE void bias_act_pixels(float* __restrict y, const float* __restrict add, int64_t pixels, int64_t C,
                                const float* __restrict bias, int64_t add_mode) {
  for (int64_t p = 0; p < pixels; ++p) {
    float* yp = y + p * C;
    const float* ap = add ? add + p * C : nullptr;
    if (add_mode == ADD_BEFORE_ACT) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yp[c] = activate<ACT>(yp[c] + bias[c] + ap[c]);
    } else if (add_mode == ADD_AFTER_ACT) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yp[c] = activate<ACT>(yp[c] + bias[c]) + ap[c];
    } else {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yp[c] = activate<ACT>(yp[c] + bias[c]);
    }
  }
}

}  // namespace esr_cpu
