// The channel counts the single-kernel ops are instantiated for (host code: the CUDA launchers,
// the torch bindings and the CPU versions share it, so both devices accept the same shapes).
// They are the three models' layers: IFADNet BSB C=36 and ESA (36, 16); RLFN ESA (46, 16);
// PFDNLite LocalAttention (48, 16). Another count is refused with a message naming these.
#pragma once

#include <cstdint>
#include <type_traits>

namespace esr_channels {

template <int V>
using Int = std::integral_constant<int, V>;

constexpr const char* kBsb = "C in {36}";
constexpr const char* kEsa = "(C, CR) in {(36, 16), (46, 16)}";
constexpr const char* kLa = "(C, CR) in {(48, 16)}";

// Each calls fn(Int<C>{}[, Int<CR>{}]) for a supported count and returns true; else false.
template <typename Fn>
bool bsb(int64_t c, Fn&& fn) {
  if (c == 36) return fn(Int<36>{}), true;
  return false;
}

template <typename Fn>
bool esa(int64_t c, int64_t cr, Fn&& fn) {
  if (c == 36 && cr == 16) return fn(Int<36>{}, Int<16>{}), true;
  if (c == 46 && cr == 16) return fn(Int<46>{}, Int<16>{}), true;
  return false;
}

template <typename Fn>
bool la(int64_t c, int64_t cr, Fn&& fn) {
  if (c == 48 && cr == 16) return fn(Int<48>{}, Int<16>{}), true;
  return false;
}

}  // namespace esr_channels
