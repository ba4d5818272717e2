// Run-time choice of the ISA level whose kernels run (isa.h). Compiled for the baseline target
// (no ISA-specific instructions): it runs on every CPU, and decides which of the levels built
// into this extension (setup.py: ESR_CPU_HAVE_<level>) this CPU can run.
//
// The CPU's level: CPUID for the instructions and XGETBV for the register state the OS saves
// (an OS that does not enable AVX-512 state makes AVX-512 instructions fault even on a CPU that
// has them). ESR_CPU_ISA=baseline|avx2|avx512|avx512_bf16|amx forces a level at or below the
// CPU's (tests, benchmarks); a higher one, or an unknown name, is an error raised by every op
// (and shown by `esr backends`), never an illegal instruction.
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <string>
#include <vector>

#include "isa.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define ESR_X86 1
#endif

namespace esr_cpu {

// Generic out-of-line copies of inline ATen helpers that a level's code may leave out of line
// (GCC decides per calling function): the linker keeps the first copy of a weak symbol and
// generic objects link first (setup.py), so every level calls one without ISA instructions
// (tests/kernels/test_cpu_isa.py checks the built library). Taking the address emits the copy.
__attribute__((used)) at::TensorBase (at::TensorBase::*const kKeepContiguous)(c10::MemoryFormat) const =
    &at::TensorBase::contiguous;

namespace {

const char* const kLevelNames[] = {"baseline", "avx2", "avx512", "avx512_bf16", "amx"};
constexpr int kNumLevels = 5;

#if defined(ESR_X86)
uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}
#endif

int detect_cpu_level() {
#if defined(ESR_X86)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return ESR_LEVEL_BASELINE;
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12), f16c = c & (1u << 29);
  if (!osxsave || !avx) return ESR_LEVEL_BASELINE;
  const uint64_t xcr0 = xgetbv0();
  if ((xcr0 & 0x6) != 0x6) return ESR_LEVEL_BASELINE;  // SSE and AVX state
  if (__get_cpuid_max(0, nullptr) < 7) return ESR_LEVEL_BASELINE;
  __cpuid_count(7, 0, a, b, c, d);
  const unsigned max_subleaf = a, ebx7 = b, edx7 = d;
  if (!(ebx7 & (1u << 5)) || !fma || !f16c) return ESR_LEVEL_BASELINE;
  const bool avx512 = (ebx7 & (1u << 16)) && (ebx7 & (1u << 17)) && (ebx7 & (1u << 30)) && (ebx7 & (1u << 31));
  if (!avx512 || (xcr0 & 0xE0) != 0xE0) return ESR_LEVEL_AVX2;  // F DQ BW VL; opmask and ZMM state
  if (max_subleaf < 1) return ESR_LEVEL_AVX512;
  __cpuid_count(7, 1, a, b, c, d);
  if (!(a & (1u << 5))) return ESR_LEVEL_AVX512;  // AVX512_BF16
  const bool amx = (edx7 & (1u << 22)) && (edx7 & (1u << 24)) && (edx7 & (1u << 25));  // BF16 TILE INT8
  const uint64_t tile_state = (1ull << 17) | (1ull << 18);                              // XTILECFG XTILEDATA
  return amx && (xcr0 & tile_state) == tile_state ? ESR_LEVEL_AMX : ESR_LEVEL_AVX512_BF16;
#else
  return ESR_LEVEL_BASELINE;
#endif
}

// The levels built into this extension, ascending.
std::vector<const KernelTable*> compiled_tables() {
  std::vector<const KernelTable*> t;
#if defined(ESR_CPU_HAVE_baseline)
  t.push_back(&baseline::kernel_table());
#endif
#if defined(ESR_CPU_HAVE_avx2)
  t.push_back(&avx2::kernel_table());
#endif
#if defined(ESR_CPU_HAVE_avx512)
  t.push_back(&avx512::kernel_table());
#endif
#if defined(ESR_CPU_HAVE_avx512_bf16)
  t.push_back(&avx512_bf16::kernel_table());
#endif
#if defined(ESR_CPU_HAVE_arch)
  t.push_back(&arch::kernel_table());
#endif
  return t;
}

struct Selection {
  const KernelTable* table = nullptr;
  int cpu_level = ESR_LEVEL_BASELINE;
  std::string requested;  // ESR_CPU_ISA as given ("" if unset)
  std::string compiled;   // "baseline,avx2,avx512"
  std::string error;      // why no table runs ("" if one does)
};

Selection select() {
  Selection s;
  s.cpu_level = detect_cpu_level();
  const std::vector<const KernelTable*> tables = compiled_tables();
  for (const KernelTable* t : tables) s.compiled += (s.compiled.empty() ? "" : ",") + std::string(t->name);
  const char* env = std::getenv("ESR_CPU_ISA");
  std::string req = env ? env : "";
  for (char& ch : req) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  s.requested = req;
  int target = s.cpu_level;
  if (!req.empty() && req != "auto") {
    int level = -1;
    for (int i = 0; i < kNumLevels; ++i)
      if (req == kLevelNames[i]) level = i;
    if (level < 0) {
      s.error = "ESR_CPU_ISA=" + req + " is not a level: use auto, baseline, avx2, avx512, avx512_bf16 or amx";
      return s;
    }
    if (level > s.cpu_level) {
      s.error = "ESR_CPU_ISA=" + req + " asks for more than this CPU has (its highest level is " +
                kLevelNames[s.cpu_level] + "): a level can only be forced down";
      return s;
    }
    if (tables.size() == 1 && std::string(tables[0]->name) == "arch") {
      s.error = "ESR_CPU_ISA=" + req + ": this extension was built for one CPU (ESR_CPU_ARCH) and has one code "
                "path; forcing a level needs the default build";
      return s;
    }
    target = level;
  }
  for (const KernelTable* t : tables)
    if (std::string(t->name) == "arch" || t->level <= target) s.table = t;
  if (s.table == nullptr)
    s.error = std::string("no kernels of this extension run at ") + kLevelNames[target] + " (built: " +
              s.compiled + ")";
  else if (std::string(s.table->name) == "arch" && s.table->level > s.cpu_level)
    s.error = std::string("this extension was built (ESR_CPU_ARCH) for ") + kLevelNames[s.table->level] +
              " and this CPU has only " + kLevelNames[s.cpu_level] + ": rebuild without ESR_CPU_ARCH";
  if (!s.error.empty()) s.table = nullptr;
  return s;
}

const Selection& selection() {
  static const Selection s = select();
  return s;
}

}  // namespace

const KernelTable& kernels() {
  const Selection& s = selection();
  TORCH_CHECK(s.table != nullptr, "esr_kernels CPU extension: ", s.error);
  return *s.table;
}

// ["running=avx512", "cpu=avx512_bf16", "compiled=baseline,avx2,avx512", "requested=", "error="]
std::vector<std::string> cpu_isa_info() {
  const Selection& s = selection();
  return {std::string("running=") + (s.table ? s.table->name : ""),
          std::string("running_level=") + (s.table ? kLevelNames[s.table->level] : ""),
          std::string("cpu=") + kLevelNames[s.cpu_level],
          "compiled=" + s.compiled,
          "requested=" + s.requested,
          "error=" + s.error};
}

bool conv_engine_available() { return kernels().conv_engine; }

namespace {
std::atomic<int64_t> g_bf16_gemm{kBf16GemmOwn};
}
int64_t bf16_gemm() { return g_bf16_gemm.load(std::memory_order_relaxed); }
void set_bf16_gemm(int64_t kind) {
  TORCH_CHECK(kind == kBf16GemmOwn || kind == kBf16GemmBrgemm, "set_bf16_gemm: 0 (own) or 1 (brgemm), got ", kind);
  g_bf16_gemm.store(kind, std::memory_order_relaxed);
}

}  // namespace esr_cpu
