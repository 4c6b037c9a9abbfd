// CPU kernel benchmark: one JSON line per kernel and thread count. GEMM-like kernels report GFLOP/s beside the
// cblas_sgemm rate (GPT-2 124M QKV shape, 1024x768x2304) measured just before that group, and their ratio to
// it: these machines are shared, so the reference is re-measured next to what it is compared with. Memory-bound
// kernels report GB/s. Figures are medians of --reps timed runs after one warm-up. The first line says which
// OpenBLAS was loaded (a pthread build at run time would fight our OpenMP threads).
// --explore adds the design measurements quoted in the kernels' header comments (attention on AVX2 and via
// per-head sgemm, classifier row-chunk sizes); --quick skips the 124M classifier; --only runs one group.
// Usage: bm_kernels [--threads 1,2] [--reps 5] [--quick] [--explore] [--only matmul|attention|sampling|...]
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "ds/core/stats.h"
#include "ds/inference/sampler.h"
#include "ds/kernels/cpu/kernels.h"
#include "ds/kernels/cpu/simd.h"

// OpenBLAS's own queries, declared here too in case the cblas.h found is not OpenBLAS's.
extern "C" char* openblas_get_config(void);
extern "C" char* openblas_get_corename(void);
extern "C" int openblas_get_parallel(void);

namespace {

using Clock = std::chrono::steady_clock;

int g_reps = 5;

// Median wall time in milliseconds of g_reps runs of fn, after one warm-up run.
double time_ms(const std::function<void()>& fn, int reps = -1) {
  if (reps < 0) reps = g_reps;
  fn();
  std::vector<double> t(reps);
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    fn();
    t[r] = ds::seconds_since(t0) * 1e3;
  }
  return ds::median(std::move(t));
}

std::vector<float> randn(size_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

double g_sgemm_gflops = 0.0;
int g_threads = 1;

void emit_flops(const char* kernel, const std::string& shape, double ms, double flop) {
  const double gf = flop / ms * 1e-6;
  std::printf(
      "{\"kernel\":\"%s\",\"shape\":\"%s\",\"threads\":%d,\"ms\":%.3f,\"gflops\":%.1f,\"sgemm_gflops\":%.1f,"
      "\"ratio_to_sgemm\":%.2f}\n",
      kernel, shape.c_str(), g_threads, ms, gf, g_sgemm_gflops, gf / g_sgemm_gflops);
  std::fflush(stdout);
}

void emit_bytes(const char* kernel, const std::string& shape, double ms, double bytes) {
  std::printf("{\"kernel\":\"%s\",\"shape\":\"%s\",\"threads\":%d,\"ms\":%.3f,\"gbps\":%.2f}\n", kernel,
              shape.c_str(), g_threads, ms, bytes / ms * 1e-6);
  std::fflush(stdout);
}

std::string fmt_shape(const char* f, int a, int b = 0, int c = 0, int d = 0) {
  char buf[128];
  std::snprintf(buf, sizeof buf, f, a, b, c, d);
  return buf;
}

// Measures the reference sgemm rate into g_sgemm_gflops; prints it when print is set.
void bench_sgemm_reference(bool print = false) {
  const int M = 1024, K = 768, N = 2304;
  static const auto a = randn(size_t(M) * K, 1), b = randn(size_t(K) * N, 2);
  static std::vector<float> c(size_t(M) * N);
  const double ms = time_ms([&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a.data(), K, b.data(), N, 0.0f, c.data(), N);
  });
  g_sgemm_gflops = 2.0 * M * N * K / ms * 1e-6;
  if (print) emit_flops("sgemm_reference", "1024x768x2304", ms, 2.0 * M * N * K);
}

void bench_matmul(int N, int IC, int OC) {
  bench_sgemm_reference();
  const auto inp = randn(size_t(N) * IC, 3), w = randn(size_t(IC) * OC, 4, 0.02f), bias = randn(OC, 5);
  const auto dout = randn(size_t(N) * OC, 6);
  std::vector<float> out(size_t(N) * OC), dinp(size_t(N) * IC), dw(w.size()), db(OC);
  const double flop = 2.0 * N * IC * OC;
  const std::string shape = fmt_shape("N%d %d->%d", N, IC, OC);
  emit_flops("matmul_fwd", shape,
             time_ms([&] { ds::cpu::matmul_forward(out.data(), inp.data(), w.data(), bias.data(), N, IC, OC); }), flop);
  emit_flops("matmul_bwd", shape, time_ms([&] {
               ds::cpu::matmul_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(), N, IC,
                                        OC);
             }),
             2 * flop);
}

// Causal attention flops: QK^T and att·V over the lower triangle (T(T+1)/2 pairs), 2 flops per MAC.
double attention_fwd_flop(int B, int T, int C) { return 2.0 * 2.0 * B * C * (double(T) * (T + 1) / 2); }

void bench_attention(int B, int T, int C, int NH, const char* suffix = "") {
  bench_sgemm_reference();
  const auto qkv = randn(size_t(B) * T * 3 * C, 7), dout = randn(size_t(B) * T * C, 8);
  std::vector<float> out(size_t(B) * T * C), att(size_t(B) * NH * T * T), dqkv(qkv.size());
  std::vector<float> scratch(ds::cpu::attention_backward_scratch_floats(B, T, C, NH));
  const std::string shape = fmt_shape("B%d T%d C%d NH%d", B, T, C, NH);
  const double flop = attention_fwd_flop(B, T, C);
  emit_flops((std::string("attention_fwd") + suffix).c_str(), shape,
             time_ms([&] { ds::cpu::attention_forward(out.data(), att.data(), qkv.data(), B, T, C, NH); }), flop);
  emit_flops((std::string("attention_bwd") + suffix).c_str(), shape, time_ms([&] {
               ds::cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), att.data(), scratch.data(), B, T,
                                           C, NH);
             }),
             2 * flop);
}

// Paged attention (the serving forward): S sequences of `ctx` cached positions, in blocks of 16 slots scattered
// over a pool, queried for their last `fresh` positions (fresh = 1: a pass of S decodes; fresh = ctx: a prompt).
// Reported as GFLOP/s of useful work and as the K/V bytes the queries read per second (a decode is bound by them),
// over an fp32 cache and then a bf16 one (half the bytes), with the bf16 cache's speedup. Prompts are also timed on
// the AVX2 kernels (DS_CPU_ISA=avx2), interleaved rep by rep, with the AVX-512 twins' speedup over them; decodes
// run the same kernels on either.
void bench_paged_attention(const char* what, int S, int ctx, int fresh, int C, int NH) {
  constexpr int bs = 16;
  const int per_seq = (ctx + bs - 1) / bs, pool = S * per_seq;
  std::vector<int32_t> ids(static_cast<size_t>(pool));
  for (int b = 0; b < pool; ++b) ids[size_t(b)] = int32_t((int64_t(b) * 7919) % pool);  // a fixed shuffle
  std::vector<const int32_t*> tables(static_cast<size_t>(S));
  for (int s = 0; s < S; ++s) tables[size_t(s)] = ids.data() + int64_t(s) * per_seq;
  const auto kv = randn(size_t(pool) * bs * 2 * C, 41);
  std::vector<uint16_t> kv16(kv.size());
  ds::cpu::f32_to_bf16(kv16.data(), kv.data(), kv.size());
  std::vector<int32_t> seq, pos;
  for (int s = 0; s < S; ++s) {
    for (int t = ctx - fresh; t < ctx; ++t) {
      seq.push_back(s);
      pos.push_back(t);
    }
  }
  const int N = static_cast<int>(seq.size());
  const auto q = randn(size_t(N) * 3 * C, 42);
  std::vector<float> out(size_t(N) * C), scratch(ds::cpu::paged_attention_scratch_floats(ctx, C, NH));
  double flop = 0, elements = 0;
  for (const int32_t p : pos) {
    flop += 4.0 * (p + 1) * C;
    elements += 2.0 * (p + 1) * C;
  }
  const std::string shape = std::string(what) + fmt_shape(" S%d ctx%d new%d C%d", S, ctx, fresh, C) +
                            fmt_shape(" NH%d", NH);
  double fp32_ms = 0;
  const bool wide = ds::cpu::simd::use_avx512();
  for (const ds::DType dtype : {ds::DType::f32, ds::DType::bf16}) {
    const void* cache = dtype == ds::DType::bf16 ? static_cast<const void*>(kv16.data()) : kv.data();
    auto run = [&] {
      ds::cpu::paged_attention_forward(out.data(), q.data(), N, seq.data(), pos.data(), tables.data(), cache, dtype,
                                       bs, C, NH, scratch.data(), ctx);
    };
    double ms = 0, avx2_ms = 0;
    if (wide && fresh > 1) {  // the prompt path: each rep times both kernel sets, one after the other
      run();
      std::vector<double> native_t, avx2_t;
      for (int r = 0; r < std::max(g_reps, 9); ++r) {
        setenv("DS_CPU_ISA", "avx2", 1);
        avx2_t.push_back(time_ms(run, 1));
        unsetenv("DS_CPU_ISA");
        native_t.push_back(time_ms(run, 1));
      }
      ms = ds::median(std::move(native_t));
      avx2_ms = ds::median(std::move(avx2_t));
    } else {  // decodes run the same kernels on either
      ms = avx2_ms = time_ms(run);
    }
    if (dtype == ds::DType::f32) fp32_ms = ms;
    const char* kv_name = dtype == ds::DType::bf16 ? "bf16" : "fp32";
    std::printf("{\"kernel\":\"paged_attention\",\"shape\":\"%s\",\"kv\":\"%s\",\"threads\":%d,\"ms\":%.4f,"
                "\"gflops\":%.1f,\"kv_gbps\":%.1f,\"speedup_vs_fp32_kv\":%.2f,\"isa\":\"%s\",\"avx2_ms\":%.4f,"
                "\"speedup_vs_avx2\":%.2f}\n", shape.c_str(), kv_name, g_threads, ms, flop / ms * 1e-6,
                elements * double(ds::dtype_size(dtype)) / ms * 1e-6, fp32_ms / ms, wide ? "avx512" : "avx2", avx2_ms,
                avx2_ms / ms);
    std::fflush(stdout);
  }
}

// Token sampling over GPT-2's vocabulary (inference::Sampler; logits N(0, 3^2), and N(0, 0.5^2) for a flat top_p
// whose nucleus holds tens of thousands of tokens) beside plain scalar versions of the same step written here: a
// first-index argmax loop; std::exp weights and a running-sum draw; nth_element of (logit, id) pairs for top_k; a
// full sort of the pairs for top_p. Microseconds per sampled token.
void bench_sampling() {
  constexpr int V = 50257;
  const auto broad = randn(V, 51, 3.0f);
  const auto flat = randn(V, 52, 0.5f);  // a top_p 0.9 nucleus of tens of thousands of tokens
  const std::vector<float>* logits = &broad;
  std::vector<std::pair<float, int32_t>> pairs(V);
  std::vector<double> w(V);
  auto before = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  volatile int64_t sink = 0;
  auto scalar_argmax = [&] {
    const std::vector<float>& x = *logits;
    int best = 0;
    for (int i = 1; i < V; ++i) best = x[i] > x[best] ? i : best;
    return best;
  };
  auto scalar_weights = [&](int n) {  // over pairs[0, n), by logit; returns the total
    const float max = (*logits)[scalar_argmax()];
    double total = 0;
    for (int i = 0; i < n; ++i) total += w[i] = std::exp(pairs[i].first - max);
    return total;
  };
  auto scalar_draw = [&](int n, double target) {
    double cum = 0;
    for (int i = 0; i < n; ++i)
      if (target < (cum += w[i])) return pairs[i].second;
    return pairs[n - 1].second;
  };
  auto fill = [&] {
    for (int i = 0; i < V; ++i) pairs[i] = {(*logits)[i], i};
  };
  auto scalar_top_p = [&] {
    fill();
    std::sort(pairs.begin(), pairs.end(), before);
    const double need = 0.9 * scalar_weights(V);
    double cum = 0;
    int keep = 0;
    while (cum < need) cum += w[keep++];
    sink = sink + scalar_draw(keep, 0.5 * cum);
  };
  struct Case {
    const char* name;
    const std::vector<float>* logits;
    float temperature;
    int top_k;
    float top_p;
    std::function<void()> reference;
  };
  const std::vector<Case> cases = {
      {"greedy", &broad, 0.0f, 0, 1.0f, [&] { sink = sink + scalar_argmax(); }},
      {"temperature", &broad, 1.0f, 0, 1.0f, [&] {
         fill();
         sink = sink + scalar_draw(V, 0.5 * scalar_weights(V));
       }},
      {"top_k50", &broad, 1.0f, 50, 1.0f, [&] {
         fill();
         std::nth_element(pairs.begin(), pairs.begin() + 49, pairs.end(), before);
         sink = sink + scalar_draw(50, 0.5 * scalar_weights(50));
       }},
      {"top_p0.9", &broad, 1.0f, 0, 0.9f, scalar_top_p},
      {"top_p0.9_flat", &flat, 1.0f, 0, 0.9f, scalar_top_p},
  };
  for (const Case& c : cases) {
    logits = c.logits;
    ds::inference::SamplingParams p;
    p.temperature = c.temperature;
    p.top_k = c.top_k;
    p.top_p = c.top_p;
    ds::inference::Sampler sampler(p, 1);
    const double ours = time_ms([&] { sink = sink + sampler.sample(*logits); }, 25 * g_reps);
    const double ref = time_ms(c.reference, 5 * g_reps);
    std::printf("{\"kernel\":\"sample\",\"shape\":\"%s V%d\",\"threads\":%d,\"us\":%.1f,\"scalar_us\":%.1f,"
                "\"speedup\":%.1f}\n", c.name, V, g_threads, 1e3 * ours, 1e3 * ref, ref / ours);
    std::fflush(stdout);
  }
}

// The alternative design, measured for attention.cpp's header: per-(b,h) cblas_sgemm on the full T x T (twice the
// causal work) with the softmax in a separate parallel pass; sgemm called outside any OpenMP region.
void bench_attention_sgemm_variant(int B, int T, int C, int NH) {
  bench_sgemm_reference();
  const int HS = C / NH;
  const float scale = 1.0f / std::sqrt(float(HS));
  const auto qkv = randn(size_t(B) * T * 3 * C, 7), dout = randn(size_t(B) * T * C, 8);
  std::vector<float> out(size_t(B) * T * C), att(size_t(B) * NH * T * T), datt(att.size()), dqkv(qkv.size());
  auto head = [&](int bh, size_t off) { return (size_t(bh / NH) * T * 3 * C) + size_t(bh % NH) * HS + off; };
  auto softmax_rows = [&] {
#pragma omp parallel for schedule(static)
    for (int row = 0; row < B * NH * T; ++row) {
      const int t = row % T;
      float* a = att.data() + size_t(row) * T;
      float mx = a[0];
      for (int j = 1; j <= t; ++j) mx = std::max(mx, a[j]);
      float s = 0;
      for (int j = 0; j <= t; ++j) s += (a[j] = std::exp(a[j] - mx));
      for (int j = 0; j <= t; ++j) a[j] /= s;
      for (int j = t + 1; j < T; ++j) a[j] = 0.0f;
    }
  };
  auto forward = [&] {
    for (int bh = 0; bh < B * NH; ++bh) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, HS, scale, qkv.data() + head(bh, 0), 3 * C,
                  qkv.data() + head(bh, C), 3 * C, 0.0f, att.data() + size_t(bh) * T * T, T);
    }
    softmax_rows();
    for (int bh = 0; bh < B * NH; ++bh) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, HS, T, 1.0f, att.data() + size_t(bh) * T * T, T,
                  qkv.data() + head(bh, 2 * C), 3 * C, 0.0f,
                  out.data() + size_t(bh / NH) * T * C + size_t(bh % NH) * HS, C);
    }
  };
  auto backward = [&] {
    for (int bh = 0; bh < B * NH; ++bh) {
      const float* g = dout.data() + size_t(bh / NH) * T * C + size_t(bh % NH) * HS;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, HS, 1.0f, g, C, qkv.data() + head(bh, 2 * C),
                  3 * C, 0.0f, datt.data() + size_t(bh) * T * T, T);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, HS, T, 1.0f, att.data() + size_t(bh) * T * T, T, g, C,
                  0.0f, dqkv.data() + head(bh, 2 * C), 3 * C);
    }
#pragma omp parallel for schedule(static)
    for (int row = 0; row < B * NH * T; ++row) {
      const int t = row % T;
      const float* a = att.data() + size_t(row) * T;
      float* d = datt.data() + size_t(row) * T;
      float s = 0;
      for (int j = 0; j <= t; ++j) s += a[j] * d[j];
      for (int j = 0; j <= t; ++j) d[j] = scale * a[j] * (d[j] - s);
      for (int j = t + 1; j < T; ++j) d[j] = 0.0f;
    }
    for (int bh = 0; bh < B * NH; ++bh) {
      const float* dp = datt.data() + size_t(bh) * T * T;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, HS, T, 1.0f, dp, T, qkv.data() + head(bh, C), 3 * C,
                  0.0f, dqkv.data() + head(bh, 0), 3 * C);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, HS, T, 1.0f, dp, T, qkv.data() + head(bh, 0), 3 * C,
                  0.0f, dqkv.data() + head(bh, C), 3 * C);
    }
  };
  const std::string shape = fmt_shape("B%d T%d C%d NH%d", B, T, C, NH);
  const double flop = attention_fwd_flop(B, T, C);  // useful (causal) flops, for a like-for-like rate
  emit_flops("attention_fwd_sgemm_variant", shape, time_ms(forward), flop);
  emit_flops("attention_bwd_sgemm_variant", shape, time_ms(backward), 2 * flop);
}

void bench_classifier(int N, int C, int V, int reps) {
  bench_sgemm_reference();
  const auto x = randn(size_t(N) * C, 9), wte = randn(size_t(V) * C, 10, 0.02f);
  std::vector<int32_t> tgt(N);
  for (int i = 0; i < N; ++i) tgt[i] = (i * 7919) % V;
  std::vector<float> dx(x.size()), dwte(wte.size()), scratch(ds::cpu::classifier_scratch_floats(N, V));
  const std::string shape = fmt_shape("N%d C%d V%d", N, C, V);
  emit_flops("classifier_fwd_bwd", shape, time_ms([&] {
               ds::cpu::classifier_forward_backward(dx.data(), dwte.data(), nullptr, x.data(), wte.data(),
                                                    tgt.data(), 1.0f / N, scratch.data(), N, C, V);
             }, reps),
             6.0 * N * C * V);
  emit_flops("classifier_fwd", shape, time_ms([&] {
               ds::cpu::classifier_forward_backward(nullptr, nullptr, nullptr, x.data(), wte.data(), tgt.data(), 1.0f,
                                                    scratch.data(), N, C, V);
             }, reps),
             2.0 * N * C * V);
}

// The inference forward's products of a few rows: panel_gemm over pre-packed weights beside matmul_forward
// (sgemm) on the same [N, K] x [K, M], and for the head (K = C, M = V) beside logits_forward (sgemm on wte).
// Reported as GFLOP/s and as weight bytes read per second (one row is bound by reading the weights once), and
// beside panel_gemm_bf16 on the same product with bf16 weights (bf16_speedup: fp32 panels' time over bf16's).
void bench_panel(const char* what, int N, int K, int M, bool head) {
  const auto x = randn(size_t(N) * K, 31), w = randn(size_t(K) * M, 32, 0.02f), bias = randn(size_t(M), 33);
  std::vector<float> packed(ds::cpu::panel_packed_floats(K, M)), out(size_t(N) * M);
  ds::cpu::pack_panels(packed.data(), w.data(), K, M, /*w_is_rows_of_k=*/!head);
  const std::string shape = std::string(what) + fmt_shape(" N%d K%d M%d", N, K, M);
  const double flop = 2.0 * N * K * M, bytes = 4.0 * K * M;
  const double ms_panel = time_ms([&] {
    ds::cpu::panel_gemm(out.data(), x.data(), packed.data(), head ? nullptr : bias.data(), N, K, M);
  });
  const double ms_ref = time_ms([&] {
    if (head) ds::cpu::logits_forward(out.data(), x.data(), w.data(), N, K, M);
    else ds::cpu::matmul_forward(out.data(), x.data(), w.data(), bias.data(), N, K, M);
  });
  // The same product with bf16 weights (--weights bf16).
  std::vector<uint32_t> packed16(ds::cpu::panel_packed_bf16_words(K, M));
  ds::cpu::pack_panels_bf16(packed16.data(), w.data(), K, M, /*w_is_rows_of_k=*/!head);
  const double ms_bf16 = time_ms([&] {
    ds::cpu::panel_gemm_bf16(out.data(), x.data(), packed16.data(), head ? nullptr : bias.data(), N, K, M);
  });
  std::printf("{\"kernel\":\"panel_gemm\",\"shape\":\"%s\",\"threads\":%d,\"ms\":%.4f,\"gflops\":%.1f,\"gbps\":%.1f,"
              "\"%s_ms\":%.4f,\"speedup\":%.2f,\"bf16_ms\":%.4f,\"bf16_speedup\":%.2f}\n", shape.c_str(),
              g_threads, ms_panel, flop / ms_panel * 1e-6, bytes / ms_panel * 1e-6,
              head ? "logits_forward" : "matmul_forward", ms_ref, ms_ref / ms_panel, ms_bf16, ms_panel / ms_bf16);
  std::fflush(stdout);
}

// The three GEMMs of the classifier for one row-chunk size R (the softmax between them is omitted).
void bench_classifier_chunk_gemms(int N, int C, int V, int R) {
  bench_sgemm_reference();
  const auto x = randn(size_t(N) * C, 9), wte = randn(size_t(V) * C, 10, 0.02f);
  std::vector<float> dx(x.size()), dwte(wte.size()), scratch(size_t(R) * V);
  const double ms = time_ms(
      [&] {
        for (int n0 = 0; n0 < N; n0 += R) {
          const int rows = std::min(R, N - n0);
          const float* xc = x.data() + size_t(n0) * C;
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, V, C, 1.0f, xc, C, wte.data(), C, 0.0f,
                      scratch.data(), V);
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, C, V, 1.0f, scratch.data(), V, wte.data(), C,
                      0.0f, dx.data() + size_t(n0) * C, C);
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, V, C, rows, 1.0f, scratch.data(), V, xc, C, 1.0f,
                      dwte.data(), C);
        }
      },
      3);
  emit_flops("classifier_gemms_chunk", fmt_shape("N%d C%d V%d R%d", N, C, V, R), ms, 6.0 * N * C * V);
}

void bench_layernorm(int N, int C) {
  const auto x = randn(size_t(N) * C, 11), w = randn(C, 12), b = randn(C, 13), dout = randn(size_t(N) * C, 14);
  std::vector<float> out(x.size()), mean(N), rstd(N), dx(x.size()), dw(C), db(C);
  const std::string shape = fmt_shape("N%d C%d", N, C);
  const double bytes = 4.0 * N * C;
  emit_bytes("layernorm_fwd", shape, time_ms([&] {
               ds::cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
             }),
             2 * bytes);
  emit_bytes("layernorm_bwd", shape, time_ms([&] {
               ds::cpu::layernorm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                                           mean.data(), rstd.data(), N, C);
             }),
             3 * bytes);
}

void bench_elementwise(size_t n) {
  const auto a = randn(n, 15), b = randn(n, 16);
  std::vector<float> out(n), g(n);
  const std::string shape = fmt_shape("n%d", int(n));
  emit_bytes("gelu_fwd", shape, time_ms([&] { ds::cpu::gelu_forward(out.data(), a.data(), n); }), 8.0 * n);
  emit_bytes("gelu_bwd", shape, time_ms([&] { ds::cpu::gelu_backward(g.data(), a.data(), b.data(), n); }), 12.0 * n);
  emit_bytes("add", shape, time_ms([&] { ds::cpu::add(out.data(), a.data(), b.data(), n); }), 12.0 * n);
  volatile double sink = 0;
  emit_bytes("sum_squares", shape, time_ms([&] { sink = sink + ds::cpu::sum_squares(a.data(), n); }), 4.0 * n);
}

void bench_encoder(int B, int T, int C, int V) {
  std::vector<int32_t> inp(size_t(B) * T);
  for (size_t i = 0; i < inp.size(); ++i) inp[i] = int32_t((i * 7919) % V);
  const auto wte = randn(size_t(V) * C, 17, 0.02f), wpe = randn(size_t(T) * C, 18, 0.02f);
  const auto dout = randn(size_t(B) * T * C, 19);
  std::vector<float> out(dout.size()), dwte(wte.size()), dwpe(wpe.size());
  const std::string shape = fmt_shape("B%d T%d C%d V%d", B, T, C, V);
  const double bytes = 4.0 * B * T * C;
  emit_bytes("encoder_fwd", shape,
             time_ms([&] { ds::cpu::encoder_forward(out.data(), inp.data(), wte.data(), wpe.data(), B, T, C); }),
             3 * bytes);
  emit_bytes("encoder_bwd", shape, time_ms([&] {
               ds::cpu::encoder_backward(dwte.data(), dwpe.data(), dout.data(), inp.data(), B, T, C);
             }),
             5 * bytes);
}

void bench_adamw_and_convert(size_t n) {
  auto p = randn(n, 20), g = randn(n, 21);
  std::vector<float> m(n, 0.0f), v(n, 0.0f), back(n);
  std::vector<uint16_t> h(n);
  ds::cpu::AdamParams hp;
  hp.weight_decay = 0.1f;
  const std::string shape = fmt_shape("n%d", int(n));
  emit_bytes("adamw_step", shape,
             time_ms([&] { ds::cpu::adamw_step(p.data(), g.data(), m.data(), v.data(), n, hp, 1.0f); }), 28.0 * n);
  emit_bytes("f32_to_bf16", shape, time_ms([&] { ds::cpu::f32_to_bf16(h.data(), g.data(), n); }), 6.0 * n);
  emit_bytes("bf16_to_f32", shape, time_ms([&] { ds::cpu::bf16_to_f32(back.data(), h.data(), n); }), 6.0 * n);
  emit_bytes("f32_to_f16", shape, time_ms([&] { ds::cpu::f32_to_f16(h.data(), g.data(), n); }), 6.0 * n);
  emit_bytes("f16_to_f32", shape, time_ms([&] { ds::cpu::f16_to_f32(back.data(), h.data(), n); }), 6.0 * n);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> threads = {1, 2};
  bool quick = false, explore = false;
  std::string only;  // run only the groups whose name contains this
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) {
      threads.clear();
      for (char* tok = std::strtok(argv[++i], ","); tok; tok = std::strtok(nullptr, ",")) {
        threads.push_back(std::atoi(tok));
      }
    } else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) {
      g_reps = std::max(1, std::atoi(argv[++i]));
    } else if (!std::strcmp(argv[i], "--quick")) {
      quick = true;
    } else if (!std::strcmp(argv[i], "--explore")) {
      explore = true;
    } else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) {
      only = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: %s [--threads 1,2] [--reps 5] [--quick] [--explore] [--only matmul|attention|layernorm|"
                   "elementwise|encoder|adamw|panel|classifier|sampling]\n",
                   argv[0]);
      return 2;
    }
  }
  std::printf("{\"openblas\":\"%s\",\"core\":\"%s\",\"parallel\":\"%s\",\"avx512_kernels\":%s}\n",
              openblas_get_config(), openblas_get_corename(),
              openblas_get_parallel() == 2 ? "openmp" : openblas_get_parallel() == 1 ? "pthread" : "sequential",
              ds::cpu::simd::use_avx512() ? "true" : "false");
  for (int nt : threads) {
    omp_set_num_threads(nt);
    g_threads = nt;
    bench_sgemm_reference(true);
    auto want = [&](const char* group) { return only.empty() || std::string(group).find(only) != std::string::npos; };
    if (want("matmul")) {
      for (auto [IC, OC] : {std::pair{768, 2304}, {768, 768}, {768, 3072}, {3072, 768}, {128, 384}, {512, 128}}) {
        bench_matmul(1024, IC, OC);  // GPT-2 124M (B4 T256), then tiny GPT (L4 C128 T128 B8 V512)
      }
    }
    if (want("attention")) {
      bench_attention(4, 256, 768, 12);
      bench_attention(8, 128, 128, 4);
      if (explore) {
        setenv("DS_CPU_ISA", "avx2", 1);
        bench_attention(4, 256, 768, 12, "_avx2");
        bench_attention(8, 128, 128, 4, "_avx2");
        unsetenv("DS_CPU_ISA");
        bench_attention_sgemm_variant(4, 256, 768, 12);
        bench_attention_sgemm_variant(8, 128, 128, 4);
      }
      // The serving forward's paged attention: the default model (C128, 4 heads) and GPT-2 124M (C768, 12 heads).
      bench_paged_attention("decode1", 1, 170, 1, 128, 4);
      bench_paged_attention("decode16", 16, 170, 1, 128, 4);
      bench_paged_attention("prompt", 1, 154, 154, 128, 4);
      bench_paged_attention("decode1_124M", 1, 600, 1, 768, 12);
      bench_paged_attention("decode16_124M", 16, 600, 1, 768, 12);
      bench_paged_attention("prompt_124M", 1, 614, 614, 768, 12);
    }
    if (want("sampling") && nt == threads.front()) bench_sampling();  // single-threaded: once
    if (want("layernorm")) {
      bench_layernorm(1024, 768);
      bench_layernorm(1024, 128);
    }
    if (want("elementwise")) {
      bench_elementwise(size_t(1024) * 3072);
      bench_elementwise(size_t(1024) * 512);
    }
    if (want("encoder")) bench_encoder(4, 256, 768, 50257);
    if (want("adamw")) bench_adamw_and_convert(size_t(1) << 24);
    if (want("panel")) {
      for (int N : {1, 4, 16, 64, 160}) bench_panel("head", N, 128, 50257, true);  // the default model's head
      for (int N : {1, 16, 64, 160}) {                                             // and its layers' GEMMs
        bench_panel("qkv", N, 128, 384, false);
        bench_panel("fc", N, 128, 512, false);
        bench_panel("fc2", N, 512, 128, false);
      }
      for (int N : {1, 16}) bench_panel("qkv124M", N, 768, 2304, false);  // GPT-2 124M
      if (explore) {
        setenv("DS_CPU_ISA", "avx2", 1);
        bench_panel("head_avx2", 16, 128, 50257, true);
        bench_panel("qkv_avx2", 16, 128, 384, false);
        unsetenv("DS_CPU_ISA");
      }
    }
    if (want("classifier")) {
      bench_classifier(1024, 128, 512, g_reps);
      if (!quick) {
        bench_classifier(1024, 768, 50257, 3);
        if (explore) {
          for (int R : {128, 256, 512}) bench_classifier_chunk_gemms(1024, 768, 50257, R);
        }
      }
    }
    bench_sgemm_reference(true);  // again at the end: the machine is shared, so bracket the run
  }
  return 0;
}
