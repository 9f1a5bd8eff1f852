// CPU feature detection. __builtin_cpu_supports is used where the compiler knows the feature
// name, because it also checks that the OS saves the wider register state; otherwise we read
// CPUID and XCR0 ourselves. Non-x86 machines report every x86 feature as false.
#include "cpu/cpu_features.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define ZSQ_X86_GNU 1
#include <cpuid.h>
#endif

namespace zsq {
namespace cpu {
namespace {

#ifdef ZSQ_X86_GNU

// XCR0 bits the OS must enable before AVX (XMM|YMM) or AVX-512 (plus opmask|ZMM_Hi256|Hi16_ZMM)
// registers may be used.
constexpr unsigned long long kXcr0Avx = 0x6;
constexpr unsigned long long kXcr0Avx512 = 0xE6;

bool os_saves(unsigned long long mask) {
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  const bool osxsave = (ecx >> 27) & 1u;
  if (!osxsave) return false;
  unsigned int xcr0_lo = 0, xcr0_hi = 0;
  // xgetbv with ecx = 0, spelled as bytes so no -mxsave flag is needed.
  __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  const unsigned long long xcr0 = (static_cast<unsigned long long>(xcr0_hi) << 32) | xcr0_lo;
  return (xcr0 & mask) == mask;
}

// CPUID leaf 7, given subleaf: returns false if the leaf does not exist.
bool cpuid_leaf7(unsigned int subleaf, unsigned int regs[4]) {
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, subleaf, regs[0], regs[1], regs[2], regs[3]);
  return true;
}

[[maybe_unused]] bool cpuid_avx512_vnni() {
  unsigned int r[4] = {0, 0, 0, 0};
  return cpuid_leaf7(0, r) && ((r[2] >> 11) & 1u) && os_saves(kXcr0Avx512);  // ECX bit 11
}

[[maybe_unused]] bool cpuid_avx_vnni() {
  unsigned int r[4] = {0, 0, 0, 0};
  return cpuid_leaf7(1, r) && ((r[0] >> 4) & 1u) && os_saves(kXcr0Avx);  // EAX bit 4
}

#endif  // ZSQ_X86_GNU

}  // namespace

CpuFeatures query_cpu_features() {
  CpuFeatures f;
#ifdef ZSQ_X86_GNU
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  // GCC knows "avx512vnni" since 8 and "avxvnni" since 11; clang's name list differs by
  // version, so clang always takes the CPUID path for these two.
#if !defined(__clang__) && __GNUC__ >= 8
  f.avx512_vnni = __builtin_cpu_supports("avx512vnni");
#else
  f.avx512_vnni = cpuid_avx512_vnni();
#endif
#if !defined(__clang__) && __GNUC__ >= 11
  f.avx_vnni = __builtin_cpu_supports("avxvnni");
#else
  f.avx_vnni = cpuid_avx_vnni();
#endif
#endif  // ZSQ_X86_GNU

#ifdef _OPENMP
  f.openmp = true;
  f.max_threads = omp_get_max_threads();
#endif
  return f;
}

}  // namespace cpu
}  // namespace zsq
