// TIUE_MULTIVERSION: compile a hot loop twice, for x86-64-v3 (AVX2, FMA, F16C) and for the
// baseline ISA, and let the loader pick the one the running CPU supports (GCC function
// multiversioning). One build is then both portable and uses the wide vectors where they exist.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define TIUE_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define TIUE_MULTIVERSION
#endif
