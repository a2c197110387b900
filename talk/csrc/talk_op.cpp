// TaLK window average on CPU (Lioutas & Guo, ICML 2020, Sec. 3, Eq. 3-6), forward and
// backward, one streaming pass over time per (batch, head) column.
//
//   left_i  = clamp(i - a_l[i] * l_max, 0, T-1)          right_i = clamp(i + a_r[i] * r_max, 0, T-1)
//   S_r     = sum_{j < r} x_j        (table row r = S_{r-1} of Eq. 5, row 0 = 0)
//   o_i     = (S(right_i + 1) - S(left_i)) / K,  S(p) = lerp(S_floor(p), S_floor(p)+1, frac(p))
//
// Every row of S that output i reads lies in [i - l_max, i + r_max + 2], so the table is
// never stored: a ring buffer of R = l_max + r_max + 3 rows per (batch, head) column holds
// the rows in use. The backward pass recomputes S the same way (bit-identical) and keeps
// dL/dS in a second ring buffer (see backward_kernel).
//
// Layout: x (T, B, C) and offsets a (T, B, A) contiguous, C = H * D; A = 2H holds a_l for
// the H heads then a_r (encoder), A = H holds a_l only (causal decoder, r_max = 0).
//
// layer_forward also computes the offsets a = sigmoid(x W^T + b) (Eq. 3-4) inside the same
// pass, from each row of x while it is in cache: x is read from memory once, and the skinny
// (T B, C) x (C, A) product runs at cache speed (MKL's took 18 ms of the layer's 44 at
// T = 8192, B = 8, C = 512 on this AMD EPYC; reading x takes 4).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <immintrin.h>  // SSE2 streaming stores are in every x86-64; AVX-512 where compiled

namespace {

template <typename T>
struct Edge {  // a fractional table row: lerp(row k0, row k1, f)
  int64_t k0, k1;
  T f;
  bool pass;  // clamp passes the gradient (torch.clamp: min <= v <= max)
};

// Table row of a window edge; `shift` is 1 for S(right + 1) and 0 for S(left).
template <typename T>
inline Edge<T> edge(T v, int64_t T_len, int64_t shift) {
  const T hi = static_cast<T>(T_len - 1);
  Edge<T> e;
  e.pass = v >= T(0) && v <= hi;
  const T p = std::min(std::max(v, T(0)), hi) + static_cast<T>(shift);
  const int64_t last = T_len;  // rows 0..T
  e.k0 = std::min<int64_t>(std::max<int64_t>(static_cast<int64_t>(std::floor(p)), 0), last);
  e.k1 = std::min<int64_t>(e.k0 + 1, last);
  e.f = p - static_cast<T>(e.k0);
  return e;
}

// dst[0:n] = src[0:n] with non-temporal stores when dst is aligned to the store's width
// (64 bytes with AVX-512, 16 with the SSE2 of any x86-64): they skip the read-for-ownership
// of dst's cache lines, a third of the memory traffic of writing a tensor larger than the
// caches. Plain stores otherwise. Streamed stores are weakly ordered: the writing thread
// ends with fence().
#if defined(__AVX512F__)
constexpr int64_t kStreamBytes = 64;
inline void stream_vec(float* dst, const float* src) { _mm512_stream_ps(dst, _mm512_loadu_ps(src)); }
inline void stream_vec(double* dst, const double* src) {
  _mm512_stream_pd(dst, _mm512_loadu_pd(src));
}
#else
constexpr int64_t kStreamBytes = 16;
inline void stream_vec(float* dst, const float* src) { _mm_stream_ps(dst, _mm_loadu_ps(src)); }
inline void stream_vec(double* dst, const double* src) { _mm_stream_pd(dst, _mm_loadu_pd(src)); }
#endif

template <typename T>
inline void stream_row(T* dst, const T* src, int64_t n) {
  constexpr int64_t lanes = kStreamBytes / sizeof(T);
  if (n % lanes == 0 && reinterpret_cast<std::uintptr_t>(dst) % kStreamBytes == 0) {
    for (int64_t d = 0; d < n; d += lanes) stream_vec(dst + d, src + d);
    return;
  }
  std::copy(src, src + n, dst);
}

inline void fence() { _mm_sfence(); }

struct Shape {
  int64_t T, B, C, H, A, D, l_max, r_max, R;  // A = H (causal) or 2H offsets per token
  double invR;
  bool causal;
};

// Raw window edges of output i in column (b, h), before clamping.
template <typename T>
inline void raw_edges(const Shape& s, const T* a, int64_t i, int64_t b, int64_t h, T& vl,
                      T& vr) {
  // a is a sigmoid in [0, 1]; the clamp only guards the ring buffer against bad input.
  const int64_t k = (i * s.B + b) * s.A + h;
  const T a_l = std::min(std::max(a[k], T(0)), T(1));
  vl = static_cast<T>(i) - a_l * static_cast<T>(s.l_max);
  if (s.causal) {
    vr = static_cast<T>(i);
  } else {
    const T a_r = std::min(std::max(a[k + s.H], T(0)), T(1));
    vr = static_cast<T>(i) + a_r * static_cast<T>(s.r_max);
  }
}

// Columns u = b * H + h of a block are contiguous in every row (offset u * D), so the
// kernels walk time in the outer loop and the block's columns in the inner one: each time
// step reads and writes one contiguous slice per tensor. The ring holds R rows of D per
// column; a row's slot is found by a multiplication, not an integer division (those, six
// per column and step, cost the forward 10%).
template <typename T>
struct Columns {
  const Shape& s;
  int64_t begin, end;  // columns [begin, end)
  int64_t done;        // rows <= done are in the ring; row `base` = 0
  std::vector<T> ring;
  Columns(const Shape& s_, int64_t b, int64_t e, int64_t base = 0)
      : s(s_), begin(b), end(e), done(base),
        ring(static_cast<size_t>((e - b) * s_.R * s_.D), T(0)) {}
  T* row(int64_t u, int64_t r) {
    int64_t m = r - static_cast<int64_t>(static_cast<double>(r) * s.invR) * s.R;  // r mod R
    m += m < 0 ? s.R : (m >= s.R ? -s.R : 0);
    return ring.data() + ((u - begin) * s.R + m) * s.D;
  }
  // Row r of every column: S_r = S_{r-1} + x_{r-1}.
  void add_row(const T* x, int64_t r) {
    const T* xr = x + (r - 1) * s.B * s.C;
    for (int64_t u = begin; u < end; ++u) {
      const T* prev = row(u, r - 1);
      T* cur = row(u, r);
      const T* xu = xr + u * s.D;
#pragma omp simd
      for (int64_t d = 0; d < s.D; ++d) cur[d] = prev[d] + xu[d];
    }
    done = r;
  }
  // Output i's window in column u: its two edges and the four ring rows they read.
  struct Window {
    Edge<T> L, R;
    T *l0, *l1, *r0, *r1;
  };
  Window window(const T* a, int64_t i, int64_t u) {
    T vl, vr;
    raw_edges(s, a, i, u / s.H, u % s.H, vl, vr);
    const Edge<T> L = edge(vl, s.T, 0), R = edge(vr, s.T, 1);
    return {L, R, row(u, L.k0), row(u, L.k1), row(u, R.k0), row(u, R.k1)};
  }
};

// Advance the table of every column to row `upto`.
template <typename T>
inline void extend_table(Columns<T>& cols, const T* x, int64_t upto) {
  for (int64_t r = cols.done + 1; r <= upto; ++r) cols.add_row(x, r);
}

// The offset projection's small products, written once as templates and compiled into
// entry points below. For float each entry point is compiled for AVX-512, AVX2 and the
// baseline, the best chosen when the library loads (GCC function multiversioning), so the
// portable build keeps the wide path on CPUs that have it (the window loops themselves are
// memory-bound and gain little from it: results/bench/talk_op_march.md).
#define TALK_INLINE inline __attribute__((always_inline))
#define TALK_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

// y (n, Ap) = x (n, C) Wt (C, Ap), Ap a multiple of 16: the offset logits of n tokens,
// vectorised over 16 outputs for 8 tokens at once (each row of Wt loaded once per 8 tokens).
template <typename T>
TALK_INLINE void rows_times_impl(const T* x, int64_t n, int64_t C, const T* Wt, int64_t Ap,
                                 T* y) {
  constexpr int64_t kN = 8, kA = 16;
  for (int64_t a0 = 0; a0 < Ap; a0 += kA) {
    for (int64_t t0 = 0; t0 < n; t0 += kN) {
      T acc[kN][kA] = {};
      const T* xt[kN];
      for (int64_t t = 0; t < kN; ++t) xt[t] = x + std::min(t0 + t, n - 1) * C;  // pad: repeat
      for (int64_t c = 0; c < C; ++c) {
        const T* w = Wt + c * Ap + a0;
        for (int64_t t = 0; t < kN; ++t) {
          const T xv = xt[t][c];
#pragma omp simd
          for (int64_t k = 0; k < kA; ++k) acc[t][k] += xv * w[k];
        }
      }
      for (int64_t t = 0; t < std::min(kN, n - t0); ++t)
        std::copy(acc[t], acc[t] + kA, y + (t0 + t) * Ap + a0);
    }
  }
}

// gw (A, C) += g (n, A)^T x (n, C): the offset weights' gradient from n tokens, four at a
// time (missing ones weigh 0), vectorised over C.
template <typename T>
TALK_INLINE void outer_add_impl(const T* g, const T* x, int64_t n, int64_t A, int64_t C,
                                T* gw) {
  for (int64_t t0 = 0; t0 < n; t0 += 4) {
    const T* xt[4];
    for (int64_t t = 0; t < 4; ++t) xt[t] = x + std::min(t0 + t, n - 1) * C;
    for (int64_t j = 0; j < A; ++j) {
      T gt[4];
      for (int64_t t = 0; t < 4; ++t) gt[t] = t0 + t < n ? g[(t0 + t) * A + j] : T(0);
      T* row = gw + j * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c)
        row[c] += gt[0] * xt[0][c] + gt[1] * xt[1][c] + gt[2] * xt[2][c] + gt[3] * xt[3][c];
    }
  }
}

// y[0:D] += sum_j g[j] W[j, 0:D], W's rows ldw apart: dL/dx through the offsets, one head;
// four rows of W per pass over y.
template <typename T>
TALK_INLINE void add_rows_impl(const T* g, int64_t A, const T* W, int64_t ldw, int64_t D,
                               T* y) {
  int64_t j = 0;
  for (; j + 4 <= A; j += 4) {
    const T g0 = g[j], g1 = g[j + 1], g2 = g[j + 2], g3 = g[j + 3];
    const T *w0 = W + j * ldw, *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) y[d] += g0 * w0[d] + g1 * w1[d] + g2 * w2[d] + g3 * w3[d];
  }
  for (; j < A; ++j) {
    const T gj = g[j];
    const T* w = W + j * ldw;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) y[d] += gj * w[d];
  }
}

TALK_CLONES void rows_times(const float* x, int64_t n, int64_t C, const float* Wt, int64_t Ap,
                            float* y) {
  rows_times_impl(x, n, C, Wt, Ap, y);
}
void rows_times(const double* x, int64_t n, int64_t C, const double* Wt, int64_t Ap,
                double* y) {
  rows_times_impl(x, n, C, Wt, Ap, y);
}
TALK_CLONES void outer_add(const float* g, const float* x, int64_t n, int64_t A, int64_t C,
                           float* gw) {
  outer_add_impl(g, x, n, A, C, gw);
}
void outer_add(const double* g, const double* x, int64_t n, int64_t A, int64_t C, double* gw) {
  outer_add_impl(g, x, n, A, C, gw);
}
TALK_CLONES void add_rows(const float* g, int64_t A, const float* W, int64_t ldw, int64_t D,
                          float* y) {
  add_rows_impl(g, A, W, ldw, D, y);
}
void add_rows(const double* g, int64_t A, const double* W, int64_t ldw, int64_t D, double* y) {
  add_rows_impl(g, A, W, ldw, D, y);
}

// The offset projection of layer_forward (Eq. 3-4): sig = sigmoid(x W^T + b) and
// a = sig * keep (offset dropout), both (T, B, A); Wt is W^T padded to Ap columns.
template <typename T>
struct Projection {
  const T *Wt, *bias, *keep;  // keep may be null
  T *sig, *a;
  int64_t Ap;
  // Tokens (t, b) for b in [b0, b1): one contiguous run of rows of x.
  void operator()(const Shape& s, const T* x, int64_t t, int64_t b0, int64_t b1,
                  std::vector<T>& logits) const {
    const int64_t n = b1 - b0;
    logits.resize(static_cast<size_t>(n * Ap));
    rows_times(x + (t * s.B + b0) * s.C, n, s.C, Wt, Ap, logits.data());
    for (int64_t b = 0; b < n; ++b) {
      const int64_t k = (t * s.B + b0 + b) * s.A;
      for (int64_t j = 0; j < s.A; ++j) {
        const T v = T(1) / (T(1) + std::exp(-(logits[b * Ap + j] + bias[j])));
        sig[k + j] = v;
        a[k + j] = keep ? v * keep[k + j] : v;
      }
    }
  }
};

// Work blocks: outputs [t0, t1) of batch entries [b0, b1), at most one per thread. Long
// sequences are cut in time, so every thread streams through its own contiguous rows (cut
// by columns, the two threads interleave within every row and run no faster than one);
// a time block starts its table at its first window's row (see forward_kernel). Short ones
// are cut by batch entries, whole tokens each, for the projection.
template <typename F>
void for_blocks(const Shape& s, const F& fn) {
  const int64_t threads = at::get_num_threads();
  const int64_t reach = s.l_max + s.r_max + 2;  // rows a block re-reads at its start
  const int64_t nt = std::max<int64_t>(1, std::min(threads, s.T / (8 * reach)));
  const int64_t nb = std::max<int64_t>(1, std::min(threads / nt, s.B));
  at::parallel_for(0, nt * nb, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t tk = k / nb, bk = k % nb;
      fn(s.T * tk / nt, s.T * (tk + 1) / nt, s.B * bk / nb, s.B * (bk + 1) / nb);
    }
  });
}

// Outputs only ever read differences of table rows, so a block's table may start at any row
// at or below its first window (row `base`, set to 0): the window of output i reads rows
// >= i - l_max. With `proj`, the offsets of a token are computed when its row of x enters
// the table, r_max + 2 steps before its output needs them. (Streaming the output, as the
// backward does, was no faster here: 7.0 -> 7.7 ms at T = 2048, within noise at 8192.)
template <typename T>
void forward_kernel(const Shape& s, const T* x, const T* a, T* out,
                    const Projection<T>* proj = nullptr) {
  const T invK = T(1) / static_cast<T>(s.l_max + s.r_max + 1);
  for_blocks(s, [&](int64_t t0, int64_t t1, int64_t b0, int64_t b1) {
    Columns<T> cols(s, b0 * s.H, b1 * s.H, std::max<int64_t>(0, t0 - s.l_max));
    std::vector<T> logits;
    for (int64_t i = t0; i < t1; ++i) {
      for (int64_t r = cols.done + 1; r <= std::min(s.T, i + s.r_max + 2); ++r) {
        cols.add_row(x, r);
        if (proj && r - 1 >= t0 && r - 1 < t1) (*proj)(s, x, r - 1, b0, b1, logits);
      }
      for (int64_t u = cols.begin; u < cols.end; ++u) {
        const auto w = cols.window(a, i, u);
        T* o = out + i * s.B * s.C + u * s.D;
#pragma omp simd
        for (int64_t d = 0; d < s.D; ++d) {
          const T sr = w.r0[d] + w.R.f * (w.r1[d] - w.r0[d]);
          const T sl = w.l0[d] + w.L.f * (w.l1[d] - w.l0[d]);
          o[d] = (sr - sl) * invK;
        }
      }
    }
  });
}

// Backward in one pass forwards in time. Output i reads four rows of S, so
//   dL/dp_edge = g_i . (S_k1 - S_k0) / K        (offset gradients, through the clamp)
//   dL/dS_r   += the lerp weights times g_i / K (+ for the right edge, - for the left).
// Row r of S is x_0 + ... + x_{r-1}, so dL/dx_t = sum_{r > t} dL/dS_r. The scattered
// weights of every output sum to zero (+1/K right, -1/K left), so that suffix sum equals
// minus the prefix sum_{r <= t} dL/dS_r, which is final as soon as no later output can
// reach row t (t < i + 1 - l_max): one running sum per column, no second pass.
// With `stream`, rows of dL/dx go out with non-temporal stores (stream_row): worth it once
// dL/dx is larger than the caches (T = 8192, B = 8, C = 512: backward 36 -> 30 ms).
//
// With `proj` (layer_backward), the offsets' own backward joins the pass: at step i the
// logits' gradient of token (i, b) is ga sig (1 - sig) keep, which adds its outer product
// with x_i (in cache: it entered the table r_max + 2 steps before) to dL/dW, and its
// product with W to dL/dx_i when row i is finalized l_max steps later. Each thread then
// owns whole tokens (all heads of its batch entries) and its own dL/dW, summed at the end.
template <typename T>
struct ProjectionGrad {
  const T *W, *sig, *keep;  // W (A, C); sig and keep (T, B, A), keep may be null
  T* glog;                  // (T, B, A): dL/dlogits
  std::vector<std::vector<T>>* gw;  // one (A, C) partial per block, by its first column
};

template <typename T>
void backward_kernel(const Shape& s, const T* g, const T* x, const T* a, T* gx, T* ga,
                     bool stream, const ProjectionGrad<T>* proj = nullptr) {
  const T invK = T(1) / static_cast<T>(s.l_max + s.r_max + 1);
  const int64_t unit = proj ? s.H : 1;  // columns per work item: whole tokens with proj
  at::parallel_for(0, s.B * s.H / unit, 1, [&](int64_t lo, int64_t hi) {
    const int64_t begin = lo * unit, end = hi * unit;
    Columns<T> cols(s, begin, end), dS(s, begin, end);
    std::vector<T> acc(static_cast<size_t>((end - begin) * s.D), T(0)), neg(s.D);
    T* gw = nullptr;
    if (proj) {
      (*proj->gw)[begin].assign(static_cast<size_t>(s.A * s.C), T(0));
      gw = (*proj->gw)[begin].data();
    }
    int64_t next = 0;  // dL/dx is written below row `next`
    auto finalize_up_to = [&](int64_t highest) {
      for (; next <= highest; ++next) {
        T* gxr = gx + next * s.B * s.C;
        for (int64_t u = begin; u < end; ++u) {
          T* row = dS.row(u, next);
          T* sum = acc.data() + (u - begin) * s.D;
          T* gxu = gxr + u * s.D;
          T* out = stream ? neg.data() : gxu;
#pragma omp simd
          for (int64_t d = 0; d < s.D; ++d) {
            sum[d] += row[d];
            out[d] = -sum[d];
            row[d] = T(0);
          }
          if (proj) {  // + dL/dx through the offsets: glog (A) . W[:, head's channels]
            const int64_t b = u / s.H, h = u % s.H;
            add_rows(proj->glog + (next * s.B + b) * s.A, s.A, proj->W + h * s.D, s.C, s.D,
                     out);
          }
          if (stream) stream_row(gxu, out, s.D);
        }
      }
    };
    for (int64_t i = 0; i < s.T; ++i) {
      extend_table(cols, x, std::min(s.T, i + s.r_max + 2));
      for (int64_t u = begin; u < end; ++u) {
        const auto w = cols.window(a, i, u);
        const T* gi = g + i * s.B * s.C + u * s.D;
        T dl = 0, dr = 0;
#pragma omp simd reduction(+ : dl, dr)
        for (int64_t d = 0; d < s.D; ++d) {
          dl += gi[d] * (w.l1[d] - w.l0[d]);
          dr += gi[d] * (w.r1[d] - w.r0[d]);
        }
        // left = i - a_l l_max and o = S(right + 1) - S(left): dL/da_l = +l_max dl / K
        const int64_t k = (i * s.B + u / s.H) * s.A + u % s.H;
        ga[k] = w.L.pass ? dl * invK * static_cast<T>(s.l_max) : T(0);
        if (!s.causal) ga[k + s.H] = w.R.pass ? dr * invK * static_cast<T>(s.r_max) : T(0);
        T *gl0 = dS.row(u, w.L.k0), *gl1 = dS.row(u, w.L.k1);
        T *gr0 = dS.row(u, w.R.k0), *gr1 = dS.row(u, w.R.k1);
        const T wl1 = w.L.f * invK, wl0 = invK - wl1, wr1 = w.R.f * invK, wr0 = invK - wr1;
        // Rows may coincide (gl1 == gr0 when left is an integer); only at the same d, which
        // keeps the loop free of dependences between iterations.
#pragma omp simd
        for (int64_t d = 0; d < s.D; ++d) {
          gr0[d] += wr0 * gi[d];
          gr1[d] += wr1 * gi[d];
          gl0[d] -= wl0 * gi[d];
          gl1[d] -= wl1 * gi[d];
        }
      }
      if (proj) {  // logits' gradient of tokens (i, b), b in the block, and their dL/dW
        const int64_t b0 = begin / s.H, n = end / s.H - b0, k0 = (i * s.B + b0) * s.A;
        for (int64_t k = k0; k < k0 + n * s.A; ++k) {
          const T v = proj->sig[k], dv = ga[k] * v * (T(1) - v);
          proj->glog[k] = proj->keep ? dv * proj->keep[k] : dv;
        }
        outer_add(proj->glog + k0, x + (i * s.B + b0) * s.C, n, s.A, s.C, gw);
      }
      finalize_up_to(i - s.l_max);  // later outputs read rows >= i + 1 - l_max only
    }
    finalize_up_to(s.T - 1);
    if (stream) fence();
  });
}

Shape shape_of(const torch::Tensor& x, const torch::Tensor& a, int64_t heads, int64_t l_max,
               int64_t r_max) {
  TORCH_CHECK(x.dim() == 3 && a.dim() == 3, "talk: x and a must be (T, B, C) and (T, B, H or 2H)");
  TORCH_CHECK(x.is_contiguous() && a.is_contiguous(), "talk: inputs must be contiguous");
  TORCH_CHECK(x.device().is_cpu() && a.device().is_cpu(), "talk: the C++ kernel is CPU only");
  TORCH_CHECK(a.scalar_type() == x.scalar_type(), "talk: offsets must have the input's dtype");
  Shape s;
  s.T = x.size(0);
  s.B = x.size(1);
  s.C = x.size(2);
  s.H = heads;
  s.A = a.size(2);
  TORCH_CHECK(s.H > 0 && s.C % s.H == 0, "talk: channels must be divisible by heads");
  TORCH_CHECK(a.size(0) == s.T && a.size(1) == s.B && (s.A == s.H || s.A == 2 * s.H),
              "talk: a must be (T, B, H) for a causal layer or (T, B, 2H): left, then right");
  TORCH_CHECK(l_max >= 0 && r_max >= 0, "talk: l_max and r_max must be >= 0");
  s.causal = s.A == s.H;
  s.D = s.C / s.H;
  s.l_max = l_max;
  s.r_max = s.causal ? 0 : r_max;
  s.R = s.l_max + s.r_max + 3;
  s.invR = 1.0 / static_cast<double>(s.R);
  return s;
}

bool streams(const torch::Tensor& t, int64_t stream_min_bytes) {
  return stream_min_bytes >= 0 && static_cast<int64_t>(t.nbytes()) >= stream_min_bytes;
}

torch::Tensor forward(torch::Tensor x, torch::Tensor a, int64_t heads, int64_t l_max,
                      int64_t r_max) {
  const Shape s = shape_of(x, a, heads, l_max, r_max);
  auto out = torch::empty_like(x);
  if (x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "talk_forward", [&] {
    forward_kernel<scalar_t>(s, x.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(),
                             out.data_ptr<scalar_t>());
  });
  return out;
}

// A TaLK layer's forward: offsets sig = sigmoid(x W^T + b), a = sig * keep, and the window
// average, in one pass over x. weight (A, C), bias (A), keep (T, B, A) or undefined.
// Returns (out, sig, a).
std::vector<torch::Tensor> layer_forward(torch::Tensor x, torch::Tensor weight,
                                         torch::Tensor bias, c10::optional<torch::Tensor> keep,
                                         int64_t heads, int64_t l_max, int64_t r_max) {
  TORCH_CHECK(weight.dim() == 2 && x.dim() == 3 && weight.size(1) == x.size(2) &&
                  bias.dim() == 1 && bias.size(0) == weight.size(0),
              "talk: weight must be (A, C) and bias (A) for x (T, B, C)");
  const int64_t A = weight.size(0), Ap = (A + 15) / 16 * 16;
  auto sig = torch::empty({x.size(0), x.size(1), A}, x.options());
  const bool dropout = keep.has_value() && keep->defined();
  auto a = dropout ? torch::empty_like(sig) : sig;
  if (dropout) {
    TORCH_CHECK(keep->sizes() == sig.sizes() && keep->is_contiguous() &&
                    keep->scalar_type() == x.scalar_type(),
                "talk: keep must be a contiguous (T, B, A) tensor of x's dtype");
  }
  const Shape s = shape_of(x, sig, heads, l_max, r_max);
  auto out = torch::empty_like(x);
  if (x.numel() == 0) return {out, sig, a};
  auto Wt = torch::zeros({s.C, Ap}, x.options());
  Wt.narrow(1, 0, A).copy_(weight.t());
  auto b = bias.contiguous().to(x.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "talk_layer_forward", [&] {
    const Projection<scalar_t> proj{Wt.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                                    dropout ? keep->data_ptr<scalar_t>() : nullptr,
                                    sig.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), Ap};
    forward_kernel<scalar_t>(s, x.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(),
                             out.data_ptr<scalar_t>(), &proj);
  });
  return {out, sig, a};
}

std::vector<torch::Tensor> backward(torch::Tensor g, torch::Tensor x, torch::Tensor a,
                                    int64_t heads, int64_t l_max, int64_t r_max,
                                    int64_t stream_min_bytes) {
  const Shape s = shape_of(x, a, heads, l_max, r_max);
  TORCH_CHECK(g.sizes() == x.sizes() && g.is_contiguous() && g.scalar_type() == x.scalar_type(),
              "talk: grad_output must match the input");
  auto gx = torch::empty_like(x);
  auto ga = torch::empty_like(a);
  if (x.numel() == 0) return {gx.zero_(), ga.zero_()};
  const bool stream = streams(gx, stream_min_bytes);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "talk_backward", [&] {
    backward_kernel<scalar_t>(s, g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                              a.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(),
                              ga.data_ptr<scalar_t>(), stream);
  });
  return {gx, ga};
}

// A TaLK layer's backward (see layer_forward): dL/dx (window and offsets), dL/dW, dL/db.
// sig and a are layer_forward's; keep (T, B, A) or undefined.
std::vector<torch::Tensor> layer_backward(torch::Tensor g, torch::Tensor x, torch::Tensor weight,
                                          torch::Tensor sig, torch::Tensor a,
                                          c10::optional<torch::Tensor> keep, int64_t heads,
                                          int64_t l_max, int64_t r_max,
                                          int64_t stream_min_bytes) {
  const Shape s = shape_of(x, a, heads, l_max, r_max);
  TORCH_CHECK(g.sizes() == x.sizes() && g.is_contiguous() && g.scalar_type() == x.scalar_type(),
              "talk: grad_output must match the input");
  TORCH_CHECK(weight.sizes() == torch::IntArrayRef({s.A, s.C}) && sig.sizes() == a.sizes() &&
                  sig.is_contiguous(),
              "talk: weight must be (A, C) and sig like a");
  const bool dropout = keep.has_value() && keep->defined();
  auto W = weight.contiguous().to(x.scalar_type());
  auto gx = torch::empty_like(x);
  auto ga = torch::empty_like(a);
  auto glog = torch::empty_like(a);  // every entry written before it is read
  auto gW = torch::zeros({s.A, s.C}, x.options());
  if (x.numel() == 0) return {gx.zero_(), gW, gW.sum(1)};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "talk_layer_backward", [&] {
    std::vector<std::vector<scalar_t>> parts(static_cast<size_t>(s.B * s.H));
    const ProjectionGrad<scalar_t> proj{W.data_ptr<scalar_t>(), sig.data_ptr<scalar_t>(),
                                        dropout ? keep->data_ptr<scalar_t>() : nullptr,
                                        glog.data_ptr<scalar_t>(), &parts};
    backward_kernel<scalar_t>(s, g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                              a.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(),
                              ga.data_ptr<scalar_t>(), streams(gx, stream_min_bytes), &proj);
    scalar_t* out = gW.data_ptr<scalar_t>();
    for (const auto& p : parts)
      for (size_t k = 0; k < p.size(); ++k) out[k] += p[k];
  });
  return {gx, gW, glog.sum({0, 1})};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "TaLK window average (Lioutas & Guo 2020, Eq. 3-6), CPU forward and backward";
  m.def("forward", &forward, "(x, a, heads, l_max, r_max) -> out");
  m.def("layer_forward", &layer_forward,
        "(x, weight, bias, keep or None, heads, l_max, r_max) -> (out, sig, a): the offsets "
        "sigmoid(x W^T + b) (times keep) and the window average in one pass",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("keep"), py::arg("heads"),
        py::arg("l_max"), py::arg("r_max"));
  m.def("backward", &backward,
        "(grad_out, x, a, heads, l_max, r_max, stream_min_bytes) -> (grad_x, grad_a); "
        "grad_x is written with non-temporal stores when it has at least stream_min_bytes "
        "(never when negative)",
        py::arg("g"), py::arg("x"), py::arg("a"), py::arg("heads"), py::arg("l_max"),
        py::arg("r_max"), py::arg("stream_min_bytes") = -1);
  m.def("layer_backward", &layer_backward,
        "(grad_out, x, weight, sig, a, keep or None, heads, l_max, r_max, stream_min_bytes) -> "
        "(grad_x, grad_weight, grad_bias) of layer_forward",
        py::arg("g"), py::arg("x"), py::arg("weight"), py::arg("sig"), py::arg("a"),
        py::arg("keep"), py::arg("heads"), py::arg("l_max"), py::arg("r_max"),
        py::arg("stream_min_bytes") = -1);
}
