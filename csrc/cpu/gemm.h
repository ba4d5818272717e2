// The conv engine's float32 GEMM at the level being compiled: gemm_8rows and gemm_rows (and
// kRows, kLanes) from gemm_avx512.h or gemm_avx2.h. Levels below AVX2 have no engine (the
// Python side runs oneDNN's convolutions there).
#pragma once

#include "gemm_avx2.h"
#include "gemm_avx512.h"

#if ESR_CPU_LEVEL >= ESR_LEVEL_AVX2
#define ESR_HAVE_CONV_ENGINE 1
#endif
