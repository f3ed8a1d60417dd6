// LSTM recurrences for the CPU, loaded by ignite_lstm/native.py through ctypes.
//
// A plain C ABI and no PyTorch headers, so the file builds in about a second on
// the machine that runs it. Arrays are dense, row-major and time-major; gates are
// in PyTorch's order (i, f, g, o). Sequences are independent, so each OpenMP thread
// takes a range of rows [b0, b1) of the batch for the whole call and never waits for
// the others. Built with -fopenmp, the library uses the OpenMP runtime already loaded
// by PyTorch (same soname), so its threads are PyTorch's own intra-op threads.
//
// float uses AVX2/FMA where the compiler targets it: an 8-wide exp in plain
// arithmetic (float rounding: within 4e-7 of the exact value, relative) for sigmoid and tanh, and
// a register-blocked matrix product for the small per-step products. double uses
// libm and plain loops: the exactness tests run in float64.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define IGNITE_LSTM_AVX2 1
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

#ifdef IGNITE_LSTM_AVX2
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

#ifdef IGNITE_LSTM_AVX2
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

#ifdef IGNITE_LSTM_AVX2
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

// One layer's parameters packed for the per-step products, and its summed bias, in one buffer
// of size(I, H) values (lstm_pack writes it; the passes only read it).
template <typename T>
struct Packed {
  int I, H;
  const T* wih;  // I x 4H
  const T* whh;  // H x 4H
  const T* bias; // 4H
  static int64_t size(int I, int H) { return static_cast<int64_t>(I + H + 1) * 4 * H; }
  static void write(int I, int H, const T* w_ih, const T* w_hh, const T* b_ih, const T* b_hh, T* mem) {
    const int G = 4 * H;
    pack_transposed(G, I, w_ih, mem);
    pack_transposed(G, H, w_hh, mem + static_cast<int64_t>(I) * G);
    T* bias = mem + static_cast<int64_t>(I + H) * G;
    for (int n = 0; n < G; ++n) bias[n] = b_ih[n] + b_hh[n];
  }
  Packed(int I_, int H_, const T* mem)
      : I(I_), H(H_), wih(mem), whh(mem + static_cast<int64_t>(I_) * 4 * H_), bias(mem + static_cast<int64_t>(I_ + H_) * 4 * H_) {}
  // z (rows x 4H) = bias + x (rows x I, stride ldx) @ W_ih^T + h (rows x H) @ W_hh^T
  void gates(int rows, const T* x, int ldx, const T* h, T* z) const {
    const int G = 4 * H;
    for (int r = 0; r < rows; ++r) std::memcpy(z + static_cast<int64_t>(r) * G, bias, sizeof(T) * G);
    gemm_acc<T>(rows, I, x, ldx, wih, G, z, G);
    gemm_acc<T>(rows, H, h, H, whh, G, z, G);
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
    T* z = gates ? gates + row0 * G : scratch;
    p.gates(rows, x + row0 * I, I, h_prev, z);
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
    for (int r = 0; r < rows; ++r) cell_forward<T>(H, z + r * G, c_prev + r * H, c + r * H, h + r * H);
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
int64_t stack_work(int rows, int L, int H) { return static_cast<int64_t>(rows) * (4 + 2 * L) * H; }

template <typename T>
void stack_forward(int T_, int B, int L, int I0, int H, int O, int b0, int b1, const T* x, const T* const* packed,
                   const T* h_in, const T* c_in, T* h_out, T* c_out, const T* head_w, const T* head_b, T* out, T* y,
                   T* work) {
  const int G = 4 * H, rows = b1 - b0;
  const int64_t rh = static_cast<int64_t>(rows) * H;
  T* z = work;
  T* hl = z + static_cast<int64_t>(rows) * G;  // (L, rows, H): this thread's rows of the state
  T* cl = hl + L * rh;
  for (int l = 0; l < L; ++l) {
    std::memcpy(hl + l * rh, h_in + (static_cast<int64_t>(l) * B + b0) * H, sizeof(T) * rh);
    std::memcpy(cl + l * rh, c_in + (static_cast<int64_t>(l) * B + b0) * H, sizeof(T) * rh);
  }
  for (int t = 0; t < T_; ++t) {
    const int64_t row0 = static_cast<int64_t>(t) * B + b0;
    const T* inp = x + row0 * I0;
    int ld = I0;
    for (int l = 0; l < L; ++l) {
      T* hh = hl + l * rh;
      T* cc = cl + l * rh;
      Packed<T>(l == 0 ? I0 : H, H, packed[l]).gates(rows, inp, ld, hh, z);  // reads h_{t-1} before it is overwritten
      for (int r = 0; r < rows; ++r) cell_forward<T>(H, z + r * G, cc + r * H, cc + r * H, hh + r * H);
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
  for (int l = 0; l < L; ++l) {
    std::memcpy(h_out + (static_cast<int64_t>(l) * B + b0) * H, hl + l * rh, sizeof(T) * rh);
    std::memcpy(c_out + (static_cast<int64_t>(l) * B + b0) * H, cl + l * rh, sizeof(T) * rh);
  }
}

// Backward of one layer over T steps, last to first, for rows [b0, b1).
//   gates, cs: as kept by forward; c0 (B, H); dhs (T, B, H): dL/dh_t from outside the layer (read only).
//   w_hh (4H, H): PyTorch's layout. recurrent: 1 propagates through h_{t-1} and c_{t-1} (BPTT within
//   the call), 0 treats the previous state of every step as a constant (state detached after every step).
//   dc_n (B, H) or nullptr: dL/dc of the final cell. dz (T, B, 4H) out: pre-activation gate gradients.
//   dh0, dc0 (B, H) out or nullptr: gradient into the initial state (recurrent only).
//   work: backward_work(rows, H) values.
template <typename T>
int64_t backward_work(int rows, int H) { return static_cast<int64_t>(4 * H) * H + static_cast<int64_t>(rows) * 3 * H; }

template <typename T>
void backward(int T_, int B, int H, int b0, int b1, int recurrent, const T* gates, const T* cs, const T* c0,
              const T* dhs, const T* w_hh, const T* dc_n, T* dz, T* dh0, T* dc0, T* work) {
  const int G = 4 * H, rows = b1 - b0;
  T* whh = work;                       // W_hh (4H x H) packed: dh_{t-1} = dz_t @ W_hh
  if (recurrent) pack(G, H, w_hh, whh);
  T* dh = work + static_cast<int64_t>(G) * H;  // dL/dh_t, all sources
  T* dc_a = dh + rows * H;             // dL/dc_t from step t+1, and the next one's, in turn
  T* dc_b = dc_a + rows * H;
  const T* dc_in = nullptr;
  if (dc_n) {
    std::memcpy(dc_a, dc_n + static_cast<int64_t>(b0) * H, sizeof(T) * rows * H);
    dc_in = dc_a;
  }
  for (int t = T_ - 1; t >= 0; --t) {
    const int64_t row0 = static_cast<int64_t>(t) * B + b0;
    const T* dh_out = dhs + row0 * H;
    if (recurrent && t < T_ - 1) {
      for (int k = 0; k < rows * H; ++k) dh[k] += dh_out[k];  // dh holds dz_{t+1} @ W_hh
    } else {
      std::memcpy(dh, dh_out, sizeof(T) * rows * H);
    }
    const T* c_prev = t > 0 ? cs + (row0 - B) * H : c0 + static_cast<int64_t>(b0) * H;
    T* dc_out = (recurrent && (t > 0 || dc0)) ? (dc_in == dc_a ? dc_b : dc_a) : nullptr;
    T* dzt = dz + row0 * G;
    for (int r = 0; r < rows; ++r)
      cell_backward<T>(H, gates + (row0 + r) * G, c_prev + r * H, cs + (row0 + r) * H, dh + r * H,
                       dc_in ? dc_in + r * H : nullptr, dzt + r * G, dc_out ? dc_out + r * H : nullptr);
    dc_in = dc_out;
    if (recurrent && (t > 0 || dh0)) {
      std::memset(dh, 0, sizeof(T) * rows * H);
      gemm_acc<T>(rows, G, dzt, G, whh, H, dh, H);
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

}  // namespace

extern "C" {

int ignite_lstm_abi(void) { return 5; }

int ignite_lstm_openmp(void) {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

int ignite_lstm_simd(void) {
#ifdef IGNITE_LSTM_AVX2
  return 1;
#else
  return 0;
#endif
}

long long lstm_packed_size(int I, int H) { return Packed<double>::size(I, H); }
// Scratch per thread, in values; a call with `threads` threads takes threads times this.
long long lstm_forward_work(int B, int H) { return forward_work<double>(B, H); }
long long lstm_stack_work(int B, int L, int H) { return stack_work<double>(B, L, H); }
long long lstm_backward_work(int B, int H) { return backward_work<double>(B, H); }

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
  void lstm_backward_##SUFFIX(int threads, int T_, int B, int H, int recurrent, const T* gates, const T* cs,      \
                              const T* c0, const T* dhs, const T* w_hh, const T* dc_n, T* dz, T* dh0, T* dc0,    \
                              T* work) {                                                                          \
    parallel_rows(threads, B, backward_work<T>(B, H), reinterpret_cast<double*>(work), sizeof(T),                \
                  [&](int b0, int b1, char* w) {                                                                  \
                    backward<T>(T_, B, H, b0, b1, recurrent, gates, cs, c0, dhs, w_hh, dc_n, dz, dh0, dc0,        \
                                reinterpret_cast<T*>(w));                                                         \
                  });                                                                                             \
  }

IGNITE_LSTM_DEFINE(f32, float)
IGNITE_LSTM_DEFINE(f64, double)

}  // extern "C"
