// Output buffers of the CPU kernels, recycled by size.
//
// Why: a 256x256x48 float32 feature map is 12 MB. glibc serves such blocks from mmap or trims
// them back to the OS when freed, so every fresh allocation pays a page fault per 4 KB on first
// touch: measured ~23,000 faults and ~50 ms of a 230 ms RLFN forward. The fused forward asks
// for the same few sizes on every call; keeping freed blocks (up to a byte limit) removes the
// faults, as PyTorch's CUDA caching allocator does on GPUs. The limit is 1024 MB until
// set_cache_limit: Python parses ESR_CPU_CACHE_MB (esr_kernels/extensions.py) and sets it when it
// loads the extension (0 disables caching); torch.ops.esr_native.empty_cache() releases the blocks.
#pragma once

#include <ATen/ATen.h>

namespace esr_cpu {

// An uninitialised float32 channels_last (N, C, H, W) tensor whose block returns to the cache.
at::Tensor cached_empty_nhwc(int64_t n, int64_t c, int64_t h, int64_t w, const at::Tensor& like);

// An uninitialised contiguous float32 tensor of the given sizes, from the cache.
at::Tensor cached_empty(at::IntArrayRef sizes, const at::Tensor& like);

// Frees every cached block and the brgemm operands kept per weight (brgemm_cache.h); returns
// the bytes released.
int64_t empty_cache();

// The cache's byte limit (negative: no limit), and the limit now (-1: none).
void set_cache_limit(int64_t bytes);
int64_t cache_limit();

}  // namespace esr_cpu
