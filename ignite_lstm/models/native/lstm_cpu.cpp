// LSTM and GRU recurrences for the CPU, loaded by ignite_lstm/native.py (and native_gru.py)
// through ctypes; also the FMA peak probe of benchmarks/bench_training.py.
//
// A plain C ABI and no PyTorch headers, so the file builds in a few seconds on
// the machine that runs it. Arrays are dense, row-major and time-major; gates are
// in PyTorch's order (i, f, g, o). Sequences are independent, so each OpenMP thread
// takes a range of rows [b0, b1) of the batch for the whole call and never waits for
// the others. Built with -fopenmp, the library uses the OpenMP runtime already loaded
// by PyTorch (same soname), so its threads are PyTorch's own intra-op threads.
//
// float uses AVX-512 where the compiler targets it (-march=native on a processor that has it
// defines __AVX512F__), else AVX2/FMA: a 16- (8-) wide exp in plain arithmetic (float rounding:
// within 4e-7 of the exact value, relative) for sigmoid and tanh, and register-blocked products
// for the small per-step products. On AVX-512 the forward step is one fused pass per tile of rows
// and 16 hidden units (the tile's four gates in registers, the cell update in the same pass, see
// `fused_step`), and the backward computes the weight gradients and the input gradient itself
// (`wgrad_block`), on its own 16-wide products, where MKL takes its AVX2 code on AMD processors.
// double uses libm and plain loops (the exactness tests run in float64), and the same
// passes as float on each build: the fused forward's packing aside, every loop structure of
// the float path is the double path's too.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ctime>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <chrono>
#include <type_traits>
#include <vector>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define IGNITE_LSTM_AVX2 1
#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define IGNITE_LSTM_AVX512 1
#endif
#endif

namespace {

// ---------------------------------------------------------------- activations

inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693145751953125f;      // Cody-Waite: ln 2 in a part exact in float ...
  r = r - n * 1.42860682030941723212e-6f;    // ... and the rest; |r| <= 0.35
  float p = 1.0f / 5040.0f;                  // e^r to degree 7: remainder < 6e-9 relative
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// tanh(x) = x (1 - x^2/3 + 2x^4/15 - 17x^6/315 + 62x^8/2835 - ...) near 0, where 2 sigmoid(2x) - 1
// would lose the relative precision of small values; the first omitted term is < 2e-8 relative at 0.25.
inline float tanh_small(float x) {
  const float x2 = x * x;
  float p = 62.0f / 2835.0f;
  p = p * x2 - 17.0f / 315.0f;
  p = p * x2 + 2.0f / 15.0f;
  p = p * x2 - 1.0f / 3.0f;
  p = p * x2 + 1.0f;
  return x * p;
}
inline float sigm(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
inline float tanh_(float x) {
  return std::fabs(x) < 0.25f ? tanh_small(x) : 2.0f / (1.0f + exp_approx(-2.0f * x)) - 1.0f;
}
inline double sigm(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_(double x) { return std::tanh(x); }

#ifdef IGNITE_LSTM_AVX2
inline __m256 exp8(__m256 x) {
  // Clamp with x as the second operand: max/min return it when either is NaN, so NaN propagates
  // (the other order would turn a NaN into -87 and hide it from TerminateOnNan).
  x = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(_mm256_set1_ps(-87.0f), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860682030941723212e-6f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
inline __m256 sigm8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}
inline __m256 tanh8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 s = _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(one, exp8(_mm256_mul_ps(_mm256_set1_ps(-2.0f), x))));
  const __m256 large = _mm256_sub_ps(s, one);
  const __m256 x2 = _mm256_mul_ps(x, x);  // the series of tanh_small for |x| < 0.25
  __m256 p = _mm256_set1_ps(62.0f / 2835.0f);
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-17.0f / 315.0f));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(2.0f / 15.0f));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-1.0f / 3.0f));
  p = _mm256_fmadd_ps(p, x2, one);
  const __m256 small = _mm256_mul_ps(x, p);
  const __m256 abs_x = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
  return _mm256_blendv_ps(large, small, _mm256_cmp_ps(abs_x, _mm256_set1_ps(0.25f), _CMP_LT_OQ));
}
#endif

#ifdef IGNITE_LSTM_AVX512
// The same functions 16 wide: the same arithmetic, so the same bits as exp8/sigm8/tanh8
// (scalef multiplies by 2^n exactly, as the exponent bits of exp8 do for n in [-126, 127]).
inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_set1_ps(88.0f), _mm512_max_ps(_mm512_set1_ps(-87.0f), x));  // NaN kept, see exp8
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723212e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}
inline __m512 sigm16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  return _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}
inline __m512 tanh16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 s = _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(one, exp16(_mm512_mul_ps(_mm512_set1_ps(-2.0f), x))));
  const __m512 large = _mm512_sub_ps(s, one);
  const __m512 x2 = _mm512_mul_ps(x, x);
  __m512 p = _mm512_set1_ps(62.0f / 2835.0f);
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(-17.0f / 315.0f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(2.0f / 15.0f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(-1.0f / 3.0f));
  p = _mm512_fmadd_ps(p, x2, one);
  const __m512 small = _mm512_mul_ps(x, p);
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(_mm512_abs_ps(x), _mm512_set1_ps(0.25f), _CMP_LT_OQ), large, small);
}
inline __mmask16 tail_mask(int n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u); }
#endif

// ---------------------------------------------------------------- matrix products
//
// The per-step products are small (rows x K times K x N, K and N a few hundred at most),
// and w is the same at every step, so it is packed once per call: column blocks of NB,
// each K x NB and contiguous, then the last N % NB columns row-major. A row stride of N
// floats would map a column block's K rows to a few L1 sets and evict it at every step.

#ifdef IGNITE_LSTM_AVX2
constexpr int NB = 16;
#else
constexpr int NB = 8;
#endif

template <typename T>
void pack(int K, int N, const T* w, T* out) {
  const int nb = N - N % NB, nt = N - nb;
  for (int n0 = 0; n0 < nb; n0 += NB)
    for (int k = 0; k < K; ++k)
      std::memcpy(out + static_cast<int64_t>(n0) * K + NB * k, w + static_cast<int64_t>(k) * N + n0, NB * sizeof(T));
  for (int k = 0; k < K; ++k)
    for (int n = 0; n < nt; ++n) out[static_cast<int64_t>(nb) * K + k * nt + n] = w[static_cast<int64_t>(k) * N + nb + n];
}

// z (rows x N, row stride ldz) += a (rows x K, row stride lda) @ w (packed K x N).
template <typename T>
void gemm_acc(int rows, int K, const T* a, int lda, const T* w, int N, T* z, int ldz) {
  const int nb = N - N % NB, nt = N - nb;
  for (int n0 = 0; n0 < nb; n0 += NB) {
    const T* wb = w + static_cast<int64_t>(n0) * K;
    for (int r = 0; r < rows; ++r) {
      T acc[NB];
      for (int j = 0; j < NB; ++j) acc[j] = z[r * ldz + n0 + j];
      for (int k = 0; k < K; ++k) {
        const T av = a[r * lda + k];
        for (int j = 0; j < NB; ++j) acc[j] += av * wb[NB * k + j];
      }
      for (int j = 0; j < NB; ++j) z[r * ldz + n0 + j] = acc[j];
    }
  }
  const T* wt = w + static_cast<int64_t>(nb) * K;
  for (int r = 0; r < rows; ++r)
    for (int k = 0; k < K; ++k) {
      const T av = a[r * lda + k];
      for (int n = 0; n < nt; ++n) z[r * ldz + nb + n] += av * wt[k * nt + n];
    }
}

#if defined(IGNITE_LSTM_AVX512)
// R rows x NBK blocks of 16 columns of z in registers across the K loop; w: NBK consecutive packed
// blocks (K x 16 each).
template <int R, int NBK>
inline void kernel512(int K, const float* a, int lda, const float* w, float* z, int ldz) {
  __m512 acc[R][NBK];
  const int64_t bs = static_cast<int64_t>(16) * K;
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int b = 0; b < NBK; ++b) acc[r][b] = _mm512_loadu_ps(z + r * ldz + 16 * b);
  for (int k = 0; k < K; ++k) {
    __m512 wv[NBK];
#pragma GCC unroll 4
    for (int b = 0; b < NBK; ++b) wv[b] = _mm512_loadu_ps(w + b * bs + 16 * k);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * lda + k]);
#pragma GCC unroll 4
      for (int b = 0; b < NBK; ++b) acc[r][b] = _mm512_fmadd_ps(av, wv[b], acc[r][b]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int b = 0; b < NBK; ++b) _mm512_storeu_ps(z + r * ldz + 16 * b, acc[r][b]);
}

// Rows in tiles of at most 6, as even as possible (20 rows: 4 x 5; 40 rows: 7 tiles of 5 or 6).
template <typename F>
inline void row_tiles(int rows, F&& tile) {
  const int tiles = (rows + 5) / 6;
  for (int t = 0, r0 = 0; t < tiles; ++t) {
    const int r1 = static_cast<int>(static_cast<int64_t>(rows) * (t + 1) / tiles);
    tile(r0, r1 - r0);
    r0 = r1;
  }
}

template <int NBK>
inline void kernel512_rows(int n, int K, const float* a, int lda, const float* w, float* z, int ldz) {
  switch (n) {
    case 6: kernel512<6, NBK>(K, a, lda, w, z, ldz); break;
    case 5: kernel512<5, NBK>(K, a, lda, w, z, ldz); break;
    case 4: kernel512<4, NBK>(K, a, lda, w, z, ldz); break;
    case 3: kernel512<3, NBK>(K, a, lda, w, z, ldz); break;
    case 2: kernel512<2, NBK>(K, a, lda, w, z, ldz); break;
    case 1: kernel512<1, NBK>(K, a, lda, w, z, ldz); break;
    default: break;
  }
}

template <>
void gemm_acc<float>(int rows, int K, const float* a, int lda, const float* w, int N, float* z, int ldz) {
  const int nb = N - N % 16, nt = N - nb;
  for (int n0 = 0; n0 < nb;) {  // 64 columns at a time (4 blocks), then what is left of the blocks
    const int blocks = std::min(4, (nb - n0) / 16);
    const float* wb = w + static_cast<int64_t>(n0) * K;
    row_tiles(rows, [&](int r0, int n) {
      const float* ar = a + static_cast<int64_t>(r0) * lda;
      float* zr = z + static_cast<int64_t>(r0) * ldz + n0;
      switch (blocks) {
        case 4: kernel512_rows<4>(n, K, ar, lda, wb, zr, ldz); break;
        case 3: kernel512_rows<3>(n, K, ar, lda, wb, zr, ldz); break;
        case 2: kernel512_rows<2>(n, K, ar, lda, wb, zr, ldz); break;
        default: kernel512_rows<1>(n, K, ar, lda, wb, zr, ldz); break;
      }
    });
    n0 += 16 * blocks;
  }
  if (nt == 0) return;
  const float* wt = w + static_cast<int64_t>(nb) * K;  // the last nt columns, K x nt row-major
  const __mmask16 m = tail_mask(nt);
  for (int r0 = 0; r0 < rows; r0 += 8) {  // 8 rows x the nt columns in registers (masked)
    const int n = std::min(8, rows - r0);
    __m512 acc[8];
    for (int r = 0; r < n; ++r) acc[r] = _mm512_maskz_loadu_ps(m, z + (r0 + r) * ldz + nb);
    for (int k = 0; k < K; ++k) {
      const __m512 wv = _mm512_maskz_loadu_ps(m, wt + k * nt);
      for (int r = 0; r < n; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[(r0 + r) * lda + k]), wv, acc[r]);
    }
    for (int r = 0; r < n; ++r) _mm512_mask_storeu_ps(z + (r0 + r) * ldz + nb, m, acc[r]);
  }
}
#elif defined(IGNITE_LSTM_AVX2)
// R rows x 16 columns of z in registers across the K loop; w one packed block (K x 16).
template <int R>
inline void kernel16(int K, const float* a, int lda, const float* w, float* z, int ldz) {
  __m256 lo[R], hi[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    lo[r] = _mm256_loadu_ps(z + r * ldz);
    hi[r] = _mm256_loadu_ps(z + r * ldz + 8);
  }
  for (int k = 0; k < K; ++k) {
    const __m256 w0 = _mm256_loadu_ps(w + 16 * k);
    const __m256 w1 = _mm256_loadu_ps(w + 16 * k + 8);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r * lda + k);
      lo[r] = _mm256_fmadd_ps(av, w0, lo[r]);
      hi[r] = _mm256_fmadd_ps(av, w1, hi[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    _mm256_storeu_ps(z + r * ldz, lo[r]);
    _mm256_storeu_ps(z + r * ldz + 8, hi[r]);
  }
}

template <>
void gemm_acc<float>(int rows, int K, const float* a, int lda, const float* w, int N, float* z, int ldz) {
  const int nb = N - N % 16, nt = N - nb;
  for (int n0 = 0; n0 < nb; n0 += 16) {  // one block stays in L1 across the row blocks
    const float* wb = w + static_cast<int64_t>(n0) * K;
    int r = 0;
    for (; r + 6 <= rows; r += 6) kernel16<6>(K, a + r * lda, lda, wb, z + r * ldz + n0, ldz);
    switch (rows - r) {
      case 5: kernel16<5>(K, a + r * lda, lda, wb, z + r * ldz + n0, ldz); break;
      case 4: kernel16<4>(K, a + r * lda, lda, wb, z + r * ldz + n0, ldz); break;
      case 3: kernel16<3>(K, a + r * lda, lda, wb, z + r * ldz + n0, ldz); break;
      case 2: kernel16<2>(K, a + r * lda, lda, wb, z + r * ldz + n0, ldz); break;
      case 1: kernel16<1>(K, a + r * lda, lda, wb, z + r * ldz + n0, ldz); break;
      default: break;
    }
  }
  const float* wt = w + static_cast<int64_t>(nb) * K;
  for (int r = 0; r < rows; ++r)
    for (int k = 0; k < K; ++k) {
      const float av = a[r * lda + k];
      for (int n = 0; n < nt; ++n) z[r * ldz + nb + n] += av * wt[k * nt + n];
    }
}
#endif

// ---------------------------------------------------------------- cell updates

// One row of H cells, columns [j0, H): gates z (4H) pre-activation in, activated out;
// c = f c_prev + i g; h = o tanh(c).
template <typename T>
inline void cell_forward_from(int j0, int H, T* z, const T* c_prev, T* c, T* h) {
  for (int j = j0; j < H; ++j) {
    const T i = sigm(z[j]), f = sigm(z[H + j]), g = tanh_(z[2 * H + j]), o = sigm(z[3 * H + j]);
    const T cn = f * c_prev[j] + i * g;
    c[j] = cn;
    h[j] = o * tanh_(cn);
    z[j] = i;
    z[H + j] = f;
    z[2 * H + j] = g;
    z[3 * H + j] = o;
  }
}

template <typename T>
inline void cell_forward(int H, T* z, const T* c_prev, T* c, T* h) {
  cell_forward_from<T>(0, H, z, c_prev, c, h);
}

#if defined(IGNITE_LSTM_AVX512)
template <>
inline void cell_forward<float>(int H, float* z, const float* c_prev, float* c, float* h) {
  for (int j = 0; j < H; j += 16) {
    const __mmask16 m = tail_mask(H - j);
    const __m512 i = sigm16(_mm512_maskz_loadu_ps(m, z + j)), f = sigm16(_mm512_maskz_loadu_ps(m, z + H + j));
    const __m512 g = tanh16(_mm512_maskz_loadu_ps(m, z + 2 * H + j)), o = sigm16(_mm512_maskz_loadu_ps(m, z + 3 * H + j));
    const __m512 cn = _mm512_fmadd_ps(f, _mm512_maskz_loadu_ps(m, c_prev + j), _mm512_mul_ps(i, g));
    _mm512_mask_storeu_ps(c + j, m, cn);
    _mm512_mask_storeu_ps(h + j, m, _mm512_mul_ps(o, tanh16(cn)));
    _mm512_mask_storeu_ps(z + j, m, i);
    _mm512_mask_storeu_ps(z + H + j, m, f);
    _mm512_mask_storeu_ps(z + 2 * H + j, m, g);
    _mm512_mask_storeu_ps(z + 3 * H + j, m, o);
  }
}
#elif defined(IGNITE_LSTM_AVX2)
template <>
inline void cell_forward<float>(int H, float* z, const float* c_prev, float* c, float* h) {
  int j = 0;
  for (; j + 8 <= H; j += 8) {
    const __m256 i = sigm8(_mm256_loadu_ps(z + j)), f = sigm8(_mm256_loadu_ps(z + H + j));
    const __m256 g = tanh8(_mm256_loadu_ps(z + 2 * H + j)), o = sigm8(_mm256_loadu_ps(z + 3 * H + j));
    const __m256 cn = _mm256_fmadd_ps(f, _mm256_loadu_ps(c_prev + j), _mm256_mul_ps(i, g));
    _mm256_storeu_ps(c + j, cn);
    _mm256_storeu_ps(h + j, _mm256_mul_ps(o, tanh8(cn)));
    _mm256_storeu_ps(z + j, i);
    _mm256_storeu_ps(z + H + j, f);
    _mm256_storeu_ps(z + 2 * H + j, g);
    _mm256_storeu_ps(z + 3 * H + j, o);
  }
  cell_forward_from<float>(j, H, z, c_prev, c, h);
}
#endif

// One row backward, columns [j0, H). In: activated gates a (4H), c_prev, c, dh (dL/dh_t, all
// sources), dc_in (dL/dc_t from step t+1, or nullptr). Out: dz (4H) pre-activation gate gradient;
// dc_prev = dc_t * f (to step t-1) unless nullptr.
template <typename T>
inline void cell_backward_from(int j0, int H, const T* a, const T* c_prev, const T* c, const T* dh, const T* dc_in,
                               T* dz, T* dc_prev) {
  for (int j = j0; j < H; ++j) {
    const T i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j];
    const T tc = tanh_(c[j]);
    const T dc = dh[j] * o * (T(1) - tc * tc) + (dc_in ? dc_in[j] : T(0));
    dz[j] = dc * g * i * (T(1) - i);
    dz[H + j] = dc * c_prev[j] * f * (T(1) - f);
    dz[2 * H + j] = dc * i * (T(1) - g * g);
    dz[3 * H + j] = dh[j] * tc * o * (T(1) - o);
    if (dc_prev) dc_prev[j] = dc * f;
  }
}

template <typename T>
inline void cell_backward(int H, const T* a, const T* c_prev, const T* c, const T* dh, const T* dc_in, T* dz,
                          T* dc_prev) {
  cell_backward_from<T>(0, H, a, c_prev, c, dh, dc_in, dz, dc_prev);
}

#if defined(IGNITE_LSTM_AVX512)
template <>
inline void cell_backward<float>(int H, const float* a, const float* c_prev, const float* c, const float* dh,
                                 const float* dc_in, float* dz, float* dc_prev) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int j = 0; j < H; j += 16) {
    const __mmask16 m = tail_mask(H - j);
    const __m512 i = _mm512_maskz_loadu_ps(m, a + j), f = _mm512_maskz_loadu_ps(m, a + H + j);
    const __m512 g = _mm512_maskz_loadu_ps(m, a + 2 * H + j), o = _mm512_maskz_loadu_ps(m, a + 3 * H + j);
    const __m512 tc = tanh16(_mm512_maskz_loadu_ps(m, c + j));
    const __m512 d_h = _mm512_maskz_loadu_ps(m, dh + j);
    __m512 dc = _mm512_mul_ps(_mm512_mul_ps(d_h, o), _mm512_fnmadd_ps(tc, tc, one));
    if (dc_in) dc = _mm512_add_ps(dc, _mm512_maskz_loadu_ps(m, dc_in + j));
    _mm512_mask_storeu_ps(dz + j, m, _mm512_mul_ps(_mm512_mul_ps(dc, g), _mm512_mul_ps(i, _mm512_sub_ps(one, i))));
    _mm512_mask_storeu_ps(dz + H + j, m, _mm512_mul_ps(_mm512_mul_ps(dc, _mm512_maskz_loadu_ps(m, c_prev + j)),
                                                       _mm512_mul_ps(f, _mm512_sub_ps(one, f))));
    _mm512_mask_storeu_ps(dz + 2 * H + j, m, _mm512_mul_ps(_mm512_mul_ps(dc, i), _mm512_fnmadd_ps(g, g, one)));
    _mm512_mask_storeu_ps(dz + 3 * H + j, m,
                          _mm512_mul_ps(_mm512_mul_ps(d_h, tc), _mm512_mul_ps(o, _mm512_sub_ps(one, o))));
    if (dc_prev) _mm512_mask_storeu_ps(dc_prev + j, m, _mm512_mul_ps(dc, f));
  }
}
#elif defined(IGNITE_LSTM_AVX2)
template <>
inline void cell_backward<float>(int H, const float* a, const float* c_prev, const float* c, const float* dh,
                                 const float* dc_in, float* dz, float* dc_prev) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int j = 0;
  for (; j + 8 <= H; j += 8) {
    const __m256 i = _mm256_loadu_ps(a + j), f = _mm256_loadu_ps(a + H + j);
    const __m256 g = _mm256_loadu_ps(a + 2 * H + j), o = _mm256_loadu_ps(a + 3 * H + j);
    const __m256 tc = tanh8(_mm256_loadu_ps(c + j));
    const __m256 d_h = _mm256_loadu_ps(dh + j);
    __m256 dc = _mm256_mul_ps(_mm256_mul_ps(d_h, o), _mm256_fnmadd_ps(tc, tc, one));
    if (dc_in) dc = _mm256_add_ps(dc, _mm256_loadu_ps(dc_in + j));
    _mm256_storeu_ps(dz + j, _mm256_mul_ps(_mm256_mul_ps(dc, g), _mm256_mul_ps(i, _mm256_sub_ps(one, i))));
    _mm256_storeu_ps(dz + H + j, _mm256_mul_ps(_mm256_mul_ps(dc, _mm256_loadu_ps(c_prev + j)),
                                               _mm256_mul_ps(f, _mm256_sub_ps(one, f))));
    _mm256_storeu_ps(dz + 2 * H + j, _mm256_mul_ps(_mm256_mul_ps(dc, i), _mm256_fnmadd_ps(g, g, one)));
    _mm256_storeu_ps(dz + 3 * H + j, _mm256_mul_ps(_mm256_mul_ps(d_h, tc), _mm256_mul_ps(o, _mm256_sub_ps(one, o))));
    if (dc_prev) _mm256_storeu_ps(dc_prev + j, _mm256_mul_ps(dc, f));
  }
  cell_backward_from<float>(j, H, a, c_prev, c, dh, dc_in, dz, dc_prev);
}
#endif

// ---------------------------------------------------------------- layer passes

// W (N x K, PyTorch's layout) transposed into the packed K x N layout of gemm_acc.
template <typename T>
void pack_transposed(int N, int K, const T* w, T* out) {
  const int nb = N - N % NB, nt = N - nb;
  for (int n0 = 0; n0 < nb; n0 += NB)
    for (int k = 0; k < K; ++k)
      for (int j = 0; j < NB; ++j) out[static_cast<int64_t>(n0) * K + NB * k + j] = w[static_cast<int64_t>(n0 + j) * K + k];
  for (int k = 0; k < K; ++k)
    for (int n = 0; n < nt; ++n) out[static_cast<int64_t>(nb) * K + k * nt + n] = w[static_cast<int64_t>(nb + n) * K + k];
}

#ifdef IGNITE_LSTM_AVX512
// ---------------------------------------------------------------- fused forward step (float, AVX-512)
//
// The layer's weights in groups of 16 hidden units: group q holds, for each input k of [x, h]
// (K = I + H rows), the 64 weights [i, f, g, o] x 16 units q*16 .. q*16 + 15 (zero past H),
// then the group's 64 summed biases. A tile of R rows x one group is R x 4 registers: the four
// gates of 16 units, so the cell update runs on the registers the product leaves, and the
// pre-activation gates never go to memory.
inline int groups16(int H) { return (H + 15) / 16; }

inline void write_fused(int I, int H, const float* w_ih, const float* w_hh, const float* b_ih, const float* b_hh,
                        float* mem) {
  const int K = I + H;
  for (int q = 0; q < groups16(H); ++q) {
    float* blk = mem + static_cast<int64_t>(q) * (K + 1) * 64;
    for (int gate = 0; gate < 4; ++gate)
      for (int u = 0; u < 16; ++u) {
        const int j = 16 * q + u;
        const int64_t row = static_cast<int64_t>(gate) * H + j;  // PyTorch's row of this gate and unit
        for (int k = 0; k < K; ++k)
          blk[static_cast<int64_t>(k) * 64 + gate * 16 + u] =
              j >= H ? 0.0f : (k < I ? w_ih[row * I + k] : w_hh[row * H + (k - I)]);
        blk[static_cast<int64_t>(K) * 64 + gate * 16 + u] = j >= H ? 0.0f : b_ih[row] + b_hh[row];
      }
  }
}

// R rows of one step for the 16 units of group q: gates from x (stride ldx) and h_prev (stride H);
// c = f c_prev + i g, h = o tanh(c) (rows of H); the activated gates to `gates` (rows of 4H) unless nullptr.
template <int R>
inline void fused_tile(int I, int H, int q, const float* x, int ldx, const float* h_prev, const float* blk,
                       const float* c_prev, float* c, float* h, float* gates) {
  const int K = I + H, G = 4 * H, j0 = 16 * q;
  const float* bias = blk + static_cast<int64_t>(K) * 64;
  __m512 acc[R][4];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g) acc[r][g] = _mm512_loadu_ps(bias + 16 * g);
  for (int k = 0; k < I; ++k) {
    const float* w = blk + static_cast<int64_t>(k) * 64;
    const __m512 w0 = _mm512_loadu_ps(w), w1 = _mm512_loadu_ps(w + 16), w2 = _mm512_loadu_ps(w + 32),
                 w3 = _mm512_loadu_ps(w + 48);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 av = _mm512_set1_ps(x[r * ldx + k]);
      acc[r][0] = _mm512_fmadd_ps(av, w0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(av, w1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(av, w2, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(av, w3, acc[r][3]);
    }
  }
  const float* wh = blk + static_cast<int64_t>(I) * 64;
  for (int k = 0; k < H; ++k) {
    const float* w = wh + static_cast<int64_t>(k) * 64;
    const __m512 w0 = _mm512_loadu_ps(w), w1 = _mm512_loadu_ps(w + 16), w2 = _mm512_loadu_ps(w + 32),
                 w3 = _mm512_loadu_ps(w + 48);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 av = _mm512_set1_ps(h_prev[r * H + k]);
      acc[r][0] = _mm512_fmadd_ps(av, w0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(av, w1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(av, w2, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(av, w3, acc[r][3]);
    }
  }
  const __mmask16 m = tail_mask(H - j0);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const __m512 i = sigm16(acc[r][0]), f = sigm16(acc[r][1]), g = tanh16(acc[r][2]), o = sigm16(acc[r][3]);
    const int64_t at = static_cast<int64_t>(r) * H + j0;
    const __m512 cn = _mm512_fmadd_ps(f, _mm512_maskz_loadu_ps(m, c_prev + at), _mm512_mul_ps(i, g));
    _mm512_mask_storeu_ps(c + at, m, cn);
    _mm512_mask_storeu_ps(h + at, m, _mm512_mul_ps(o, tanh16(cn)));
    if (gates) {
      float* z = gates + static_cast<int64_t>(r) * G + j0;
      _mm512_mask_storeu_ps(z, m, i);
      _mm512_mask_storeu_ps(z + H, m, f);
      _mm512_mask_storeu_ps(z + 2 * H, m, g);
      _mm512_mask_storeu_ps(z + 3 * H, m, o);
    }
  }
}

// One step of `rows` rows: group by group (a group's weights stay in L1 across the row tiles).
// h must not alias h_prev (every tile reads all of h_prev); c may alias c_prev.
inline void fused_step(int I, int H, const float* mem, int rows, const float* x, int ldx, const float* h_prev,
                       const float* c_prev, float* c, float* h, float* gates) {
  const int K = I + H, G = 4 * H;
  for (int q = 0; q < groups16(H); ++q) {
    const float* blk = mem + static_cast<int64_t>(q) * (K + 1) * 64;
    row_tiles(rows, [&](int r0, int n) {
      const float* xr = x + static_cast<int64_t>(r0) * ldx;
      const float* hp = h_prev + static_cast<int64_t>(r0) * H;
      const float* cp = c_prev + static_cast<int64_t>(r0) * H;
      float* cr = c + static_cast<int64_t>(r0) * H;
      float* hr = h + static_cast<int64_t>(r0) * H;
      float* gr = gates ? gates + static_cast<int64_t>(r0) * G : nullptr;
      switch (n) {
        case 6: fused_tile<6>(I, H, q, xr, ldx, hp, blk, cp, cr, hr, gr); break;
        case 5: fused_tile<5>(I, H, q, xr, ldx, hp, blk, cp, cr, hr, gr); break;
        case 4: fused_tile<4>(I, H, q, xr, ldx, hp, blk, cp, cr, hr, gr); break;
        case 3: fused_tile<3>(I, H, q, xr, ldx, hp, blk, cp, cr, hr, gr); break;
        case 2: fused_tile<2>(I, H, q, xr, ldx, hp, blk, cp, cr, hr, gr); break;
        case 1: fused_tile<1>(I, H, q, xr, ldx, hp, blk, cp, cr, hr, gr); break;
        default: break;
      }
    });
  }
}
#endif

// One layer's parameters packed for the per-step products, and its summed bias, in one buffer
// of size(I, H) values (lstm_pack writes it; the passes only read it). float on AVX-512: the
// fused layout above; otherwise W_ih^T, W_hh^T in gemm_acc's layout and the bias.
template <typename T>
struct Packed {
#ifdef IGNITE_LSTM_AVX512
  static constexpr bool fused = std::is_same<T, float>::value;
#else
  static constexpr bool fused = false;
#endif
  int I, H;
  const T* mem;
  const T* wih;  // I x 4H
  const T* whh;  // H x 4H
  const T* bias; // 4H
  // the larger of the two layouts (4H padded to groups of 16 units)
  static int64_t size(int I, int H) { return static_cast<int64_t>(I + H + 1) * 4 * (16 * ((H + 15) / 16)); }
  static void write(int I, int H, const T* w_ih, const T* w_hh, const T* b_ih, const T* b_hh, T* mem) {
#ifdef IGNITE_LSTM_AVX512
    if constexpr (fused) {
      write_fused(I, H, w_ih, w_hh, b_ih, b_hh, mem);
      return;
    }
#endif
    const int G = 4 * H;
    pack_transposed(G, I, w_ih, mem);
    pack_transposed(G, H, w_hh, mem + static_cast<int64_t>(I) * G);
    T* bias = mem + static_cast<int64_t>(I + H) * G;
    for (int n = 0; n < G; ++n) bias[n] = b_ih[n] + b_hh[n];
  }
  Packed(int I_, int H_, const T* mem_)
      : I(I_), H(H_), mem(mem_), wih(mem_), whh(mem_ + static_cast<int64_t>(I_) * 4 * H_),
        bias(mem_ + static_cast<int64_t>(I_ + H_) * 4 * H_) {}
  // z (rows x 4H) = bias + x (rows x I, stride ldx) @ W_ih^T + h (rows x H) @ W_hh^T (unfused layout)
  void gates(int rows, const T* x, int ldx, const T* h, T* z) const {
    const int G = 4 * H;
    for (int r = 0; r < rows; ++r) std::memcpy(z + static_cast<int64_t>(r) * G, bias, sizeof(T) * G);
    gemm_acc<T>(rows, I, x, ldx, wih, G, z, G);
    gemm_acc<T>(rows, H, h, H, whh, G, z, G);
  }
  // One step of `rows` rows: x (stride ldx), h_prev, c_prev (rows x H) in; c (may alias c_prev) and
  // h (must not alias h_prev) out; the activated gates (rows x 4H) kept in `gates` unless nullptr;
  // z: rows x 4H of scratch.
  void step(int rows, const T* x, int ldx, const T* h_prev, const T* c_prev, T* c, T* h, T* gates_out, T* z) const {
#ifdef IGNITE_LSTM_AVX512
    if constexpr (fused) {
      fused_step(I, H, mem, rows, x, ldx, h_prev, c_prev, c, h, gates_out);
      return;
    }
#endif
    const int G = 4 * H;
    T* zz = gates_out ? gates_out : z;
    gates(rows, x, ldx, h_prev, zz);
    for (int r = 0; r < rows; ++r) cell_forward<T>(H, zz + r * G, c_prev + r * H, c + r * H, h + r * H);
  }
};

// Forward of one layer over T steps for rows [b0, b1) of a batch of B (time-major).
//   x (T, B, I); packed: the layer's parameters as lstm_pack wrote them.
//   h0, c0 (B, H) in; hs (T, B, H) out.
//   cs (T, B, H) cells and gates (T, B, 4H) activated gates: kept for a backward, or nullptr.
//   xh (T, B, I + H + 1) or nullptr: the rows [x_t, h_{t-1}, 1] for the backward's one weight-gradient
//   product, dz^T @ xh = [dW_ih, dW_hh, db].
//   h_n, c_n (B, H): final state, or nullptr.
//   work: forward_work(rows, H) values of scratch.
template <typename T>
int64_t forward_work(int rows, int H) { return static_cast<int64_t>(rows) * 6 * H; }

template <typename T>
void forward(int T_, int B, int I, int H, int b0, int b1, const T* x, const T* packed, const T* h0, const T* c0,
             T* hs, T* cs, T* gates, T* xh, T* h_n, T* c_n, T* work) {
  const int G = 4 * H, rows = b1 - b0, X = I + H + 1;
  const Packed<T> p(I, H, packed);
  T* scratch = work;
  const T* h_prev = h0 + static_cast<int64_t>(b0) * H;
  const T* c_prev = c0 + static_cast<int64_t>(b0) * H;
  for (int t = 0; t < T_; ++t) {
    const int64_t row0 = static_cast<int64_t>(t) * B + b0;
    if (xh) {
      for (int r = 0; r < rows; ++r) {
        T* out = xh + (row0 + r) * X;
        std::memcpy(out, x + (row0 + r) * I, sizeof(T) * I);
        std::memcpy(out + I, h_prev + static_cast<int64_t>(r) * H, sizeof(T) * H);
        out[I + H] = T(1);
      }
    }
    T* h = hs + row0 * H;
    // Cells not kept live in two scratch buffers after the gates, used in turn.
    T* c = cs ? cs + row0 * H : scratch + static_cast<int64_t>(rows) * G + static_cast<int64_t>(t & 1) * rows * H;
    p.step(rows, x + row0 * I, I, h_prev, c_prev, c, h, gates ? gates + row0 * G : nullptr, scratch);
    h_prev = h;
    c_prev = c;
  }
  if (h_n) std::memcpy(h_n + static_cast<int64_t>(b0) * H, h_prev, sizeof(T) * rows * H);
  if (c_n) std::memcpy(c_n + static_cast<int64_t>(b0) * H, c_prev, sizeof(T) * rows * H);
}

// Inference through a stack of L layers over T steps for rows [b0, b1), all layers at each
// step, so that nothing larger than a step's rows leaves the cache.
//   x (T, B, I0); packed: one lstm_pack buffer per layer; layer l > 0 has I = H.
//   h_in, c_in (L, B, H): the initial state; h_out, c_out (L, B, H): the final one (may alias).
//   out (T, B, H) or nullptr: the last layer's h. head_w (O, H), head_b (O) or nullptr, y (T, B, O):
//   the linear read-out y_t = head_b + h_t @ head_w^T, when head_w is given.
//   work: stack_work(rows, L, H) values.
template <typename T>
int64_t stack_work(int rows, int L, int H) { return static_cast<int64_t>(rows) * (4 + 3 * L) * H; }

template <typename T>
void stack_forward(int T_, int B, int L, int I0, int H, int O, int b0, int b1, const T* x, const T* const* packed,
                   const T* h_in, const T* c_in, T* h_out, T* c_out, const T* head_w, const T* head_b, T* out, T* y,
                   T* work) {
  const int G = 4 * H, rows = b1 - b0;
  const int64_t rh = static_cast<int64_t>(rows) * H;
  T* z = work;
  // (L, rows, H) twice: this thread's rows of h, read from one and written to the other in turn
  // (a step reads all of h_{t-1} while it writes h_t), and of c (updated in place).
  T* hbuf[2] = {z + static_cast<int64_t>(rows) * G, z + static_cast<int64_t>(rows) * G + L * rh};
  T* hl = hbuf[0];
  T* cl = hbuf[1] + L * rh;
  for (int l = 0; l < L; ++l) {
    std::memcpy(hl + l * rh, h_in + (static_cast<int64_t>(l) * B + b0) * H, sizeof(T) * rh);
    std::memcpy(cl + l * rh, c_in + (static_cast<int64_t>(l) * B + b0) * H, sizeof(T) * rh);
  }
  for (int t = 0; t < T_; ++t) {
    const int64_t row0 = static_cast<int64_t>(t) * B + b0;
    const T* inp = x + row0 * I0;
    int ld = I0;
    const T* h_prev = hbuf[t & 1];
    T* h_next = hbuf[(t + 1) & 1];
    for (int l = 0; l < L; ++l) {
      T* hh = h_next + l * rh;
      T* cc = cl + l * rh;
      Packed<T>(l == 0 ? I0 : H, H, packed[l]).step(rows, inp, ld, h_prev + l * rh, cc, cc, hh, nullptr, z);
      inp = hh;
      ld = H;
    }
    if (out) std::memcpy(out + row0 * H, inp, sizeof(T) * rh);
    if (head_w) {
      for (int r = 0; r < rows; ++r)
        for (int o = 0; o < O; ++o) {
          T acc = head_b ? head_b[o] : T(0);
          for (int j = 0; j < H; ++j) acc += inp[r * H + j] * head_w[static_cast<int64_t>(o) * H + j];
          y[(row0 + r) * O + o] = acc;
        }
    }
  }
  hl = hbuf[T_ & 1];
  for (int l = 0; l < L; ++l) {
    std::memcpy(h_out + (static_cast<int64_t>(l) * B + b0) * H, hl + l * rh, sizeof(T) * rh);
    std::memcpy(c_out + (static_cast<int64_t>(l) * B + b0) * H, cl + l * rh, sizeof(T) * rh);
  }
}

// ---------------------------------------------------------------- weight gradients
//
// dW^T (X x Gp, X = I + H + 1, Gp = 4H rounded up to 16) += [x, h_prev, 1]^T @ dz over rows: each
// row's layer input x_t (I values), previous state h_{t-1} (H values, the forward's own output
// hs[t-1], or h0) and a 1 for the bias, with the gate gradients dz (4H values) of the same position.
// Each thread sums its own rows into its own copy; the copies are added after the parallel region
// (`reduce_wgrad`), which also transposes to PyTorch's (4H x X) = [dW_ih, dW_hh, db].
inline int round16(int n) { return 16 * ((n + 15) / 16); }

constexpr int WG_ROWS = 32;  // rows per block (at least): a block's rows stay in L1 across the tiles

// A block of kn rows: pointers to each row's dz, x, h_prev and a 1.
template <typename T>
struct WgradRows {
  int kn, I, H;
  const T* const* dz;
  const T* const* x;
  const T* const* h;
  const T* const* one;
};

template <typename T>
void wgrad_block(const WgradRows<T>& b, int G, T* ct) {
  const int Gp = round16(G);
  for (int k = 0; k < b.kn; ++k) {
    const T* d = b.dz[k];
    for (int n = 0; n < b.I + b.H + 1; ++n) {
      const T v = n < b.I ? b.x[k][n] : (n < b.I + b.H ? b.h[k][n - b.I] : T(1));
      T* row = ct + static_cast<int64_t>(n) * Gp;
      for (int m = 0; m < G; ++m) row[m] += v * d[m];
    }
  }
}

#ifdef IGNITE_LSTM_AVX512
// Rows out0 .. out0 + NT - 1 of ct, gates m0 .. m0 + 16 NV - 1 (the last vector masked): NT x NV
// registers across the block's rows; src[k] + col: the row's NT values.
template <int NT, int NV>
inline void wgrad_tile(int kn, const float* const* dzp, const float* const* src, int col, int m0, int out0,
                       __mmask16 last, float* ct, int Gp) {
  __m512 acc[NT][NV];
#pragma GCC unroll 6
  for (int j = 0; j < NT; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[j][v] = _mm512_loadu_ps(ct + static_cast<int64_t>(out0 + j) * Gp + m0 + 16 * v);
  for (int k = 0; k < kn; ++k) {
    const float* d = dzp[k] + m0;
    const float* xr = src[k] + col;
    __m512 dv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) dv[v] = v + 1 < NV ? _mm512_loadu_ps(d + 16 * v) : _mm512_maskz_loadu_ps(last, d + 16 * v);
#pragma GCC unroll 6
    for (int j = 0; j < NT; ++j) {
      const __m512 bx = _mm512_set1_ps(xr[j]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[j][v] = _mm512_fmadd_ps(bx, dv[v], acc[j][v]);
    }
  }
#pragma GCC unroll 6
  for (int j = 0; j < NT; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(ct + static_cast<int64_t>(out0 + j) * Gp + m0 + 16 * v, acc[j][v]);
}

// ncols columns of one source (x, h_prev or the 1), into ct rows from out0.
template <int NV>
inline void wgrad_tiles(int kn, const float* const* dzp, const float* const* src, int ncols, int m0, int out0,
                        __mmask16 last, float* ct, int Gp) {
  int n0 = 0;
  for (; n0 + 6 <= ncols; n0 += 6) wgrad_tile<6, NV>(kn, dzp, src, n0, m0, out0 + n0, last, ct, Gp);
  switch (ncols - n0) {
    case 5: wgrad_tile<5, NV>(kn, dzp, src, n0, m0, out0 + n0, last, ct, Gp); break;
    case 4: wgrad_tile<4, NV>(kn, dzp, src, n0, m0, out0 + n0, last, ct, Gp); break;
    case 3: wgrad_tile<3, NV>(kn, dzp, src, n0, m0, out0 + n0, last, ct, Gp); break;
    case 2: wgrad_tile<2, NV>(kn, dzp, src, n0, m0, out0 + n0, last, ct, Gp); break;
    case 1: wgrad_tile<1, NV>(kn, dzp, src, n0, m0, out0 + n0, last, ct, Gp); break;
    default: break;
  }
}

template <int NV>
inline void wgrad_stripe(const WgradRows<float>& b, int m0, __mmask16 last, float* ct, int Gp) {
  wgrad_tiles<NV>(b.kn, b.dz, b.x, b.I, m0, 0, last, ct, Gp);
  wgrad_tiles<NV>(b.kn, b.dz, b.h, b.H, m0, b.I, last, ct, Gp);
  wgrad_tiles<NV>(b.kn, b.dz, b.one, 1, m0, b.I + b.H, last, ct, Gp);
}

template <>
void wgrad_block<float>(const WgradRows<float>& b, int G, float* ct) {
  const int Gp = round16(G);
  for (int m0 = 0; m0 < G; m0 += 64) {  // 64 gates at a time: their dz rows stay in L1 across the tiles
    const int nv = std::min(4, (G - m0 + 15) / 16);
    const __mmask16 last = tail_mask(G - m0 - 16 * (nv - 1));
    switch (nv) {
      case 4: wgrad_stripe<4>(b, m0, last, ct, Gp); break;
      case 3: wgrad_stripe<3>(b, m0, last, ct, Gp); break;
      case 2: wgrad_stripe<2>(b, m0, last, ct, Gp); break;
      default: wgrad_stripe<1>(b, m0, last, ct, Gp); break;
    }
  }
}
#endif

// dw (G x X) = the sum of the threads' ct (X x Gp each, `stride` values apart).
template <typename T>
void reduce_wgrad(int threads, int G, int X, const T* ct, int64_t stride, T* dw) {
  const int Gp = round16(G);
  for (int m = 0; m < G; ++m)
    for (int n = 0; n < X; ++n) {
      T acc = ct[static_cast<int64_t>(n) * Gp + m];
      for (int k = 1; k < threads; ++k) acc += ct[k * stride + static_cast<int64_t>(n) * Gp + m];
      dw[static_cast<int64_t>(m) * X + n] = acc;
    }
}

// Ask for n values from p in the cache ahead of their use (the backward walks its steps from
// the last to the first, a pattern the hardware prefetchers take a while to follow).
template <typename T>
inline void prefetch_rows(const T* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t at = 0; at < n * static_cast<int64_t>(sizeof(T)); at += 64) __builtin_prefetch(c + at, 0, 3);
}

// Backward of one layer over T steps, last to first, for rows [b0, b1).
//   gates, cs: as kept by forward; c0 (B, H); dhs (T, B, H): dL/dh_t from outside the layer (read only).
//   w_hh (4H, H): PyTorch's layout. recurrent: 1 propagates through h_{t-1} and c_{t-1} (BPTT within
//   the call), 0 treats the previous state of every step as a constant (state detached after every step).
//   dc_n (B, H) or nullptr: dL/dc of the final cell.
//   dz (T, B, 4H) out: pre-activation gate gradients, or nullptr: kept only in the work, a few
//   steps at a time, for the products below.
//   w_ih (4H, I) and dx (T, B, I) or nullptr: the input gradient dx_t = dz_t @ W_ih, step by step.
//   x (T, B, I), hs (T, B, H), h0 (B, H): the forward's input, output and initial state, or x nullptr:
//   this thread's weight gradients into the work's ct (X x Gp, zeroed by the caller), a block of steps
//   at a time while their dz is in cache (wgrad_block).
//   dh0, dc0 (B, H) out or nullptr: gradient into the initial state (recurrent only).
//   work: backward_work(work_rows, I, H) values (work_rows >= rows).
inline int wgrad_steps(int rows) { return std::max(1, (WG_ROWS + rows - 1) / rows); }

// where a thread's ct and dz ring start in its work
inline int64_t backward_ct(int rows, int I, int H) {
  const int64_t G = 4 * H;
  return G * H + G * I + static_cast<int64_t>(rows) * 3 * H;
}
inline int64_t backward_ring(int rows, int I, int H) {
  return backward_ct(rows, I, H) + static_cast<int64_t>(I + H + 1) * round16(4 * H);
}
// (the ring: wgrad_steps(r) r < WG_ROWS + r rows for a thread of r <= rows rows)
template <typename T>
int64_t backward_work(int rows, int I, int H) {
  return backward_ring(rows, I, H) + static_cast<int64_t>(WG_ROWS + rows) * 4 * H;
}

template <typename T>
void backward(int T_, int B, int I, int H, int b0, int b1, int recurrent, const T* gates, const T* cs, const T* c0,
              const T* dhs, const T* w_hh, const T* w_ih, const T* x, const T* hs, const T* h0, const T* dc_n, T* dz,
              T* dx, T* dh0, T* dc0, T* work, int work_rows) {
  const int G = 4 * H, rows = b1 - b0;
  T* whh = work;                       // W_hh (4H x H) packed: dh_{t-1} = dz_t @ W_hh
  if (recurrent) pack(G, H, w_hh, whh);
  T* wih = whh + static_cast<int64_t>(G) * H;  // W_ih (4H x I) packed: dx_t = dz_t @ W_ih
  if (dx) pack(G, I, w_ih, wih);
  T* dh = wih + static_cast<int64_t>(G) * I;  // dL/dh_t, all sources
  T* dc_a = dh + rows * H;             // dL/dc_t from step t+1, and the next one's, in turn
  T* dc_b = dc_a + rows * H;
  T* ct = work + backward_ct(work_rows, I, H);
  T* ring = work + backward_ring(work_rows, I, H);  // dz of the steps since the last weight-gradient block
  const int block = wgrad_steps(rows);
  static const T one[1] = {T(1)};
  std::vector<const T*> dzp, xp, hp, onep;
  if (x) {
    const size_t n = static_cast<size_t>(block) * rows;
    dzp.resize(n);
    xp.resize(n);
    hp.resize(n);
    onep.assign(n, one);
  }
  int pending = 0;
  const T* dc_in = nullptr;
  if (dc_n) {
    std::memcpy(dc_a, dc_n + static_cast<int64_t>(b0) * H, sizeof(T) * rows * H);
    dc_in = dc_a;
  }
  for (int t = T_ - 1; t >= 0; --t) {
    const int64_t row0 = static_cast<int64_t>(t) * B + b0;
    const T* dh_out = dhs + row0 * H;
    const T* dh_all = dh_out;
    if (recurrent && t < T_ - 1) {
      for (int k = 0; k < rows * H; ++k) dh[k] += dh_out[k];  // dh holds dz_{t+1} @ W_hh
      dh_all = dh;
    }
    const T* c_prev = t > 0 ? cs + (row0 - B) * H : c0 + static_cast<int64_t>(b0) * H;
    T* dc_out = (recurrent && (t > 0 || dc0)) ? (dc_in == dc_a ? dc_b : dc_a) : nullptr;
    T* dzt = dz ? dz + row0 * G : ring + static_cast<int64_t>(pending) * rows * G;
    if (t > 0) prefetch_rows(gates + (row0 - B) * G, static_cast<int64_t>(rows) * G);  // the next step's rows,
    if (t > 1) prefetch_rows(cs + (row0 - 2 * B) * H, static_cast<int64_t>(rows) * H);  // while this one computes
    if (t > 0) prefetch_rows(dhs + (row0 - B) * H, static_cast<int64_t>(rows) * H);
    if (x && t > 0) prefetch_rows(x + (row0 - B) * I, static_cast<int64_t>(rows) * I);  // the weight gradients'
    if (x && t > 1) prefetch_rows(hs + (row0 - 2 * B) * H, static_cast<int64_t>(rows) * H);  // rows
    for (int r = 0; r < rows; ++r)
      cell_backward<T>(H, gates + (row0 + r) * G, c_prev + r * H, cs + (row0 + r) * H, dh_all + r * H,
                       dc_in ? dc_in + r * H : nullptr, dzt + r * G, dc_out ? dc_out + r * H : nullptr);
    dc_in = dc_out;
    if (dx) {
      T* dxt = dx + row0 * I;
      std::memset(dxt, 0, sizeof(T) * rows * I);
      gemm_acc<T>(rows, G, dzt, G, wih, I, dxt, I);
    }
    if (recurrent && (t > 0 || dh0)) {
      std::memset(dh, 0, sizeof(T) * rows * H);
      gemm_acc<T>(rows, G, dzt, G, whh, H, dh, H);
    }
    if (x) {
      const T* h_prev = t > 0 ? hs + (row0 - B) * H : h0 + static_cast<int64_t>(b0) * H;
      for (int r = 0; r < rows; ++r) {
        const size_t at = static_cast<size_t>(pending) * rows + r;
        dzp[at] = dzt + static_cast<int64_t>(r) * G;
        xp[at] = x + (row0 + r) * I;
        hp[at] = h_prev + static_cast<int64_t>(r) * H;
      }
      if (++pending == block || t == 0) {
        wgrad_block<T>(WgradRows<T>{pending * rows, I, H, dzp.data(), xp.data(), hp.data(), onep.data()}, G, ct);
        pending = 0;
      }
    } else if (!dz) {
      pending = 0;  // the ring's first slot serves every step
    }
  }
  if (recurrent && dh0) std::memcpy(dh0 + static_cast<int64_t>(b0) * H, dh, sizeof(T) * rows * H);
  if (recurrent && dc0) std::memcpy(dc0 + static_cast<int64_t>(b0) * H, dc_in, sizeof(T) * rows * H);
}

// body(b0, b1, work) on `threads` disjoint row ranges of B rows, each with its own slice of
// `work` (per_thread values each).
template <typename F>
void parallel_rows(int threads, int B, int64_t per_thread, double* work_base, size_t elem, F&& body) {
  char* base = reinterpret_cast<char*>(work_base);
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    {
      const int k = omp_get_thread_num(), m = omp_get_num_threads();
      body(B * k / m, B * (k + 1) / m, base + static_cast<int64_t>(k) * per_thread * elem);
    }
    return;
  }
#endif
  body(0, B, base);
}

// ---------------------------------------------------------------- GRU
//
// PyTorch's GRU (gates r, z, n): r = sigmoid(W_ir x + b_ir + W_hr h + b_hr), z likewise,
// n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - z) n + z h. The same structure as the
// LSTM's unfused path: per step two products on gemm_acc (16-wide AVX-512 or AVX2 for float), then
// one pass over the cells; the backward walks the steps from the last to the first and returns the
// gate gradients, from which PyTorch's products give the weight and input gradients.

// W_ih^T (I x 3H), W_hh^T (H x 3H) in gemm_acc's layout, then b_ih, b_hh.
#ifdef IGNITE_LSTM_AVX512
// The GRU's fused forward step (float, AVX-512), as the LSTM's (fused_tile): group q of 16 units holds
// for each input k of x the 48 weights [W_ir, W_iz, W_in] of its units, then for each input of h the
// 48 weights [W_hr, W_hz, W_hn], then 64 biases [b_ir + b_hr, b_iz + b_hz, b_in, b_hn]; a tile keeps
// r, z, the input side of n and the hidden side of n (which r multiplies) in registers.
inline void gru_write_fused(int I, int H, const float* w_ih, const float* w_hh, const float* b_ih,
                            const float* b_hh, float* mem) {
  const int K = I + H;
  for (int q = 0; q < groups16(H); ++q) {
    float* blk = mem + static_cast<int64_t>(q) * (K * 48 + 64);
    for (int gate = 0; gate < 3; ++gate)
      for (int u = 0; u < 16; ++u) {
        const int j = 16 * q + u;
        const int64_t row = static_cast<int64_t>(gate) * H + j;
        for (int k = 0; k < K; ++k)
          blk[static_cast<int64_t>(k) * 48 + gate * 16 + u] =
              j >= H ? 0.0f : (k < I ? w_ih[row * I + k] : w_hh[row * H + (k - I)]);
      }
    float* bias = blk + static_cast<int64_t>(K) * 48;
    for (int u = 0; u < 16; ++u) {
      const int j = 16 * q + u;
      const bool in = j < H;
      bias[u] = in ? b_ih[j] + b_hh[j] : 0.0f;
      bias[16 + u] = in ? b_ih[H + j] + b_hh[H + j] : 0.0f;
      bias[32 + u] = in ? b_ih[2 * H + j] : 0.0f;
      bias[48 + u] = in ? b_hh[2 * H + j] : 0.0f;
    }
  }
}

template <int R>
inline void gru_fused_tile(int I, int H, int q, const float* x, int ldx, const float* h_prev, const float* blk,
                           float* h, float* saved) {
  const int K = I + H, j0 = 16 * q;
  const float* bias = blk + static_cast<int64_t>(K) * 48;
  __m512 acc[R][4];  // r, z, n (input side), n (hidden side)
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g) acc[r][g] = _mm512_loadu_ps(bias + 16 * g);
  for (int k = 0; k < I; ++k) {
    const float* w = blk + static_cast<int64_t>(k) * 48;
    const __m512 w0 = _mm512_loadu_ps(w), w1 = _mm512_loadu_ps(w + 16), w2 = _mm512_loadu_ps(w + 32);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 av = _mm512_set1_ps(x[r * ldx + k]);
      acc[r][0] = _mm512_fmadd_ps(av, w0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(av, w1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(av, w2, acc[r][2]);
    }
  }
  for (int k = 0; k < H; ++k) {
    const float* w = blk + static_cast<int64_t>(I + k) * 48;
    const __m512 w0 = _mm512_loadu_ps(w), w1 = _mm512_loadu_ps(w + 16), w2 = _mm512_loadu_ps(w + 32);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 av = _mm512_set1_ps(h_prev[r * H + k]);
      acc[r][0] = _mm512_fmadd_ps(av, w0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(av, w1, acc[r][1]);
      acc[r][3] = _mm512_fmadd_ps(av, w2, acc[r][3]);
    }
  }
  const __mmask16 m = tail_mask(H - j0);
  const __m512 one = _mm512_set1_ps(1.0f);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const __m512 rr = sigm16(acc[r][0]), z = sigm16(acc[r][1]);
    const __m512 n = tanh16(_mm512_fmadd_ps(rr, acc[r][3], acc[r][2]));
    const int64_t at = static_cast<int64_t>(r) * H + j0;
    const __m512 hp = _mm512_maskz_loadu_ps(m, h_prev + at);
    _mm512_mask_storeu_ps(h + at, m, _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(one, z), n), _mm512_mul_ps(z, hp)));
    if (saved) {
      float* sv = saved + static_cast<int64_t>(r) * 4 * H + j0;
      _mm512_mask_storeu_ps(sv, m, rr);
      _mm512_mask_storeu_ps(sv + H, m, z);
      _mm512_mask_storeu_ps(sv + 2 * H, m, n);
      _mm512_mask_storeu_ps(sv + 3 * H, m, acc[r][3]);
    }
  }
}

// One GRU step of `rows` rows; h must not alias h_prev.
inline void gru_fused_step(int I, int H, const float* mem, int rows, const float* x, int ldx, const float* h_prev,
                           float* h, float* saved) {
  const int K = I + H;
  for (int q = 0; q < groups16(H); ++q) {
    const float* blk = mem + static_cast<int64_t>(q) * (K * 48 + 64);
    row_tiles(rows, [&](int r0, int n) {
      const float* xr = x + static_cast<int64_t>(r0) * ldx;
      const float* hp = h_prev + static_cast<int64_t>(r0) * H;
      float* hr = h + static_cast<int64_t>(r0) * H;
      float* sr = saved ? saved + static_cast<int64_t>(r0) * 4 * H : nullptr;
      switch (n) {
        case 6: gru_fused_tile<6>(I, H, q, xr, ldx, hp, blk, hr, sr); break;
        case 5: gru_fused_tile<5>(I, H, q, xr, ldx, hp, blk, hr, sr); break;
        case 4: gru_fused_tile<4>(I, H, q, xr, ldx, hp, blk, hr, sr); break;
        case 3: gru_fused_tile<3>(I, H, q, xr, ldx, hp, blk, hr, sr); break;
        case 2: gru_fused_tile<2>(I, H, q, xr, ldx, hp, blk, hr, sr); break;
        case 1: gru_fused_tile<1>(I, H, q, xr, ldx, hp, blk, hr, sr); break;
        default: break;
      }
    });
  }
}
#endif

template <typename T>
struct GruPacked {
  int I, H;
  const T* wih;
  const T* whh;
  const T* bih;
  const T* bhh;
#ifdef IGNITE_LSTM_AVX512
  static constexpr bool fused = std::is_same<T, float>::value;
#else
  static constexpr bool fused = false;
#endif
  // the larger of the two layouts (the fused one: groups of 16 units, see gru_fused_tile)
  static int64_t size(int I, int H) {
    return std::max(static_cast<int64_t>(I + H + 2) * 3 * H, static_cast<int64_t>((H + 15) / 16) * ((I + H) * 48 + 64));
  }
  static void write(int I, int H, const T* w_ih, const T* w_hh, const T* b_ih, const T* b_hh, T* mem) {
#ifdef IGNITE_LSTM_AVX512
    if constexpr (fused) {
      gru_write_fused(I, H, w_ih, w_hh, b_ih, b_hh, mem);
      return;
    }
#endif
    const int G = 3 * H;
    pack_transposed(G, I, w_ih, mem);
    pack_transposed(G, H, w_hh, mem + static_cast<int64_t>(I) * G);
    std::memcpy(mem + static_cast<int64_t>(I + H) * G, b_ih, sizeof(T) * G);
    std::memcpy(mem + static_cast<int64_t>(I + H + 1) * G, b_hh, sizeof(T) * G);
  }
  GruPacked(int I_, int H_, const T* mem)
      : I(I_), H(H_), wih(mem), whh(mem + static_cast<int64_t>(I_) * 3 * H_),
        bih(mem + static_cast<int64_t>(I_ + H_) * 3 * H_), bhh(mem + static_cast<int64_t>(I_ + H_ + 1) * 3 * H_) {}
};

template <typename T>
int64_t gru_forward_work(int rows, int H) { return static_cast<int64_t>(rows) * 6 * H; }

// One row of H cells: a, b (3H) the input- and hidden-side pre-activations; h out; sv (4H) or nullptr:
// [r, z, n, b_n] kept for the backward.
template <typename T>
inline void gru_cell_forward(int H, const T* a, const T* b, const T* h_prev, T* h, T* sv) {
  for (int j = 0; j < H; ++j) {
    const T rr = sigm(a[j] + b[j]), z = sigm(a[H + j] + b[H + j]);
    const T n = tanh_(a[2 * H + j] + rr * b[2 * H + j]);
    h[j] = (T(1) - z) * n + z * h_prev[j];
    if (sv) {
      sv[j] = rr;
      sv[H + j] = z;
      sv[2 * H + j] = n;
      sv[3 * H + j] = b[2 * H + j];
    }
  }
}

// dL/dh d (H) in; the row's [r, z, n, b_n] sv and h_prev; the pre-activation gradients di, dg (3H) out;
// dh_direct (H) = d z, or nullptr.
template <typename T>
inline void gru_cell_backward(int H, const T* d, const T* sv, const T* h_prev, T* di, T* dg, T* dh_direct) {
  for (int j = 0; j < H; ++j) {
    const T rr = sv[j], z = sv[H + j], n = sv[2 * H + j], ghn = sv[3 * H + j];
    const T dzn = d[j] * (T(1) - z) * (T(1) - n * n);
    const T dzr = dzn * ghn * rr * (T(1) - rr);
    const T dzz = d[j] * (h_prev[j] - n) * z * (T(1) - z);
    di[j] = dzr;
    di[H + j] = dzz;
    di[2 * H + j] = dzn;
    dg[j] = dzr;
    dg[H + j] = dzz;
    dg[2 * H + j] = dzn * rr;
    if (dh_direct) dh_direct[j] = d[j] * z;
  }
}

#ifdef IGNITE_LSTM_AVX512
template <>
inline void gru_cell_forward<float>(int H, const float* a, const float* b, const float* h_prev, float* h, float* sv) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int j = 0; j < H; j += 16) {
    const __mmask16 m = tail_mask(H - j);
    auto ld = [m](const float* p) { return _mm512_maskz_loadu_ps(m, p); };
    const __m512 rr = sigm16(_mm512_add_ps(ld(a + j), ld(b + j)));
    const __m512 z = sigm16(_mm512_add_ps(ld(a + H + j), ld(b + H + j)));
    const __m512 bn = ld(b + 2 * H + j);
    const __m512 n = tanh16(_mm512_add_ps(ld(a + 2 * H + j), _mm512_mul_ps(rr, bn)));
    _mm512_mask_storeu_ps(h + j, m, _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(one, z), n), _mm512_mul_ps(z, ld(h_prev + j))));
    if (sv) {
      _mm512_mask_storeu_ps(sv + j, m, rr);
      _mm512_mask_storeu_ps(sv + H + j, m, z);
      _mm512_mask_storeu_ps(sv + 2 * H + j, m, n);
      _mm512_mask_storeu_ps(sv + 3 * H + j, m, bn);
    }
  }
}

template <>
inline void gru_cell_backward<float>(int H, const float* d, const float* sv, const float* h_prev, float* di,
                                     float* dg, float* dh_direct) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int j = 0; j < H; j += 16) {
    const __mmask16 m = tail_mask(H - j);
    auto ld = [m](const float* p) { return _mm512_maskz_loadu_ps(m, p); };
    const __m512 dv = ld(d + j), rr = ld(sv + j), z = ld(sv + H + j), n = ld(sv + 2 * H + j), ghn = ld(sv + 3 * H + j);
    const __m512 dzn = _mm512_mul_ps(_mm512_mul_ps(dv, _mm512_sub_ps(one, z)), _mm512_fnmadd_ps(n, n, one));
    const __m512 dzr = _mm512_mul_ps(_mm512_mul_ps(dzn, ghn), _mm512_mul_ps(rr, _mm512_sub_ps(one, rr)));
    const __m512 dzz = _mm512_mul_ps(_mm512_mul_ps(dv, _mm512_sub_ps(ld(h_prev + j), n)), _mm512_mul_ps(z, _mm512_sub_ps(one, z)));
    _mm512_mask_storeu_ps(di + j, m, dzr);
    _mm512_mask_storeu_ps(di + H + j, m, dzz);
    _mm512_mask_storeu_ps(di + 2 * H + j, m, dzn);
    _mm512_mask_storeu_ps(dg + j, m, dzr);
    _mm512_mask_storeu_ps(dg + H + j, m, dzz);
    _mm512_mask_storeu_ps(dg + 2 * H + j, m, _mm512_mul_ps(dzn, rr));
    if (dh_direct) _mm512_mask_storeu_ps(dh_direct + j, m, _mm512_mul_ps(dv, z));
  }
}
#endif

// Forward of one GRU layer over T steps for rows [b0, b1) (time-major).
//   x (T, B, I); h0 (B, H); hs (T, B, H) out; saved (T, B, 4H) out or nullptr: [r, z, n, W_hn h + b_hn]
//   of every step for a backward; h_n (B, H) out or nullptr.
template <typename T>
void gru_forward(int T_, int B, int I, int H, int b0, int b1, const T* x, const T* packed, const T* h0, T* hs,
                 T* saved, T* h_n, T* work) {
  const int G = 3 * H, rows = b1 - b0;
  const GruPacked<T> p(I, H, packed);
  T* gi = work;
  T* gh = work + static_cast<int64_t>(rows) * G;
  const T* h_prev = h0 + static_cast<int64_t>(b0) * H;
  for (int t = 0; t < T_; ++t) {
    const int64_t row0 = static_cast<int64_t>(t) * B + b0;
#ifdef IGNITE_LSTM_AVX512
    if constexpr (GruPacked<T>::fused) {
      gru_fused_step(I, H, packed, rows, x + row0 * I, I, h_prev, hs + row0 * H, saved ? saved + row0 * 4 * H : nullptr);
      h_prev = hs + row0 * H;
      continue;
    }
#endif
    for (int r = 0; r < rows; ++r) {
      std::memcpy(gi + static_cast<int64_t>(r) * G, p.bih, sizeof(T) * G);
      std::memcpy(gh + static_cast<int64_t>(r) * G, p.bhh, sizeof(T) * G);
    }
    gemm_acc<T>(rows, I, x + row0 * I, I, p.wih, G, gi, G);
    gemm_acc<T>(rows, H, h_prev, H, p.whh, G, gh, G);
    T* h = hs + row0 * H;
    for (int r = 0; r < rows; ++r)
      gru_cell_forward<T>(H, gi + static_cast<int64_t>(r) * G, gh + static_cast<int64_t>(r) * G,
                          h_prev + static_cast<int64_t>(r) * H, h + static_cast<int64_t>(r) * H,
                          saved ? saved + (row0 + r) * 4 * H : nullptr);
    h_prev = h;
  }
  if (h_n) std::memcpy(h_n + static_cast<int64_t>(b0) * H, h_prev, sizeof(T) * rows * H);
}

// Work of a thread: W_hh and W_ih packed, dh, then for the kernel's own products the two sums
// (I + 1 and H + 1 rows of round16(3H)) and two rings of WG_ROWS + rows rows of 3H (see backward).
inline int64_t gru_ct_i(int rows, int I, int H) {
  return static_cast<int64_t>(3 * H) * (H + I) + static_cast<int64_t>(rows) * H;
}
inline int64_t gru_ct_h(int rows, int I, int H) { return gru_ct_i(rows, I, H) + static_cast<int64_t>(I + 1) * round16(3 * H); }
inline int64_t gru_rings(int rows, int I, int H) { return gru_ct_h(rows, I, H) + static_cast<int64_t>(H + 1) * round16(3 * H); }
template <typename T>
int64_t gru_backward_work(int rows, int I, int H) {
  return gru_rings(rows, I, H) + 2 * static_cast<int64_t>(WG_ROWS + rows) * 3 * H;
}

// Backward of one GRU layer over T steps, last to first, for rows [b0, b1).
//   saved: as gru_forward kept it; hs (T, B, H), h0 (B, H): the forward's states; dhs (T, B, H):
//   dL/dh_t from outside the layer. w_hh (3H, H). recurrent: 1 through h_{t-1} (BPTT within the call),
//   0: every step's previous state a constant. dh0 (B, H) out or nullptr.
//   dgi, dgh (T, B, 3H) out: the gradients of the input-side pre-activations (W_i. x + b_i.) and of the
//   hidden-side ones (W_h. h + b_h.); or nullptr, with x (T, B, I) given: the kernel's own products
//   instead, as the LSTM's backward does: the weight gradients into the work's two sums (zeroed by
//   the caller; [x, 1]^T dgi and [h_{t-1}, 1]^T dgh) a block of steps at a time, and with w_ih (3H, I)
//   and dx (T, B, I) the input gradient dx_t = dgi_t @ W_ih.
template <typename T>
void gru_backward(int T_, int B, int I, int H, int b0, int b1, int recurrent, const T* saved, const T* hs,
                  const T* h0, const T* dhs, const T* w_hh, const T* w_ih, const T* x, T* dgi, T* dgh, T* dx, T* dh0,
                  T* work, int work_rows) {
  const int G = 3 * H, rows = b1 - b0;
  T* whh = work;  // W_hh (3H x H) packed: dh_{t-1} += dgh_t @ W_hh
  if (recurrent) pack(G, H, w_hh, whh);
  T* wih = whh + static_cast<int64_t>(G) * H;  // W_ih (3H x I) packed: dx_t = dgi_t @ W_ih
  if (x && dx) pack(G, I, w_ih, wih);
  T* dh = work + static_cast<int64_t>(G) * (H + I);  // dL/dh_{t-1} through the recurrence, for the next step down
  T* ct_i = work + gru_ct_i(work_rows, I, H);
  T* ct_h = work + gru_ct_h(work_rows, I, H);
  T* ring_i = work + gru_rings(work_rows, I, H);
  T* ring_h = ring_i + static_cast<int64_t>(WG_ROWS + work_rows) * G;
  const int block = wgrad_steps(rows);
  static const T one[1] = {T(1)};
  std::vector<const T*> di_p, dg_p, x_p, h_p, one_p;
  if (x) {
    const size_t n = static_cast<size_t>(block) * rows;
    di_p.resize(n);
    dg_p.resize(n);
    x_p.resize(n);
    h_p.resize(n);
    one_p.assign(n, one);
  }
  int pending = 0;
  for (int t = T_ - 1; t >= 0; --t) {
    const int64_t row0 = static_cast<int64_t>(t) * B + b0;
    const T* h_prev = t > 0 ? hs + (row0 - B) * H : h0 + static_cast<int64_t>(b0) * H;
    const bool carry = recurrent && t < T_ - 1;
    const bool pass = recurrent && (t > 0 || dh0);
    const T* d_all = dhs + row0 * H;
    if (carry) {  // dh holds the gradient from step t + 1 through h_t
      for (int k = 0; k < rows * H; ++k) dh[k] += d_all[k];
      d_all = dh;
    }
    T* di = x ? ring_i + static_cast<int64_t>(pending) * rows * G : dgi + row0 * G;
    T* dg = x ? ring_h + static_cast<int64_t>(pending) * rows * G : dgh + row0 * G;
    if (t > 0) prefetch_rows(saved + (row0 - B) * 4 * H, static_cast<int64_t>(rows) * 4 * H);  // the next step's
    if (t > 0) prefetch_rows(dhs + (row0 - B) * H, static_cast<int64_t>(rows) * H);            // rows
    for (int r = 0; r < rows; ++r)  // dh: the direct path h' = ... + z h; the product adds the rest below
      gru_cell_backward<T>(H, d_all + static_cast<int64_t>(r) * H, saved + (row0 + r) * 4 * H,
                           h_prev + static_cast<int64_t>(r) * H, di + static_cast<int64_t>(r) * G,
                           dg + static_cast<int64_t>(r) * G, pass ? dh + static_cast<int64_t>(r) * H : nullptr);
    if (pass) gemm_acc<T>(rows, G, dg, G, whh, H, dh, H);
    if (!x) continue;
    if (dx) {
      T* dxt = dx + row0 * I;
      std::memset(dxt, 0, sizeof(T) * rows * I);
      gemm_acc<T>(rows, G, di, G, wih, I, dxt, I);
    }
    for (int r = 0; r < rows; ++r) {
      const size_t at = static_cast<size_t>(pending) * rows + r;
      di_p[at] = di + static_cast<int64_t>(r) * G;
      dg_p[at] = dg + static_cast<int64_t>(r) * G;
      x_p[at] = x + (row0 + r) * I;
      h_p[at] = h_prev + static_cast<int64_t>(r) * H;
    }
    if (++pending == block || t == 0) {
      const int kn = pending * rows;
      wgrad_block<T>(WgradRows<T>{kn, I, 0, di_p.data(), x_p.data(), h_p.data(), one_p.data()}, G, ct_i);
      wgrad_block<T>(WgradRows<T>{kn, 0, H, dg_p.data(), x_p.data(), h_p.data(), one_p.data()}, G, ct_h);
      pending = 0;
    }
  }
  if (recurrent && dh0) std::memcpy(dh0 + static_cast<int64_t>(b0) * H, dh, sizeof(T) * rows * H);
}

// ---------------------------------------------------------------- FMA peak probe
//
// The machine's arithmetic peak at the vector width this build uses: PROBE_CHAINS independent
// chains of fused multiply-adds per thread (more than FMA units x FMA latency on current x86
// cores), nothing else in the loop. benchmarks/bench_training.py states the kernel's rates as
// a share of this figure.
constexpr int PROBE_CHAINS = 12;
#if defined(IGNITE_LSTM_AVX512)
using ProbeVec = __m512;
constexpr int PROBE_WIDTH = 16;
inline ProbeVec probe_set(float v) { return _mm512_set1_ps(v); }
inline ProbeVec probe_fma(ProbeVec a, ProbeVec b, ProbeVec c) { return _mm512_fmadd_ps(a, b, c); }
inline float probe_sum(ProbeVec v) {
  float out[16];
  _mm512_storeu_ps(out, v);
  return out[0] + out[15];
}
#elif defined(IGNITE_LSTM_AVX2)
using ProbeVec = __m256;
constexpr int PROBE_WIDTH = 8;
inline ProbeVec probe_set(float v) { return _mm256_set1_ps(v); }
inline ProbeVec probe_fma(ProbeVec a, ProbeVec b, ProbeVec c) { return _mm256_fmadd_ps(a, b, c); }
inline float probe_sum(ProbeVec v) {
  float out[8];
  _mm256_storeu_ps(out, v);
  return out[0] + out[7];
}
#else
using ProbeVec = float;
constexpr int PROBE_WIDTH = 1;
inline ProbeVec probe_set(float v) { return v; }
inline ProbeVec probe_fma(ProbeVec a, ProbeVec b, ProbeVec c) { return std::fma(a, b, c); }
inline float probe_sum(ProbeVec v) { return v; }
#endif

float probe_chains(long long iters, float seed) {
  ProbeVec acc[PROBE_CHAINS];
  for (int i = 0; i < PROBE_CHAINS; ++i) acc[i] = probe_set(seed + static_cast<float>(i));
  const ProbeVec m = probe_set(0.999999f), b = probe_set(seed * 1e-6f);  // bounded: no overflow, no denormals
  for (long long n = 0; n < iters; ++n)
#pragma GCC unroll 12
    for (int i = 0; i < PROBE_CHAINS; ++i) acc[i] = probe_fma(acc[i], m, b);
  float total = 0.0f;
  for (int i = 0; i < PROBE_CHAINS; ++i) total += probe_sum(acc[i]);
  return total;
}

volatile float probe_sink;

}  // namespace

extern "C" {

// FLOP per second of `iters` iterations of the probe on each of `threads` threads (an FMA: 2 FLOP):
// per second of wall clock, or with cpu_time != 0 per second of the threads' own CPU time (a core's
// peak times the threads, whatever else the machine runs).
double ignite_lstm_fma_peak(int threads, long long iters, int cpu_time) {
  const auto start = std::chrono::steady_clock::now();
  int used = 1;
  double busy = 0.0;
  auto thread_seconds = [] {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
  };
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
  {
#pragma omp single
    used = omp_get_num_threads();
    const double t0 = thread_seconds();
    const float r = probe_chains(iters, 1.0f + static_cast<float>(omp_get_thread_num()));
    const double t1 = thread_seconds();
#pragma omp critical
    {
      probe_sink = probe_sink + r;
      busy += t1 - t0;
    }
  }
#else
  (void)threads;
  const double t0 = thread_seconds();
  probe_sink = probe_chains(iters, 1.0f);
  busy = thread_seconds() - t0;
#endif
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double flop = static_cast<double>(used) * static_cast<double>(iters) * PROBE_CHAINS * PROBE_WIDTH * 2.0;
  return flop / (cpu_time ? busy / used : seconds);
}

// Floats per vector of the build's float code (16: AVX-512, 8: AVX2/FMA, 1: portable C++).
int ignite_lstm_vector_width(void) { return PROBE_WIDTH; }

int ignite_lstm_abi(void) { return 6; }

int ignite_lstm_openmp(void) {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

// 2: AVX-512 (the fused forward, and the backward's own weight and input gradients: see
// lstm_backward), 1: AVX2/FMA, 0: portable C++.
int ignite_lstm_simd(void) {
#if defined(IGNITE_LSTM_AVX512)
  return 2;
#elif defined(IGNITE_LSTM_AVX2)
  return 1;
#else
  return 0;
#endif
}

long long lstm_packed_size(int I, int H) { return Packed<double>::size(I, H); }
// Scratch per thread, in values; a call with `threads` threads takes threads times this.
long long lstm_forward_work(int B, int H) { return forward_work<double>(B, H); }
long long lstm_stack_work(int B, int L, int H) { return stack_work<double>(B, L, H); }
long long lstm_backward_work(int B, int I, int H) { return backward_work<double>(B, I, H); }

#define IGNITE_LSTM_DEFINE(SUFFIX, T)                                                                             \
  void lstm_pack_##SUFFIX(int I, int H, const T* w_ih, const T* w_hh, const T* b_ih, const T* b_hh, T* out) {    \
    Packed<T>::write(I, H, w_ih, w_hh, b_ih, b_hh, out);                                                          \
  }                                                                                                               \
  void lstm_forward_##SUFFIX(int threads, int T_, int B, int I, int H, const T* x, const T* packed, const T* h0,  \
                             const T* c0, T* hs, T* cs, T* gates, T* xh, T* h_n, T* c_n, T* work) {               \
    parallel_rows(threads, B, forward_work<T>(B, H), reinterpret_cast<double*>(work), sizeof(T),                 \
                  [&](int b0, int b1, char* w) {                                                                  \
                    forward<T>(T_, B, I, H, b0, b1, x, packed, h0, c0, hs, cs, gates, xh, h_n, c_n,               \
                               reinterpret_cast<T*>(w));                                                          \
                  });                                                                                             \
  }                                                                                                               \
  void lstm_stack_forward_##SUFFIX(int threads, int T_, int B, int L, int I0, int H, int O, const T* x,          \
                                   const T* const* packed, const T* h_in, const T* c_in, T* h_out, T* c_out,      \
                                   const T* head_w, const T* head_b, T* out, T* y, T* work) {                     \
    parallel_rows(threads, B, stack_work<T>(B, L, H), reinterpret_cast<double*>(work), sizeof(T),                \
                  [&](int b0, int b1, char* w) {                                                                  \
                    stack_forward<T>(T_, B, L, I0, H, O, b0, b1, x, packed, h_in, c_in, h_out, c_out, head_w,     \
                                     head_b, out, y, reinterpret_cast<T*>(w));                                    \
                  });                                                                                             \
  }                                                                                                               \
  void lstm_backward_##SUFFIX(int threads, int T_, int B, int I, int H, int recurrent, const T* gates,            \
                              const T* cs, const T* c0, const T* dhs, const T* w_hh, const T* w_ih, const T* x,  \
                              const T* hs, const T* h0, const T* dc_n, T* dz, T* dx, T* dw, T* dh0, T* dc0,      \
                              T* work) {                                                                          \
    const int64_t per = backward_work<T>(B, I, H), ct = backward_ct(B, I, H);                                     \
    const int64_t ct_size = static_cast<int64_t>(I + H + 1) * round16(4 * H);                                     \
    if (dw)                                                                                                       \
      for (int k = 0; k < std::max(threads, 1); ++k) std::memset(work + k * per + ct, 0, sizeof(T) * ct_size);    \
    parallel_rows(threads, B, per, reinterpret_cast<double*>(work), sizeof(T), [&](int b0, int b1, char* w) {     \
      backward<T>(T_, B, I, H, b0, b1, recurrent, gates, cs, c0, dhs, w_hh, w_ih, dw ? x : nullptr, hs, h0, dc_n, \
                  dz, dx, dh0, dc0, reinterpret_cast<T*>(w), B);                                                  \
    });                                                                                                           \
    if (dw) reduce_wgrad<T>(std::max(threads, 1), 4 * H, I + H + 1, work + ct, per, dw);                          \
  }

#define IGNITE_GRU_DEFINE(SUFFIX, T)                                                                              \
  void gru_pack_##SUFFIX(int I, int H, const T* w_ih, const T* w_hh, const T* b_ih, const T* b_hh, T* out) {     \
    GruPacked<T>::write(I, H, w_ih, w_hh, b_ih, b_hh, out);                                                       \
  }                                                                                                               \
  void gru_forward_##SUFFIX(int threads, int T_, int B, int I, int H, const T* x, const T* packed, const T* h0,   \
                            T* hs, T* saved, T* h_n, T* work) {                                                  \
    parallel_rows(threads, B, gru_forward_work<T>(B, H), reinterpret_cast<double*>(work), sizeof(T),             \
                  [&](int b0, int b1, char* w) {                                                                  \
                    gru_forward<T>(T_, B, I, H, b0, b1, x, packed, h0, hs, saved, h_n, reinterpret_cast<T*>(w));  \
                  });                                                                                             \
  }                                                                                                               \
  void gru_backward_##SUFFIX(int threads, int T_, int B, int I, int H, int recurrent, const T* saved,             \
                             const T* hs, const T* h0, const T* dhs, const T* w_hh, const T* w_ih, const T* x,   \
                             T* dgi, T* dgh, T* dx, T* dw_ih, T* dw_hh, T* dh0, T* work) {                        \
    const int64_t per = gru_backward_work<T>(B, I, H), ci = gru_ct_i(B, I, H), ch = gru_ct_h(B, I, H);            \
    const int64_t sums = static_cast<int64_t>(I + H + 2) * round16(3 * H);                                         \
    if (x)                                                                                                        \
      for (int k = 0; k < std::max(threads, 1); ++k) std::memset(work + k * per + ci, 0, sizeof(T) * sums);      \
    parallel_rows(threads, B, per, reinterpret_cast<double*>(work), sizeof(T), [&](int b0, int b1, char* w) {     \
      gru_backward<T>(T_, B, I, H, b0, b1, recurrent, saved, hs, h0, dhs, w_hh, w_ih, x, dgi, dgh, dx, dh0,       \
                      reinterpret_cast<T*>(w), B);                                                                \
    });                                                                                                           \
    if (x) {                                                                                                      \
      reduce_wgrad<T>(std::max(threads, 1), 3 * H, I + 1, work + ci, per, dw_ih);                                 \
      reduce_wgrad<T>(std::max(threads, 1), 3 * H, H + 1, work + ch, per, dw_hh);                                 \
    }                                                                                                             \
  }

long long gru_packed_size(int I, int H) { return GruPacked<double>::size(I, H); }
long long gru_forward_work(int B, int H) { return gru_forward_work<double>(B, H); }
long long gru_backward_work(int B, int I, int H) { return gru_backward_work<double>(B, I, H); }

IGNITE_GRU_DEFINE(f32, float)
IGNITE_GRU_DEFINE(f64, double)
IGNITE_LSTM_DEFINE(f32, float)
IGNITE_LSTM_DEFINE(f64, double)

}  // extern "C"
