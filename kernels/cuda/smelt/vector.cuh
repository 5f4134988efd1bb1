// smelt device library: vector accesses. A `vec<T, N>` is N elements aligned to their total
// size, so one load or store of it is one N·sizeof(T)-byte access (128-bit for 4 floats or
// 8 halves); its elements stay in registers.
#pragma once

namespace smelt {

template <typename T, int N> struct alignas(sizeof(T) * N) vec {
    T v[N];
};

}  // namespace smelt
