// The model's definition: options, deterministic weights and inputs, router, expert FFN, combine.
// See include/eplb/engine.h.
#include "engine/internal/model.h"

#include <cblas.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <limits>
#include <mutex>
#include <numeric>

namespace eplb {
namespace {

// Domains keep the hash streams of different things apart.
enum Domain : uint64_t { kExpertDomain = 1, kRouterDomain = 2, kHotDomain = 3, kInputDomain = 4 };

constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ull;

// SplitMix64's finaliser: a bijection that mixes every input bit into every output bit.
uint64_t Mix(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t Hash(std::initializer_list<uint64_t> values) {
  uint64_t h = kGolden;
  for (uint64_t v : values) h = Mix(h ^ Mix(v + kGolden));
  return h;
}

// Element i of the stream `base`, uniform in [-1, 1) with 24 random bits (exact in float).
float Uniform(uint64_t base, uint64_t i) {
  const uint64_t bits = Mix(base + (i + 1) * kGolden) >> 40;
  return static_cast<float>(bits) * (1.0f / 8388608.0f) - 1.0f;
}

void Fill(std::vector<float>& v, size_t n, uint64_t base, float bound) {
  v.resize(n);
  for (size_t i = 0; i < n; ++i) v[i] = bound * Uniform(base, i);
}

// Uniform in [-b, b] with variance 1 / fan_in.
float Bound(int fan_in) { return std::sqrt(3.0f / static_cast<float>(fan_in)); }

// The router's weights are this many times Bound(hidden): router logits of inputs uniform in
// [-1, 1) then have a standard deviation of about 1.7, enough token-to-token variety that with
// skew 1 the hottest expert gets about 4x (E = 16, k = 2) to 6x (E = 64, k = 8) the mean load and
// the coldest still some, instead of every token choosing the same top-k experts.
constexpr float kRouterGain = 3.0f;

}  // namespace

Status ValidateEngineOptions(const EngineOptions& o) {
  auto range = [](const char* key, int64_t v, int64_t lo, int64_t hi) {
    if (v >= lo && v <= hi) return Status::Ok();
    return Status::Invalid(
        fmt::format("engine options: {}: expected an integer in [{}, {}], got {}", key, lo, hi, v));
  };
  constexpr int64_t kBig = 1 << 20;
  EPLB_RETURN_IF_ERROR(range("layers", o.layers, 1, (kMaxTag + 1) / 2));
  EPLB_RETURN_IF_ERROR(range("experts", o.experts, 1, kBig));
  EPLB_RETURN_IF_ERROR(range("top_k", o.top_k, 1, o.experts));
  EPLB_RETURN_IF_ERROR(range("hidden", o.hidden, 1, kBig));
  EPLB_RETURN_IF_ERROR(range("ffn", o.ffn, 1, kBig));
  EPLB_RETURN_IF_ERROR(range("tokens", o.tokens, 1, kBig));
  EPLB_RETURN_IF_ERROR(range("timeout_ms", o.timeout_ms, 1, std::numeric_limits<int>::max()));
  if (!(o.skew >= 0 && o.skew <= 20)) {
    return Status::Invalid(
        fmt::format("engine options: skew: expected a number in [0, 20], got {}", o.skew));
  }
  return Status::Ok();
}

ExpertWeights MakeExpertWeights(const EngineOptions& o, int layer, int expert) {
  const size_t n = static_cast<size_t>(o.ffn) * o.hidden;
  auto base = [&](uint64_t tensor) {
    return Hash({kExpertDomain, o.seed, static_cast<uint64_t>(layer), static_cast<uint64_t>(expert),
                 tensor});
  };
  ExpertWeights w;
  Fill(w.gate, n, base(0), Bound(o.hidden));
  Fill(w.up, n, base(1), Bound(o.hidden));
  Fill(w.down, n, base(2), Bound(o.ffn));
  return w;
}

std::vector<float> MakeEngineInputs(const EngineOptions& o, int64_t step, int rank) {
  std::vector<float> x;
  Fill(x, static_cast<size_t>(o.tokens) * o.hidden,
       Hash({kInputDomain, o.seed, static_cast<uint64_t>(step), static_cast<uint64_t>(rank)}),
       1.0f);
  return x;
}

double MaxRelativeDifference(std::span<const float> a, std::span<const float> b) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  if (a.size() != b.size()) return kInf;
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return kInf;
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return diff / std::max(scale, 1e-30);
}

namespace engine_internal {

void UseSingleThreadedBlas() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

std::vector<float> RouterWeights(const EngineOptions& o, int layer) {
  std::vector<float> w;
  Fill(w, static_cast<size_t>(o.experts) * o.hidden,
       Hash({kRouterDomain, o.seed, static_cast<uint64_t>(layer)}), kRouterGain * Bound(o.hidden));
  return w;
}

std::vector<float> RouterBias(const EngineOptions& o, int layer, int shift) {
  // Hotness order: a Fisher-Yates shuffle of the experts drawn from (seed, layer, shift).
  std::vector<int> order(o.experts);
  std::iota(order.begin(), order.end(), 0);
  const uint64_t base = Hash({kHotDomain, o.seed, static_cast<uint64_t>(layer),
                              static_cast<uint64_t>(static_cast<int64_t>(shift))});
  for (int i = o.experts - 1; i > 0; --i) {
    const int j = static_cast<int>(Mix(base + static_cast<uint64_t>(i) * kGolden) %
                                   static_cast<uint64_t>(i + 1));
    std::swap(order[i], order[j]);
  }
  std::vector<float> bias(o.experts);
  for (int pos = 0; pos < o.experts; ++pos) {
    bias[order[pos]] = static_cast<float>(-o.skew * std::log1p(static_cast<double>(pos)));
  }
  return bias;
}

void Route(const EngineOptions& o, const float* x, int tokens, const float* router_weights,
           const float* bias, std::vector<float>& logits, std::vector<Choice>& out) {
  const int E = o.experts, H = o.hidden, K = o.top_k;
  logits.resize(static_cast<size_t>(tokens) * E);
  out.resize(static_cast<size_t>(tokens) * K);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tokens, E, H, 1.0f, x, H, router_weights, H,
              0.0f, logits.data(), E);
  std::vector<double> p(E);
  std::vector<int> idx(E);
  for (int t = 0; t < tokens; ++t) {
    const float* z = &logits[static_cast<size_t>(t) * E];
    double top = -std::numeric_limits<double>::infinity();
    for (int e = 0; e < E; ++e) top = std::max(top, static_cast<double>(z[e]) + bias[e]);
    double sum = 0;
    for (int e = 0; e < E; ++e) sum += p[e] = std::exp(static_cast<double>(z[e]) + bias[e] - top);
    for (int e = 0; e < E; ++e) p[e] /= sum;
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + K, idx.end(),
                      [&](int a, int b) { return p[a] != p[b] ? p[a] > p[b] : a < b; });
    double chosen = 0;
    for (int j = 0; j < K; ++j) chosen += p[idx[j]];
    for (int j = 0; j < K; ++j) {
      out[static_cast<size_t>(t) * K + j] = {idx[j], static_cast<float>(p[idx[j]] / chosen)};
    }
  }
}

void SwiGlu(const float* x, int n, const float* gate, const float* up, const float* down,
            int hidden, int ffn, float* g, float* u, float* y) {
  if (n == 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, ffn, hidden, 1.0f, x, hidden, gate,
              hidden, 0.0f, g, ffn);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, ffn, hidden, 1.0f, x, hidden, up, hidden,
              0.0f, u, ffn);
  const size_t m = static_cast<size_t>(n) * ffn;
  for (size_t i = 0; i < m; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, hidden, ffn, 1.0f, g, ffn, down, ffn,
              0.0f, y, hidden);
}

void AddScaled(float weight, const float* y, int n, float* out) {
  for (int i = 0; i < n; ++i) out[i] += weight * y[i];
}

double ThreadCpuMs() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) * 1e-6;
}

}  // namespace engine_internal
}  // namespace eplb
