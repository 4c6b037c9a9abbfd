// `dspeed bench serve`: FastGen's serving benchmark (blogs/deepspeed-fastgen) scaled to this machine. Requests with
// prompt and generation lengths drawn from normal distributions (standard deviation 30% of the mean) are sent by
// 1..16 closed-loop clients over real HTTP on loopback, streaming, against a server per scheduling policy; the same
// requests in the same order for every policy. It reports requests/s, output tokens/s, time to first token and
// the gaps between streamed tokens (p50, p95), and effective throughput: requests/s counting only requests that
// meet both SLAs, defined relative to the engine's own single-request speed measured first in the same run: the
// prompt processed at >= half the single-request prefill rate (TTFT <= 2 * prompt / prefill rate), and the
// generation at >= a quarter of the single-request decode rate, judged as FastGen's benchmark does: the moving
// average (span 16) of the gaps between streamed tokens stays below 1 / that rate at every token. FastGen fixes
// its SLAs in tokens/s for a given GPU (512 prompt tokens/s; 2, 4 or 6 generated tokens/s); relative floors keep the
// benchmark meaningful on any machine and model. Both fractions, or fixed rates instead, are options.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ds::serve {

struct ServeBenchOptions {
  std::string model;             // checkpoint directory or safetensors file
  std::string arch;              // model shape override (InferenceModel::load)
  std::vector<std::string> policies = {"splitfuse", "prefill-first", "static"};
  std::vector<int> clients = {1, 4, 16};
  int requests = 64;             // per policy and client count
  double prompt_mean = 0;        // tokens; 0: 60% of the model's context
  double gen_mean = 0;           // tokens; 0: 8% of the model's context
  double relative_std = 0.3;     // FastGen's "30% variance"
  // The SLAs: a fraction of the engine's single-request rate, or (when > 0) a fixed rate in tokens/s as FastGen's
  // (512 prompt tokens/s; 2, 4 or 6 generated tokens/s on its GPUs).
  double prompt_sla_fraction = 0.5, gen_sla_fraction = 0.25;
  double prompt_sla_rate = 0, gen_sla_rate = 0;
  int token_budget = 256;        // SplitFuse's tokens per pass; also prefill-first's prefill budget
  int kv_block_size = 16;
  int64_t kv_memory_bytes = int64_t(1) << 30;
  int static_batch_size = 16;
  int threads = 0;               // OpenMP threads of the engine (0: all)
  std::string device = "cpu";    // where the engines run: cpu, cuda or cuda:N
  std::string weights = "fp32";  // weight format on the CPU: fp32 or bf16
  std::string kv_dtype = "fp32";  // KV cache elements on the CPU: fp32 or bf16
  // How the requests sample: greedy (temperature 0, the default), or with temperature and top_p, each request
  // with its own seed.
  double temperature = 0, top_p = 1;
  uint64_t seed = 1;
  std::string json_out;          // append one JSON line per cell
};

struct ServeBenchCell {
  std::string policy;
  int clients = 0;
  int requests = 0;
  double seconds = 0;
  double requests_per_s = 0, output_tokens_per_s = 0;
  double ttft_p50_s = 0, ttft_p95_s = 0;
  double token_gap_p50_s = 0, token_gap_p95_s = 0;
  int meeting_prompt_sla = 0, meeting_generation_sla = 0;
  int meeting_sla = 0;  // both
  double effective_requests_per_s = 0;
  int64_t preemptions = 0, passes = 0;
  // Shares of the wall time the serving loop spent in forward passes, and busy in all (scheduling, forward,
  // sampling, delivering tokens); the rest it waited for requests.
  double forward_share = 0, loop_share = 0;
  // Forward-pass time per request served, under this load: beside the SLA capacity's estimate from passes run
  // alone, it shows what the server's other threads and the clients cost the engine on a shared CPU.
  double forward_s_per_request = 0;
};

// FastGen's generation SLA (benchmarks/inference/mii, EMA_SPAN = 16): the exponential moving average of the gaps
// between tokens, span 16 (alpha = 2 / 17, weights normalised over the gaps seen so far, as pandas' ewm), stays
// below 1 / tokens_per_s at every token. A stall shows up even when the average rate is fine. When it holds, the
// plain mean of the gaps is below 1 / tokens_per_s too (Note [SLA capacity] in serve_bench.cpp).
bool generation_meets_sla(const std::vector<double>& gaps, double tokens_per_s);

// How many closed-loop clients can all meet both SLAs at once, estimated from the engine's own costs (Note [SLA
// capacity]): a request meeting them lasts at most prompt / prompt floor + (gen - 1) / generation floor on
// average; by Little's law C clients then need C requests' worth of forward passes within that time, one request
// taking at least its prompt at the cost of a whole-prompt pass and its other tokens at the cost of a decode in a
// pass of `batch` decodes.
struct SlaCapacity {
  double max_latency_s = 0;  // mean latency of a request that meets both SLAs, at most
  double pass_time_s = 0;    // forward-pass time one request needs, at least (at the batching measured)
  double clients = 0;        // max_latency_s / pass_time_s
};
SlaCapacity sla_capacity(double prompt_tokens, double gen_tokens, double prompt_floor_tokens_per_s,
                         double gen_floor_tokens_per_s, double prompt_pass_s, double decode_batch_pass_s, int batch);

struct ServeBenchResult {
  double single_prefill_tokens_per_s = 0;
  double single_decode_tokens_per_s = 0;
  SlaCapacity capacity;  // at the largest client count
  std::vector<ServeBenchCell> cells;
};

// Runs the benchmark and prints the table; throws ds::Error for a bad option or a failed request.
ServeBenchResult run_serve_bench(const ServeBenchOptions& options);

}  // namespace ds::serve
