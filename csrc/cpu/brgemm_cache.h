// The brgemm B operands of each bf16 weight, made once per weight tensor rather than once per op
// call (issue 29 item 1: "weight packing done once"). On AMX oneDNN wants B repacked
// (cpublas::pack, gemm_bf16.h's BrgemmWeights); the ops see only their packed weight tensor, so
// the packs are kept here, keyed by that tensor (its TensorImpl, version counter and the
// operands' geometry), the tensor held by its entry so that its address cannot be reused while
// the entry lives. An in-place change of the weight bumps its version: a new pack. At most
// kBrgemmCacheEntries entries (oldest out first); torch.ops.esr_native.empty_cache() releases them.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <utility>
#include <vector>

namespace esr_cpu {

constexpr size_t kBrgemmCacheEntries = 128;  // a model's bf16 GEMM weights are a few dozen

struct BrgemmKey {
  int level;  // the ISA level whose BrgemmWeights type made the entry (one type per level)
  int64_t ldn, n_cols;
  std::vector<std::pair<int64_t, int64_t>> mats;
  bool operator==(const BrgemmKey& o) const {
    return level == o.level && ldn == o.ldn && n_cols == o.n_cols && mats == o.mats;
  }
};

// The entry for (w, key), made by `make` (the operands and their bytes) when there is none or
// w changed since; shared with the caller, so eviction never frees operands in use.
std::shared_ptr<const void> brgemm_cached(const at::Tensor& w, const BrgemmKey& key,
                                          const std::function<std::pair<std::shared_ptr<const void>, int64_t>()>& make);

int64_t brgemm_cache_entries();
// Drops every entry; returns the bytes of packed operands released (entries still in use by a
// running op are freed when it ends).
int64_t brgemm_cache_clear();

}  // namespace esr_cpu
