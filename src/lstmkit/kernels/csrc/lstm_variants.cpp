// One LSTM layer and direction with variants, forward and backward, the time loop in C++ (ATen).
//
// The equations are lstmkit.reference.variant_layer_forward's (see src/lstmkit/nn/variants.py);
// this file only makes them fast. Python computes the input projection for all steps at once
// (gx = x W_ih^T, one GEMM) and hands it here with the effective recurrent weight (W_hh already
// multiplied by its DropConnect mask); the kernel adds LN(gx) g_ih (or gx) and the bias b_ih + b_hh
// row by row, and returns the gradient of gx. Per step, forward is
//
//     r = h_in W_hh^T            one GEMM (B, H) x (H, 4H), h_in = h_{t-1} * m_rec
//     fused(r, gx_t, ...)        ONE pass over each batch row: LN of r, the gates, c'_t, LN of c'_t,
//                                h'_t, zoneout and the lengths mask
//
// and backward walks the steps in reverse with one element-wise pass and one GEMM per step
// (dh_in = da_h W_hh), then forms the weight gradients with single GEMMs / reductions over all
// steps after the loop (dW_hh = da_h^T h_in over T*B rows, oneDNN reading da_h transposed in place).
//
// Threads: with n > 1 torch threads and >= 4 rows per thread, the batch rows are split into n
// blocks and each thread runs the whole time loop (GEMM + fused pass per step) on its block, in
// one parallel region per call (see run_threads); otherwise one thread runs the loop and only the
// GEMMs are parallel.
//
// Shapes (T steps, B batch, H hidden; gates stacked (i, f, g, o) as torch does):
//   gx (T, B, 4H)   h0, c0 (B, H)   w_hh (4H, H)   ln_hh (4H)   ln_c_w, ln_c_b (H)   w_ch (3H)
//   rec (B, H)      zh, zc (T, B, H)   valid (T, B) with 1 where t < length, else 0
//   ln_ih (4H)      bias (4H) = b_ih + b_hh
// Saved for backward (only when `save`): gates (T, B, 4H) activations, cnew (T, B, H) c'_t (a view
//   of cs when nothing separates c'_t from c_t), cs (T+1, B, H) the carried cell states, and with
//   layer norm xh (T, B, 4H) normalised r, rh (T, B) its 1/std, mc, rc (T, B) mean and 1/std of
//   c'_t (tanh(n_t) and LN(c'_t) are recomputed in backward, bit for bit);
//   with ln_ih, xx (T, B, 4H) normalised gx and rx (T, B).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cmath>
#include <exception>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

using at::Tensor;
using OptT = std::optional<Tensor>;

// torch's oneDNN matmul (result = beta * result + alpha * mat1 @ mat2, inputs contiguous or
// transposed-contiguous, no copies), from libtorch_cpu; its header is not shipped, and the weak
// declaration leaves it null (so at::mm runs) in a torch that lacks it or changed its signature.
namespace at::native {
__attribute__((weak)) void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result, float beta,
                                         float alpha);
}  // namespace at::native

namespace {

// ---- element-wise maths: float gets a branch-free exp that GCC vectorises; double stays exact ----

inline float fast_exp(float x) {  // Cephes expf, branch-free: |rel err| < 1e-7 on [-87, 88]
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float t = x * 1.44269504088896341f + 12582912.0f;  // round(x / ln 2) in the low mantissa bits
  const float n = t - 12582912.0f;
  int ti;
  __builtin_memcpy(&ti, &t, sizeof(float));
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const int bits = (ti - 0x4B400000 + 127) << 23;  // 2^n
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof(float));
  return e * scale;
}
inline double fast_exp(double x) { return std::exp(x); }

template <typename T>
inline T sigm(T x) {
  return T(1) / (T(1) + fast_exp(-x));
}
template <typename T>
inline T tanh_(T x) {
  return T(1) - T(2) / (T(1) + fast_exp(T(2) * x));
}
inline double tanh_(double x) { return std::tanh(x); }

template <typename T>
inline const T* ptr_or_null(const OptT& t) {
  return (t.has_value() && t->defined()) ? t->data_ptr<T>() : nullptr;
}

inline bool has(const OptT& t) { return t.has_value() && t->defined(); }

// ---- threads: the batch rows split across threads for the whole time loop ----
//
// Rows of a batch never interact in an LSTM layer, so with n threads each thread runs the WHOLE
// time loop (forward or backward) on its own block of B/n rows: its own single-threaded GEMM on
// those rows per step and its own element-wise pass, no barrier and no fork/join per step. One
// OpenMP parallel region (torch's own runtime: the extension is built with -fopenmp and resolves
// libgomp through libtorch) per layer call; inside it at::parallel_for, oneDNN and MKL see
// omp_in_parallel() and stay on their calling thread.
//
//   B rows  +-------------+
//           | thread 0    |  rows [0, B/n):  for t: r = h_{t-1}[rows] W_hh^T; row pass
//           +-------------+
//           | thread 1    |  rows [B/n, 2B/n): same loop, independently
//           +-------------+
//
// Below kMinRowsPerThread rows per thread (B = 1: a GEMV) the rows stay together and the GEMM
// itself is the only parallel part, as torch does it.
constexpr int64_t kMinRowsPerThread = 4;

// How many threads split the batch: 1 (no split) unless OpenMP is compiled in, torch has > 1 thread,
// we are not already inside a parallel region, and each thread gets >= kMinRowsPerThread rows.
// LSTMKIT_BATCH_SPLIT=0 turns the split off (for A/B measurements).
int split_threads(int64_t B) {
#ifdef _OPENMP
  static const char* env = std::getenv("LSTMKIT_BATCH_SPLIT");
  if (env != nullptr && env[0] == '0') return 1;
  if (at::in_parallel_region()) return 1;
  const int64_t nt = at::get_num_threads();
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nt, B / kMinRowsPerThread)));
#else
  (void)B;
  return 1;
#endif
}

// Rows [b0, b1) of thread `tid` of `n` (balanced: sizes differ by at most one).
inline std::pair<int64_t, int64_t> rows_of(int64_t B, int tid, int n) { return {B * tid / n, B * (tid + 1) / n}; }

// ---- small batches (B = 1): the weight split across threads, two barriers per step ----
//
// With a few rows the per-step GEMM is a GEMV that streams all of W_hh (4H x H: 1 MiB at H = 256,
// more than one core's L2) from L3 each step. Split by output units, each thread reads a fixed
// half that stays in its own L2, which is where torch's second core pays off at B = 1:
//
//   step t:  all threads   r[:, j0:j1] = h_in W_hh[j0:j1]^T     (own rows of W_hh, hand GEMV)
//            barrier
//            thread 0      fused pass over the B rows (writes h_t, c_t)
//            barrier
//
// Backward alike with dh_in[:, u0:u1] = da_h W_hh[:, u0:u1] (rows of W_hh^T, copied once per call).
// Only for H >= kMinHiddenForColumnSplit: below, the barriers cost more than the GEMV.
constexpr int64_t kMinHiddenForColumnSplit = 64;

// Threads for the weight split: when the batch is not split, torch has > 1 thread and H is large.
// LSTMKIT_COLUMN_SPLIT=0 turns it off (for A/B measurements).
int column_threads(int64_t B, int64_t H) {
#ifdef _OPENMP
  static const char* env = std::getenv("LSTMKIT_COLUMN_SPLIT");
  if (env != nullptr && env[0] == '0') return 1;
  if (B < 1 || split_threads(B) > 1 || H < kMinHiddenForColumnSplit || at::in_parallel_region()) return 1;
  return static_cast<int>(std::min<int64_t>(at::get_num_threads(), 4 * H / 16));
#else
  (void)B;
  (void)H;
  return 1;
#endif
}

// A sense-counting spin barrier for the threads of one region (yields after a while, so that an
// oversubscribed machine does not starve the thread it waits for). abort() releases every waiter
// with an exception, so a thread that failed cannot leave the others spinning.
class SpinBarrier {
 public:
  explicit SpinBarrier(int n) : n_(n) {}
  // The team OpenMP actually gave (it may give fewer threads than asked: OMP_THREAD_LIMIT, OMP_DYNAMIC).
  // Every thread calls it with the same n before its first wait(), so no wait() can see another count.
  void expect(int n) { n_.store(n, std::memory_order_relaxed); }
  void wait() {
    const int gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_.load(std::memory_order_relaxed) - 1) {
      count_.store(0, std::memory_order_relaxed);
      gen_.fetch_add(1, std::memory_order_release);
      return;
    }
    for (int spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) {
      if (aborted_.load(std::memory_order_relaxed)) throw std::runtime_error("lstmkit: another thread failed");
      if (spins > 4000) std::this_thread::yield();
    }
  }
  void abort() { aborted_.store(true); }

 private:
  std::atomic<int> n_;
  std::atomic<int> count_{0}, gen_{0};
  std::atomic<bool> aborted_{false};
};

// out[b * ldo + j] = x[b] . W[j] for rows b < B and outputs j in [j0, j1): x (B, K), W (N, K)
// row-major. Four outputs at a time, so each x element loaded feeds four FMAs.
template <typename T>
void gemv_rows(const T* x, int64_t B, int64_t K, const T* W, int64_t j0, int64_t j1, T* out, int64_t ldo) {
  for (int64_t b = 0; b < B; ++b) {
    const T* xb = x + b * K;
    T* ob = out + b * ldo;
    int64_t j = j0;
    for (; j + 4 <= j1; j += 4) {
      const T *w0 = W + j * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
      T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      #pragma omp simd reduction(+ : s0, s1, s2, s3)
      for (int64_t k = 0; k < K; ++k) {
        s0 += xb[k] * w0[k];
        s1 += xb[k] * w1[k];
        s2 += xb[k] * w2[k];
        s3 += xb[k] * w3[k];
      }
      ob[j] = s0;
      ob[j + 1] = s1;
      ob[j + 2] = s2;
      ob[j + 3] = s3;
    }
    for (; j < j1; ++j) {
      const T* w0 = W + j * K;
      T s0 = 0;
      #pragma omp simd reduction(+ : s0)
      for (int64_t k = 0; k < K; ++k) s0 += xb[k] * w0[k];
      ob[j] = s0;
    }
  }
}

// Outputs [j0, j1) of thread tid of n among N, in blocks of 16 (a cache line of float32).
inline std::pair<int64_t, int64_t> cols_of(int64_t N, int tid, int n) {
  const int64_t blocks = (N + 15) / 16;
  return {std::min(N, blocks * tid / n * 16), std::min(N, blocks * (tid + 1) / n * 16)};
}

// body(tid, n) on n threads in one parallel region (body(0, 1) inline when n == 1), each thread with
// the caller's thread-local state (grad mode, dispatch keys); the first exception is rethrown here.
template <typename F>
void run_threads(int n, const F& body) {
  if (n <= 1) {
    body(0, 1);
    return;
  }
#ifdef _OPENMP
  const at::ThreadLocalState tls;
  std::exception_ptr err;
  std::atomic_flag failed = ATOMIC_FLAG_INIT;
  // No num_threads clause (GOMP's pool misbehaves with varying team sizes, pytorch#32008): the team
  // is torch's thread count; threads past n have no rows.
#pragma omp parallel
  {
    const int tid = omp_get_thread_num();
    const int m = std::min(n, omp_get_num_threads());
    if (tid < m) {
      try {
        at::ThreadLocalStateGuard tls_guard(tls);
        at::internal::ThreadIdGuard tid_guard(tid);
        c10::ParallelGuard parallel_guard(true);
        body(tid, m);
      } catch (...) {
        if (!failed.test_and_set()) err = std::current_exception();
      }
    }
  }
  if (err) std::rethrow_exception(err);
#else
  body(0, 1);
#endif
}

// ---- GEMMs: oneDNN for float32 where torch has it (2x MKL's speed on AMD CPUs), else at::mm ----

// Below this many rows (a GEMV, really) MKL's at::mm beats oneDNN's matmul; above, oneDNN wins ~2x.
constexpr int64_t kOneDnnMinRows = 8;

const std::optional<c10::OperatorHandle>& onednn_op(const char* name) {
  static std::optional<c10::OperatorHandle> lp = c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
  static std::optional<c10::OperatorHandle> rw =
      c10::Dispatcher::singleton().findSchema({"mkldnn::_reorder_linear_weight", ""});
  return name[0] == 'l' ? lp : rw;
}

std::atomic<bool> onednn_broken{false};  // set if a oneDNN call ever throws (another torch's schema)
std::atomic<bool> onednn_ok{false};      // set by the first oneDNN call that worked: only then pack
std::atomic<bool> matmul_broken{false};  // mm_tn's own: its failure must not touch a packed per-step GEMM

inline bool use_onednn(const Tensor& x) {
  return x.scalar_type() == at::kFloat && x.size(0) >= kOneDnnMinRows && onednn_op("linear").has_value() &&
         !onednn_broken.load();
}

// Whether to prepack W_hh for the per-step GEMM: LSTMKIT_ONEDNN_PACK=1 always, 0 never; unset: when
// that GEMM runs on one thread -- one torch thread, or the batch split across threads (measured:
// prepacked is ~2x faster single-threaded for 20-32 rows; a multi-threaded GEMM scales better plain).
bool want_pack(bool single_thread) {
  static const char* env = std::getenv("LSTMKIT_ONEDNN_PACK");
  if (env != nullptr && env[0] == '1') return true;
  if (env != nullptr && env[0] == '0') return false;
  return single_thread;
}

// w (N, K) -> oneDNN's packed layout for `rows`-row inputs (float32 only; else w itself), for a GEMM
// that runs on one thread (`single_thread`: torch has one, or the batch is split across threads).
Tensor pack_weight(const Tensor& w, int64_t rows, bool single_thread) {
  const auto& rw = onednn_op("reorder");
  if (w.scalar_type() != at::kFloat || rows < kOneDnnMinRows || !rw.has_value() || !onednn_op("linear").has_value() ||
      !want_pack(single_thread) || onednn_broken.load() || !onednn_ok.load())
    return w;
  try {
    std::vector<c10::IValue> stack = {w.contiguous(), c10::IValue(rows)};
    rw->callBoxed(&stack);
    return stack[0].toTensor();
  } catch (const std::exception&) {
    onednn_broken.store(true);
    return w;
  }
}

// x (M, K) @ w^T with w (N, K) (or w packed by pack_weight) -> (M, N); any strides.
Tensor linear_nt(const Tensor& x, const Tensor& w) {
  if (use_onednn(x)) {
    try {
      std::vector<c10::IValue> stack = {x, w, c10::IValue(), std::string("none"),
                                        c10::List<std::optional<at::Scalar>>(), c10::IValue()};
      onednn_op("linear")->callBoxed(&stack);
      onednn_ok.store(true);
      return stack[0].toTensor();
    } catch (const std::exception&) {
      onednn_broken.store(true);  // from now on at::mm; w is never packed once this is set
    }
  }
  return at::mm(x, w.t());
}

// a^T @ b for a (K, M), b (K, N) -> (M, N): the weight-gradient GEMMs over all T*B rows. oneDNN's
// matmul reads the transposed a in place; linear_nt would first copy a^T and b^T (3 ms of 7 at
// (T*B, 4H, H) = (3200, 1024, 256)), MKL's at::mm runs at half oneDNN's speed here.
Tensor mm_tn(const Tensor& a, const Tensor& b) {
  if (a.scalar_type() == at::kFloat && at::native::mkldnn_matmul != nullptr && !matmul_broken.load() &&
      a.is_contiguous() && b.is_contiguous()) {
    try {
      Tensor out = at::empty({a.size(1), b.size(1)}, a.options());
      at::native::mkldnn_matmul(a.t(), b, out, 0.0f, 1.0f);
      return out;
    } catch (const std::exception&) {
      matmul_broken.store(true);
    }
  }
  return at::mm(a.t(), b);
}

template <typename T>
void forward_impl(const Tensor& gx, const Tensor& h0, const Tensor& c0, const Tensor& w_hh, const OptT& ln_hh,
                  const OptT& ln_c_w, const OptT& ln_c_b, const OptT& w_ch, const OptT& rec, const OptT& zh,
                  const OptT& zc, const OptT& valid, const OptT& ln_ih, const OptT& bias, bool cifg, double clip,
                  double eps, bool save, std::vector<Tensor>& out) {
  const int64_t Tn = gx.size(0), B = gx.size(1), H4 = gx.size(2), H = H4 / 4;
  const bool ln = has(ln_hh), lnx = has(ln_ih), peep = has(w_ch);
  auto opt = gx.options();
  const int64_t TS = save ? Tn : 1;  // saved buffers hold every step, or just the current one
  Tensor y = at::empty({Tn, B, H}, opt);
  Tensor cs = at::empty({save ? Tn + 1 : 2, B, H}, opt);
  Tensor gates = at::empty({TS, B, H4}, opt);
  // Without zoneout on c or padding, c'_t is c_t: save it once (a view of cs) instead of twice.
  const bool alias_c = save && !has(zc) && !has(valid);
  Tensor cnew = alias_c ? Tensor() : at::empty({TS, B, H}, opt);
  Tensor tn = at::empty({1, B, H}, opt);  // tanh(n_t) of this step only: backward recomputes it
  Tensor xh = ln ? at::empty({TS, B, H4}, opt) : Tensor();
  Tensor rh = ln ? at::empty({TS, B}, opt) : Tensor();
  Tensor nh = ln ? at::empty({1, B, H}, opt) : Tensor();  // LN(c'_t) of this step; backward recomputes it
  Tensor mc = ln ? at::empty({TS, B}, opt) : Tensor();     // ... from c'_t and this mean
  Tensor rc = ln ? at::empty({TS, B}, opt) : Tensor();
  Tensor xx = lnx ? at::empty({TS, B, H4}, opt) : Tensor();  // normalised x W_ih^T
  Tensor rx = lnx ? at::empty({TS, B}, opt) : Tensor();
  const T *plnx = ptr_or_null<T>(ln_ih), *pbias = ptr_or_null<T>(bias);
  cs[0].copy_(c0);
  const T *pgx = gx.data_ptr<T>(), *prec = ptr_or_null<T>(rec), *pzh = ptr_or_null<T>(zh), *pzc = ptr_or_null<T>(zc);
  const T *pv = ptr_or_null<T>(valid), *plnh = ptr_or_null<T>(ln_hh), *plncw = ptr_or_null<T>(ln_c_w);
  const T *plncb = ptr_or_null<T>(ln_c_b), *pwch = ptr_or_null<T>(w_ch);
  const T Tclip = T(clip), Teps = T(eps);
  T* py = y.data_ptr<T>();
  // The fused pass of step t over rows [b0, b1); pr holds those rows' r = h_in W_hh^T, (b1 - b0, 4H),
  // and is overwritten. Rows are independent: threads call this on disjoint row blocks.
  auto rows = [&](int64_t t, int64_t b0, int64_t b1, T* pr) {
    const int64_t ts = save ? t : 0;
    const int64_t cp_i = save ? t : (t % 2), cn_i = save ? t + 1 : ((t + 1) % 2);
    const T* hp = t == 0 ? h0.data_ptr<T>() : py + (t - 1) * B * H;  // h_{t-1}, (B, H)
    const T* cp = cs.data_ptr<T>() + cp_i * B * H;                      // c_{t-1}
    T* cn_out = cs.data_ptr<T>() + cn_i * B * H;                         // c_t
    T* pg = gates.data_ptr<T>() + ts * B * H4;
    T* pcn = alias_c ? cs.data_ptr<T>() + (t + 1) * B * H : cnew.data_ptr<T>() + ts * B * H;
    T* ptn = tn.data_ptr<T>();
    T* pxh = ln ? xh.data_ptr<T>() + ts * B * H4 : nullptr;
    T* prh = ln ? rh.data_ptr<T>() + ts * B : nullptr;
    T* pnh = ln ? nh.data_ptr<T>() : nullptr;
    T* pmc = ln ? mc.data_ptr<T>() + ts * B : nullptr;
    T* prc = ln ? rc.data_ptr<T>() + ts * B : nullptr;
    T* pxx = lnx ? xx.data_ptr<T>() + ts * B * H4 : nullptr;
    T* prx = lnx ? rx.data_ptr<T>() + ts * B : nullptr;
    const T* gxt = pgx + t * B * H4;
    {
      for (int64_t b = b0; b < b1; ++b) {
        T* a = pr + (b - b0) * H4;  // becomes a_t = gx_t + (LN) r, in place
        const T* gb = gxt + b * H4;
        if (ln) {
          T mu = 0, var = 0;
          #pragma omp simd reduction(+ : mu)
          for (int64_t j = 0; j < H4; ++j) mu += a[j];
          mu /= H4;
          #pragma omp simd reduction(+ : var)
          for (int64_t j = 0; j < H4; ++j) var += (a[j] - mu) * (a[j] - mu);
          const T rs = T(1) / std::sqrt(var / H4 + Teps);
          prh[b] = rs;
          T* xb = pxh + b * H4;
          for (int64_t j = 0; j < H4; ++j) xb[j] = (a[j] - mu) * rs;
          for (int64_t j = 0; j < H4; ++j) a[j] = plnh[j] * xb[j];
        }
        if (lnx) {  // a += LN(x W_ih^T) g_ih
          T mu = 0, var = 0;
          #pragma omp simd reduction(+ : mu)
          for (int64_t j = 0; j < H4; ++j) mu += gb[j];
          mu /= H4;
          #pragma omp simd reduction(+ : var)
          for (int64_t j = 0; j < H4; ++j) var += (gb[j] - mu) * (gb[j] - mu);
          const T rs = T(1) / std::sqrt(var / H4 + Teps);
          prx[b] = rs;
          T* xb = pxx + b * H4;
          for (int64_t j = 0; j < H4; ++j) xb[j] = (gb[j] - mu) * rs;
          for (int64_t j = 0; j < H4; ++j) a[j] += plnx[j] * xb[j];
        } else {
          for (int64_t j = 0; j < H4; ++j) a[j] += gb[j];
        }
        if (pbias) {
          for (int64_t j = 0; j < H4; ++j) a[j] += pbias[j];
        }
        const T* cpb = cp + b * H;
        T *ai = a, *af = a + H, *ag = a + 2 * H, *ao = a + 3 * H;
        T *gi = pg + b * H4, *gf = gi + H, *gg = gi + 2 * H, *go = gi + 3 * H;
        T* c = pcn + b * H;
        if (peep) {
          for (int64_t j = 0; j < H; ++j) ai[j] += pwch[j] * cpb[j];
          for (int64_t j = 0; j < H; ++j) af[j] += pwch[H + j] * cpb[j];
        }
        for (int64_t j = 0; j < H; ++j) gf[j] = sigm(af[j]);
        if (cifg) {
          for (int64_t j = 0; j < H; ++j) gi[j] = T(1) - gf[j];
        } else {
          for (int64_t j = 0; j < H; ++j) gi[j] = sigm(ai[j]);
        }
        for (int64_t j = 0; j < H; ++j) gg[j] = tanh_(ag[j]);
        for (int64_t j = 0; j < H; ++j) c[j] = gf[j] * cpb[j] + gi[j] * gg[j];
        if (Tclip > 0) {
          for (int64_t j = 0; j < H; ++j) c[j] = c[j] < -Tclip ? -Tclip : (c[j] > Tclip ? Tclip : c[j]);
        }
        if (peep) {
          for (int64_t j = 0; j < H; ++j) ao[j] += pwch[2 * H + j] * c[j];
        }
        for (int64_t j = 0; j < H; ++j) go[j] = sigm(ao[j]);
        T* tnb = ptn + b * H;
        if (ln) {
          T mu = 0, var = 0;
          #pragma omp simd reduction(+ : mu)
          for (int64_t j = 0; j < H; ++j) mu += c[j];
          mu /= H;
          #pragma omp simd reduction(+ : var)
          for (int64_t j = 0; j < H; ++j) var += (c[j] - mu) * (c[j] - mu);
          const T rs = T(1) / std::sqrt(var / H + Teps);
          prc[b] = rs;
          pmc[b] = mu;
          T* nhb = pnh + b * H;
          for (int64_t j = 0; j < H; ++j) nhb[j] = (c[j] - mu) * rs;
          for (int64_t j = 0; j < H; ++j) tnb[j] = tanh_(plncw[j] * nhb[j] + plncb[j]);
        } else {
          for (int64_t j = 0; j < H; ++j) tnb[j] = tanh_(c[j]);
        }
        const T* hpb = hp + b * H;
        T* yb = py + t * B * H + b * H;
        T* cob = cn_out + b * H;
        if (pv && pv[t * B + b] == T(0)) {  // padding: carry the state
          for (int64_t j = 0; j < H; ++j) yb[j] = hpb[j];
          for (int64_t j = 0; j < H; ++j) cob[j] = cpb[j];
          continue;
        }
        for (int64_t j = 0; j < H; ++j) yb[j] = go[j] * tnb[j];
        if (pzh) {
          const T* z = pzh + t * B * H + b * H;
          for (int64_t j = 0; j < H; ++j) yb[j] = z[j] * hpb[j] + (T(1) - z[j]) * yb[j];
        }
        if (pzc) {
          const T* z = pzc + t * B * H + b * H;
          for (int64_t j = 0; j < H; ++j) cob[j] = z[j] * cpb[j] + (T(1) - z[j]) * c[j];
        } else {
          for (int64_t j = 0; j < H; ++j) cob[j] = c[j];
        }
      }
    }
  };
  const int nsplit = split_threads(B);
  const int ncol = column_threads(B, H);
  if (ncol > 1) {  // small batch: W_hh split across threads, the fused pass on thread 0
    Tensor rbuf = at::empty({B, H4}, opt);
    T* prb = rbuf.data_ptr<T>();
    const Tensor w_c = w_hh.contiguous();
    const T* pw = w_c.data_ptr<T>();
    SpinBarrier barrier(ncol);
    run_threads(ncol, [&](int tid, int n) {
      barrier.expect(n);  // n <= ncol: the columns are cut for the threads there are
      const auto [j0, j1] = cols_of(H4, tid, n);
      std::vector<T> hin(prec ? B * H : 0);  // h_{t-1} * m_rec, this thread's copy
      try {
        for (int64_t t = 0; t < Tn; ++t) {
          const T* hp = t == 0 ? h0.data_ptr<T>() : py + (t - 1) * B * H;  // (B, H)
          if (prec) {
            for (int64_t k = 0; k < B * H; ++k) hin[k] = hp[k] * prec[k];
            hp = hin.data();
          }
          gemv_rows(hp, B, H, pw, j0, j1, prb, H4);  // r[:, j0:j1]
          barrier.wait();
          if (tid == 0) rows(t, 0, B, prb);
          barrier.wait();
        }
      } catch (...) {
        barrier.abort();
        throw;
      }
    });
  } else {
  const bool single = nsplit > 1 || at::get_num_threads() == 1;  // each GEMM runs on one thread
  run_threads(nsplit, [&](int tid, int n) {
    const auto [b0, b1] = rows_of(B, tid, n);
    const int64_t nb = b1 - b0;
    const Tensor w_run = pack_weight(w_hh, nb, single);  // packed once per call and thread, read T times
    const Tensor rec_rows = prec ? rec->narrow(0, b0, nb) : Tensor();
    for (int64_t t = 0; t < Tn; ++t) {
      const Tensor hprev = (t == 0 ? h0 : y[t - 1]).narrow(0, b0, nb);  // h_{t-1} of these rows, (nb, H)
      Tensor r = (prec ? linear_nt(hprev * rec_rows, w_run) : linear_nt(hprev, w_run)).contiguous();  // (nb, 4H)
      rows(t, b0, b1, r.data_ptr<T>());
    }
  });
  }
  Tensor h_n = Tn > 0 ? y[Tn - 1].clone() : h0.clone();
  Tensor c_n = cs[save ? Tn : (Tn % 2)].clone();
  if (alias_c) cnew = cs.narrow(0, 1, Tn);
  out = {y, h_n, c_n, gates, cnew, cs};
  if (ln) {
    out.push_back(xh);
    out.push_back(rh);
    out.push_back(mc);
    out.push_back(rc);
  }
  if (lnx) {
    out.push_back(xx);
    out.push_back(rx);
  }
}

template <typename T>
void backward_impl(const Tensor& dy, const Tensor& dh_n, const Tensor& dc_n, const Tensor& h0, const Tensor& y,
                   const Tensor& w_hh, const OptT& ln_hh, const OptT& ln_c_w, const OptT& ln_c_b, const OptT& w_ch,
                   const OptT& rec,
                   const OptT& zh, const OptT& zc, const OptT& valid, const OptT& ln_ih, bool with_bias,
                   bool cifg, double clip, const std::vector<Tensor>& saved, std::vector<Tensor>& out) {
  const Tensor &gates = saved[0], &cnew = saved[1], &cs = saved[2];
  const bool ln = has(ln_hh), lnx = has(ln_ih), peep = has(w_ch);
  const int64_t Tn = dy.size(0), B = dy.size(1), H = dy.size(2), H4 = 4 * H;
  auto opt = dy.options();
  Tensor dgx = at::empty({Tn, B, H4}, opt);
  Tensor dah = (ln || lnx) ? at::empty({Tn, B, H4}, opt) : dgx;  // da_h: gradient of h_in W_hh^T
  Tensor dh_in = at::zeros({B, H}, opt);   // after the loop: da_h[0] W_hh, before the dropout mask
  Tensor dh_dir = dh_n.clone();            // the direct part of dL/dh_t (zoneout, padding, dh_n)
  Tensor dc = dc_n.clone();                // dL/dc_t
  Tensor w_t = w_hh.t();                   // (H, 4H): dh_in = da_h @ w_hh = linear(da_h, w_hh^T)
  const T *pg = gates.data_ptr<T>(), *pcn = cnew.data_ptr<T>(), *pcs = cs.data_ptr<T>();
  const T *pxh = ln ? saved[3].data_ptr<T>() : nullptr, *prh = ln ? saved[4].data_ptr<T>() : nullptr;
  const T *pmc = ln ? saved[5].data_ptr<T>() : nullptr, *prc = ln ? saved[6].data_ptr<T>() : nullptr;
  const size_t kx = ln ? 7 : 3;  // where LN(x W_ih^T)'s saved tensors start
  const T *pxx = lnx ? saved[kx].data_ptr<T>() : nullptr, *prx = lnx ? saved[kx + 1].data_ptr<T>() : nullptr;
  const T* plnx = ptr_or_null<T>(ln_ih);
  const T *pdy = dy.data_ptr<T>(), *prec = ptr_or_null<T>(rec), *pzh = ptr_or_null<T>(zh), *pzc = ptr_or_null<T>(zc);
  const T *pv = ptr_or_null<T>(valid), *plnh = ptr_or_null<T>(ln_hh), *plncw = ptr_or_null<T>(ln_c_w);
  const T *pwch = ptr_or_null<T>(w_ch), *plnc_b = ptr_or_null<T>(ln_c_b);
  const T Tclip = T(clip);
  T *pdgx = dgx.data_ptr<T>(), *pdah = dah.data_ptr<T>();
  T *pdhd = dh_dir.data_ptr<T>(), *pdc = dc.data_ptr<T>();
  // Per-thread accumulators of the vector parameters' gradients, summed after the loop:
  // [dln_hh (4H) | dln_c_w (H) | dln_c_b (H) | dw_ch (3H) | dbias (4H) | dln_ih (4H)], filled while
  // each row is in cache.
  const int64_t NA = 17 * H;
  const int nsplit = split_threads(B);
  std::vector<T> acc(static_cast<size_t>(nsplit) * NA, T(0));
  // The fused backward pass of step t over rows [b0, b1): pdhin holds those rows' da_h[t+1] W_hh,
  // (b1 - b0, H); ac is the calling thread's accumulator block.
  auto rows = [&](int64_t t, int64_t b0, int64_t b1, const T* pdhin, T* ac) {
    {
      std::vector<T> buf(6 * H);
      T *dh = buf.data(), *dcn = dh + H, *dcnew = dcn + H, *dnb = dcnew + H, *th = dnb + H, *nb = th + H;
      T *a_lnh = ac, *a_lncw = ac + 4 * H, *a_lncb = ac + 5 * H, *a_wch = ac + 6 * H, *a_b = ac + 9 * H;
      T* a_lnx = ac + 13 * H;
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t o3 = (t * B + b) * H4, o1 = (t * B + b) * H;
        T* dhd = pdhd + b * H;
        T* dcb = pdc + b * H;
        const T* dhi = pdhin + (b - b0) * H;
        const T* dyb = pdy + o1;
        T* dgb = pdgx + o3;
        T* dab = pdah + o3;
        // dL/dh_t = from above + direct (zoneout / padding / dh_n) + recurrent (through the dropout mask)
        if (prec) {
          const T* m = prec + b * H;
          for (int64_t j = 0; j < H; ++j) dh[j] = dyb[j] + dhd[j] + m[j] * dhi[j];
        } else {
          for (int64_t j = 0; j < H; ++j) dh[j] = dyb[j] + dhd[j] + dhi[j];
        }
        if (pv && pv[t * B + b] == T(0)) {  // padding: h_t = h_{t-1}, c_t = c_{t-1}
          for (int64_t j = 0; j < H; ++j) dhd[j] = dh[j];
          for (int64_t j = 0; j < H4; ++j) dgb[j] = T(0);
          if (ln || lnx) {
            for (int64_t j = 0; j < H4; ++j) dab[j] = T(0);
          }
          continue;
        }
        if (pzh) {  // h_t = z h_{t-1} + (1 - z) h'_t
          const T* z = pzh + o1;
          for (int64_t j = 0; j < H; ++j) dhd[j] = z[j] * dh[j];
          for (int64_t j = 0; j < H; ++j) dh[j] = (T(1) - z[j]) * dh[j];
        } else {
          for (int64_t j = 0; j < H; ++j) dhd[j] = T(0);
        }
        const T *gi = pg + o3, *gf = gi + H, *gg = gi + 2 * H, *go = gi + 3 * H;
        const T *cn = pcn + o1, *cp = pcs + o1;  // cs[t] = c_{t-1}
        if (ln) {  // recompute LN(c'_t) and tanh(n_t) exactly as forward did
          const T mu = pmc[t * B + b], rs = prc[t * B + b];
          for (int64_t j = 0; j < H; ++j) nb[j] = (cn[j] - mu) * rs;
          for (int64_t j = 0; j < H; ++j) th[j] = tanh_(plncw[j] * nb[j] + plnc_b[j]);
        } else {
          for (int64_t j = 0; j < H; ++j) th[j] = tanh_(cn[j]);
        }
        T *dai = dgb, *daf = dgb + H, *dag = dgb + 2 * H, *dao = dgb + 3 * H;
        // h'_t = o_t tanh(n_t)
        for (int64_t j = 0; j < H; ++j) dao[j] = dh[j] * th[j] * go[j] * (T(1) - go[j]);
        for (int64_t j = 0; j < H; ++j) dcn[j] = dh[j] * go[j] * (T(1) - th[j] * th[j]);  // dL/dn_t
        if (ln) {  // n = LN(c') g_c + b_c
          const T rs = prc[t * B + b];
          for (int64_t j = 0; j < H; ++j) dnb[j] = dcn[j];
          for (int64_t j = 0; j < H; ++j) a_lncw[j] += dnb[j] * nb[j];
          for (int64_t j = 0; j < H; ++j) a_lncb[j] += dnb[j];
          T m1 = 0, m2 = 0;
          #pragma omp simd reduction(+ : m1)
          for (int64_t j = 0; j < H; ++j) m1 += dnb[j] * plncw[j];
          #pragma omp simd reduction(+ : m2)
          for (int64_t j = 0; j < H; ++j) m2 += dnb[j] * plncw[j] * nb[j];
          m1 /= H;
          m2 /= H;
          for (int64_t j = 0; j < H; ++j) dcn[j] = rs * (dnb[j] * plncw[j] - m1 - nb[j] * m2);
        }
        // c_t = z c_{t-1} + (1 - z) c'_t
        if (pzc) {
          const T* z = pzc + o1;
          for (int64_t j = 0; j < H; ++j) dcnew[j] = (T(1) - z[j]) * dcb[j] + dcn[j];
          for (int64_t j = 0; j < H; ++j) dcb[j] = z[j] * dcb[j];
        } else {
          for (int64_t j = 0; j < H; ++j) dcnew[j] = dcb[j] + dcn[j];
          for (int64_t j = 0; j < H; ++j) dcb[j] = T(0);
        }
        if (peep) {
          for (int64_t j = 0; j < H; ++j) dcnew[j] += dao[j] * pwch[2 * H + j];
        }
        if (Tclip > 0) {
          for (int64_t j = 0; j < H; ++j) dcnew[j] = (cn[j] > -Tclip && cn[j] < Tclip) ? dcnew[j] : T(0);
        }
        // c'_t = f c_{t-1} + i c~
        for (int64_t j = 0; j < H; ++j) dcb[j] += dcnew[j] * gf[j];
        for (int64_t j = 0; j < H; ++j) dag[j] = dcnew[j] * gi[j] * (T(1) - gg[j] * gg[j]);
        if (cifg) {  // i = 1 - f
          for (int64_t j = 0; j < H; ++j) daf[j] = dcnew[j] * (cp[j] - gg[j]) * gf[j] * (T(1) - gf[j]);
          for (int64_t j = 0; j < H; ++j) dai[j] = T(0);
        } else {
          for (int64_t j = 0; j < H; ++j) daf[j] = dcnew[j] * cp[j] * gf[j] * (T(1) - gf[j]);
          for (int64_t j = 0; j < H; ++j) dai[j] = dcnew[j] * gg[j] * gi[j] * (T(1) - gi[j]);
        }
        if (peep) {
          for (int64_t j = 0; j < H; ++j) dcb[j] += dai[j] * pwch[j] + daf[j] * pwch[H + j];
          for (int64_t j = 0; j < H; ++j) a_wch[j] += dai[j] * cp[j];
          for (int64_t j = 0; j < H; ++j) a_wch[H + j] += daf[j] * cp[j];
          for (int64_t j = 0; j < H; ++j) a_wch[2 * H + j] += dao[j] * cn[j];
        }
        if (ln) {  // a_h = LN(r) g_hh
          const T* xb = pxh + o3;
          const T rs = prh[t * B + b];
          T m1 = 0, m2 = 0;
          for (int64_t j = 0; j < H4; ++j) a_lnh[j] += dgb[j] * xb[j];
          #pragma omp simd reduction(+ : m1)
          for (int64_t j = 0; j < H4; ++j) m1 += dgb[j] * plnh[j];
          #pragma omp simd reduction(+ : m2)
          for (int64_t j = 0; j < H4; ++j) m2 += dgb[j] * plnh[j] * xb[j];
          m1 /= H4;
          m2 /= H4;
          for (int64_t j = 0; j < H4; ++j) dab[j] = rs * (dgb[j] * plnh[j] - m1 - xb[j] * m2);
        } else if (lnx) {
          for (int64_t j = 0; j < H4; ++j) dab[j] = dgb[j];
        }
        if (with_bias) {
          for (int64_t j = 0; j < H4; ++j) a_b[j] += dgb[j];
        }
        if (lnx) {  // a_x = LN(x W_ih^T) g_ih: dgx becomes the gradient of x W_ih^T, in place
          const T* xb = pxx + o3;
          const T rs = prx[t * B + b];
          T m1 = 0, m2 = 0;
          for (int64_t j = 0; j < H4; ++j) a_lnx[j] += dgb[j] * xb[j];
          #pragma omp simd reduction(+ : m1)
          for (int64_t j = 0; j < H4; ++j) m1 += dgb[j] * plnx[j];
          #pragma omp simd reduction(+ : m2)
          for (int64_t j = 0; j < H4; ++j) m2 += dgb[j] * plnx[j] * xb[j];
          m1 /= H4;
          m2 /= H4;
          for (int64_t j = 0; j < H4; ++j) dgb[j] = rs * (dgb[j] * plnx[j] - m1 - xb[j] * m2);
        }
      }
    }
  };
  const int ncol = column_threads(B, H);
  if (ncol > 1) {  // small batch: W_hh split across threads, the fused pass on thread 0
    const Tensor wt_c = w_t.contiguous();  // (H, 4H): rows u of W_hh^T give dh_in[:, u]
    const T* pwt = wt_c.data_ptr<T>();
    T* pdhin = dh_in.data_ptr<T>();
    SpinBarrier barrier(ncol);
    run_threads(ncol, [&](int tid, int n) {
      barrier.expect(n);  // n <= ncol: the columns are cut for the threads there are
      const auto [u0, u1] = cols_of(H, tid, n);
      try {
        for (int64_t t = Tn - 1; t >= 0; --t) {
          if (tid == 0) rows(t, 0, B, pdhin, acc.data());
          barrier.wait();
          gemv_rows(pdah + t * B * H4, B, H4, pwt, u0, u1, pdhin, H);  // dh_in[:, u0:u1] = da_h W_hh[:, u0:u1]
          barrier.wait();
        }
      } catch (...) {
        barrier.abort();
        throw;
      }
    });
  } else {
  run_threads(nsplit, [&](int tid, int n) {
    const auto [b0, b1] = rows_of(B, tid, n);
    const int64_t nb = b1 - b0;
    // W_hh^T unpacked: packing it per call (as forward does) measured no faster here
    T* ac = acc.data() + static_cast<size_t>(tid) * NA;
    Tensor dh_rows = at::zeros({nb, H}, opt);  // da_h[t+1] W_hh of these rows
    for (int64_t t = Tn - 1; t >= 0; --t) {
      rows(t, b0, b1, dh_rows.data_ptr<T>(), ac);
      dh_rows = linear_nt(dah[t].narrow(0, b0, nb), w_t).contiguous();  // (nb, 4H) x (4H, H)
    }
    dh_in.narrow(0, b0, nb).copy_(dh_rows);
  });
  }
  // dL/dh_0 = direct part + the recurrent part through the dropout mask
  Tensor dh0 = has(rec) ? dh_dir + dh_in * (*rec) : dh_dir + dh_in;
  // weight gradients: one GEMM / reduction over all T*B rows
  Tensor hprev = Tn > 1 ? at::cat({h0.unsqueeze(0), y.narrow(0, 0, Tn - 1)}, 0) : h0.unsqueeze(0);  // (T, B, H)
  if (has(rec)) hprev = hprev * (*rec);
  Tensor dw_hh = mm_tn(dah.view({Tn * B, H4}), hprev.reshape({Tn * B, H}).contiguous());  // (4H, H)
  for (int k = 1; k < nsplit; ++k)
    for (int64_t j = 0; j < NA; ++j) acc[j] += acc[static_cast<size_t>(k) * NA + j];
  Tensor sums = at::empty({NA}, opt);
  std::copy(acc.begin(), acc.begin() + NA, sums.data_ptr<T>());
  Tensor dln_hh, dln_cw, dln_cb, dw_ch;
  if (ln) {
    dln_hh = sums.narrow(0, 0, 4 * H);
    dln_cw = sums.narrow(0, 4 * H, H);
    dln_cb = sums.narrow(0, 5 * H, H);
  }
  if (peep) dw_ch = sums.narrow(0, 6 * H, 3 * H);
  Tensor dbias = with_bias ? sums.narrow(0, 9 * H, 4 * H) : Tensor();
  Tensor dln_ih = lnx ? sums.narrow(0, 13 * H, 4 * H) : Tensor();
  out = {dgx, dh0, dc, dw_hh, dln_hh, dln_cw, dln_cb, dw_ch, dln_ih, dbias};
}

std::vector<Tensor> lstm_forward(const Tensor& gx, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
                                 const OptT& ln_hh, const OptT& ln_c_w, const OptT& ln_c_b, const OptT& w_ch,
                                 const OptT& rec, const OptT& zh, const OptT& zc, const OptT& valid,
                                 const OptT& ln_ih, const OptT& bias, bool cifg, double clip, double eps, bool save) {
  TORCH_CHECK(gx.dim() == 3 && gx.size(2) % 4 == 0, "gx must be (T, B, 4H)");
  std::vector<Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(gx.scalar_type(), "lstmkit_forward", [&] {
    forward_impl<scalar_t>(gx, h0, c0, w_hh, ln_hh, ln_c_w, ln_c_b, w_ch, rec, zh, zc, valid, ln_ih, bias, cifg, clip,
                           eps, save, out);
  });
  return out;
}

std::vector<Tensor> lstm_backward(const Tensor& dy, const Tensor& dh_n, const Tensor& dc_n, const Tensor& h0,
                                  const Tensor& y, const Tensor& w_hh, const OptT& ln_hh, const OptT& ln_c_w,
                                  const OptT& ln_c_b, const OptT& w_ch, const OptT& rec, const OptT& zh, const OptT& zc,
                                  const OptT& valid, const OptT& ln_ih, bool with_bias, bool cifg, double clip,
                                  at::TensorList saved) {
  std::vector<Tensor> sv(saved.begin(), saved.end());
  std::vector<Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "lstmkit_backward", [&] {
    backward_impl<scalar_t>(dy, dh_n, dc_n, h0, y, w_hh, ln_hh, ln_c_w, ln_c_b, w_ch, rec, zh, zc, valid, ln_ih, with_bias,
                            cifg, clip, sv, out);
  });
  return out;
}

}  // namespace

// x (M, K) @ w^T, w (N, K): the GEMM the kernel uses (oneDNN for float32 where available), for Python.
Tensor linear_op(const Tensor& x, const Tensor& w) { return linear_nt(x, w); }

// a^T @ b, a (K, M), b (K, N): the weight-gradient GEMM, for Python.
Tensor mm_tn_op(const Tensor& a, const Tensor& b) { return mm_tn(a.contiguous(), b.contiguous()); }

// How many threads the kernel splits a batch of B rows across, now (1: no split), for tests.
int64_t batch_threads_op(int64_t B) { return split_threads(B); }

// How many threads split W_hh for a batch of B rows and H hidden units (1: no split), for tests.
int64_t column_threads_op(int64_t B, int64_t H) { return column_threads(B, H); }

TORCH_LIBRARY(lstmkit_cpu, m) {
  m.def("linear(Tensor x, Tensor w) -> Tensor", &linear_op);
  m.def("batch_threads(int B) -> int", &batch_threads_op);
  m.def("column_threads(int B, int H) -> int", &column_threads_op);
  m.def("mm_tn(Tensor a, Tensor b) -> Tensor", &mm_tn_op);
  m.def(
      "forward(Tensor gx, Tensor h0, Tensor c0, Tensor w_hh, Tensor? ln_hh, Tensor? ln_c_w, Tensor? ln_c_b, "
      "Tensor? w_ch, Tensor? rec, Tensor? zh, Tensor? zc, Tensor? valid, Tensor? ln_ih, Tensor? bias, bool cifg, "
      "float clip, float eps, bool save) -> Tensor[]",
      &lstm_forward);
  m.def(
      "backward(Tensor dy, Tensor dh_n, Tensor dc_n, Tensor h0, Tensor y, Tensor w_hh, Tensor? ln_hh, "
      "Tensor? ln_c_w, Tensor? ln_c_b, Tensor? w_ch, Tensor? rec, Tensor? zh, Tensor? zc, Tensor? valid, "
      "Tensor? ln_ih, bool with_bias, bool cifg, float clip, Tensor[] saved) -> Tensor[]",
      &lstm_backward);
}
