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
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

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

// dst[0:n] = src[0:n] with non-temporal stores when the CPU has them (AVX-512 here) and dst
// is 64-byte aligned: the stores skip the read-for-ownership of dst's cache lines, a third
// of the memory traffic of writing a tensor larger than the caches. Plain stores otherwise.
// Streamed stores are weakly ordered: the writing thread ends with fence().
#if defined(__AVX512F__)
inline void stream64(float* dst, const float* src) { _mm512_stream_ps(dst, _mm512_loadu_ps(src)); }
inline void stream64(double* dst, const double* src) {
  _mm512_stream_pd(dst, _mm512_loadu_pd(src));
}
#endif

template <typename T>
inline void stream_row(T* dst, const T* src, int64_t n) {
#if defined(__AVX512F__)
  constexpr int64_t lanes = 64 / sizeof(T);  // one 64-byte store
  if (n % lanes == 0 && reinterpret_cast<std::uintptr_t>(dst) % 64 == 0) {
    for (int64_t d = 0; d < n; d += lanes) stream64(dst + d, src + d);
    return;
  }
#endif
  std::copy(src, src + n, dst);
}

inline void fence() {
#if defined(__AVX512F__)
  _mm_sfence();
#endif
}

struct Shape {
  int64_t T, B, C, H, A, D, l_max, r_max, R;  // A = H (causal) or 2H offsets per token
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

// Columns u = b * H + h of a thread are contiguous in every row (offset u * D), so the
// kernels walk time in the outer loop and the thread's columns in the inner one: each time
// step reads and writes one contiguous slice per tensor. ring holds R rows of D per column.
template <typename T>
struct Columns {
  const Shape& s;
  int64_t begin, end;  // columns [begin, end)
  std::vector<T> ring;
  Columns(const Shape& s_, int64_t b, int64_t e)
      : s(s_), begin(b), end(e), ring(static_cast<size_t>((e - b) * s_.R * s_.D), T(0)) {}
  T* row(int64_t u, int64_t r) { return ring.data() + ((u - begin) * s.R + r % s.R) * s.D; }
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

// Advance the table of every column to row `upto`: S_r = S_{r-1} + x_{r-1}.
template <typename T>
inline void extend_table(Columns<T>& cols, const T* x, int64_t& done, int64_t upto) {
  const Shape& s = cols.s;
  for (int64_t r = done + 1; r <= upto; ++r) {
    const T* xr = x + (r - 1) * s.B * s.C;
    for (int64_t u = cols.begin; u < cols.end; ++u) {
      const T* prev = cols.row(u, r - 1);
      T* cur = cols.row(u, r);
      const T* xu = xr + u * s.D;
#pragma omp simd
      for (int64_t d = 0; d < s.D; ++d) cur[d] = prev[d] + xu[d];
    }
  }
  done = std::max(done, upto);
}

template <typename T>
void forward_kernel(const Shape& s, const T* x, const T* a, T* out) {
  const T invK = T(1) / static_cast<T>(s.l_max + s.r_max + 1);
  at::parallel_for(0, s.B * s.H, 1, [&](int64_t begin, int64_t end) {
    Columns<T> cols(s, begin, end);
    int64_t done = 0;
    for (int64_t i = 0; i < s.T; ++i) {
      extend_table(cols, x, done, std::min(s.T, i + s.r_max + 2));
      for (int64_t u = begin; u < end; ++u) {
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
template <typename T>
void backward_kernel(const Shape& s, const T* g, const T* x, const T* a, T* gx, T* ga,
                     bool stream) {
  const T invK = T(1) / static_cast<T>(s.l_max + s.r_max + 1);
  at::parallel_for(0, s.B * s.H, 1, [&](int64_t begin, int64_t end) {
    Columns<T> cols(s, begin, end), dS(s, begin, end);
    std::vector<T> acc(static_cast<size_t>((end - begin) * s.D), T(0)), neg(s.D);
    int64_t done = 0, next = 0;  // S has rows 0..done; dL/dx is written below row `next`
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
          if (stream) stream_row(gxu, out, s.D);
        }
      }
    };
    for (int64_t i = 0; i < s.T; ++i) {
      extend_table(cols, x, done, std::min(s.T, i + s.r_max + 2));
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
  return s;
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

std::vector<torch::Tensor> backward(torch::Tensor g, torch::Tensor x, torch::Tensor a,
                                    int64_t heads, int64_t l_max, int64_t r_max,
                                    int64_t stream_min_bytes) {
  const Shape s = shape_of(x, a, heads, l_max, r_max);
  TORCH_CHECK(g.sizes() == x.sizes() && g.is_contiguous() && g.scalar_type() == x.scalar_type(),
              "talk: grad_output must match the input");
  auto gx = torch::empty_like(x);
  auto ga = torch::empty_like(a);
  if (x.numel() == 0) return {gx.zero_(), ga.zero_()};
  const bool stream = stream_min_bytes >= 0 &&
                      static_cast<int64_t>(gx.nbytes()) >= stream_min_bytes;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "talk_backward", [&] {
    backward_kernel<scalar_t>(s, g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                              a.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(),
                              ga.data_ptr<scalar_t>(), stream);
  });
  return {gx, ga};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "TaLK window average (Lioutas & Guo 2020, Eq. 3-6), CPU forward and backward";
  m.def("forward", &forward, "(x, a, heads, l_max, r_max) -> out");
  m.def("backward", &backward,
        "(grad_out, x, a, heads, l_max, r_max, stream_min_bytes) -> (grad_x, grad_a); "
        "grad_x is written with non-temporal stores when it has at least stream_min_bytes "
        "(never when negative)",
        py::arg("g"), py::arg("x"), py::arg("a"), py::arg("heads"), py::arg("l_max"),
        py::arg("r_max"), py::arg("stream_min_bytes") = -1);
}
