#include "buffer_cache.h"

#include "brgemm_cache.h"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <list>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace esr_cpu {

namespace {

// Freed blocks by size; over the byte limit, the least recently freed go back to the OS (so
// that blocks of sizes no longer asked for, e.g. from an earlier image size, do not hold the
// budget while the current sizes fault on every call).
class BufferCache {
 public:
  static constexpr int64_t kNoLimit = std::numeric_limits<int64_t>::max();

  // The limit in bytes, negative for none. Lowering it frees the oldest blocks at once.
  void set_limit(int64_t bytes) {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lock(mu_);
      limit_ = bytes < 0 ? kNoLimit : bytes;
      trim_locked(evicted);
    }
    for (void* q : evicted) std::free(q);  // outside the lock
  }

  // The limit in bytes, -1 for none.
  int64_t limit() {
    std::lock_guard<std::mutex> lock(mu_);
    return limit_ == kNoLimit ? -1 : limit_;
  }

  void* take(int64_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = by_size_.find(bytes);
      if (it != by_size_.end() && !it->second.empty()) {
        auto entry = it->second.back();
        it->second.pop_back();
        void* p = entry->ptr;
        lru_.erase(entry);
        cached_ -= bytes;
        return p;
      }
    }
    void* p = nullptr;
    TORCH_CHECK(posix_memalign(&p, 64, static_cast<size_t>(bytes)) == 0 && p,
                "esr_native: out of memory allocating ", bytes, " bytes");
    return p;
  }

  void give(void* p, int64_t bytes) {
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (bytes > limit_) {
        evicted.push_back(p);
      } else {
        lru_.push_back({p, bytes});
        by_size_[bytes].push_back(std::prev(lru_.end()));
        cached_ += bytes;
        trim_locked(evicted);
      }
    }
    for (void* q : evicted) std::free(q);  // outside the lock
  }

  int64_t clear() {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Entry& e : lru_) std::free(e.ptr);
    lru_.clear();
    by_size_.clear();
    const int64_t released = cached_;
    cached_ = 0;
    return released;
  }

 private:
  struct Entry {
    void* ptr;
    int64_t bytes;
  };

  // Unlinks the least recently freed blocks until the cache fits its limit (mu_ held); the
  // caller frees them after unlocking.
  void trim_locked(std::vector<void*>& evicted) {
    while (cached_ > limit_) {
      const Entry oldest = lru_.front();
      auto& same = by_size_[oldest.bytes];
      same.erase(std::find(same.begin(), same.end(), lru_.begin()));
      lru_.pop_front();
      cached_ -= oldest.bytes;
      evicted.push_back(oldest.ptr);
    }
  }

  std::mutex mu_;
  std::list<Entry> lru_;  // least recently freed first
  std::unordered_map<int64_t, std::vector<std::list<Entry>::iterator>> by_size_;
  int64_t cached_ = 0;
  // 1024 MB until Python sets ESR_CPU_CACHE_MB's value (esr_kernels/extensions.py, the one
  // parser of that variable: the extension does not read it).
  int64_t limit_ = int64_t{1024} << 20;
};

// Leaked on purpose: tensors may be freed during interpreter shutdown, after static destructors.
BufferCache& cache() {
  static BufferCache* instance = new BufferCache();
  return *instance;
}

at::Tensor from_cache(at::IntArrayRef sizes, at::IntArrayRef strides, int64_t numel, const at::Tensor& like) {
  // Rounded up to 64 KB so that sizes differing by a few pixels share blocks.
  const int64_t bytes = ((std::max<int64_t>(numel, 1) * 4 + 65535) / 65536) * 65536;
  void* p = cache().take(bytes);
  return at::from_blob(p, sizes, strides, [bytes](void* q) { cache().give(q, bytes); },
                       like.options().dtype(at::kFloat));
}

}  // namespace

at::Tensor cached_empty_nhwc(int64_t n, int64_t c, int64_t h, int64_t w, const at::Tensor& like) {
  return from_cache({n, c, h, w}, {h * w * c, 1, w * c, c}, n * c * h * w, like);
}

at::Tensor cached_empty(at::IntArrayRef sizes, const at::Tensor& like) {
  std::vector<int64_t> strides(sizes.size());
  int64_t numel = 1;
  for (int64_t i = static_cast<int64_t>(sizes.size()) - 1; i >= 0; --i) {
    strides[i] = numel;
    numel *= sizes[i];
  }
  return from_cache(sizes, strides, numel, like);
}

// The buffers, and the brgemm operands made once per weight (brgemm_cache.h).
int64_t empty_cache() { return cache().clear() + brgemm_cache_clear(); }

void set_cache_limit(int64_t bytes) { cache().set_limit(bytes); }

int64_t cache_limit() { return cache().limit(); }

}  // namespace esr_cpu
