// The serving benchmark: request generation, the streaming HTTP client that times each token, the SLA checks and
// the table. Every cell gets a fresh server (engine, KV cache, loop) so no policy inherits another's state.
#include "bench/serve_bench.h"

#include <httplib.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "ds/core/error.h"
#include "ds/core/rng.h"
#include "ds/core/stats.h"
#include "ds/inference/serving_loop.h"
#include "ds/serve/http_server.h"
#include "ds/serve/serving_stack.h"

namespace ds::serve {
namespace {

using Clock = std::chrono::steady_clock;

struct BenchRequest {
  std::vector<int32_t> prompt;
  int gen = 0;
  double temperature = 0, top_p = 1;
  uint64_t seed = 0;
};

// What a client saw of one request.
struct Observed {
  double sent = 0, first = -1, last = -1;  // seconds since the cell started
  int tokens = 0;
  std::vector<double> gaps;  // between consecutive streamed tokens
};

std::vector<BenchRequest> make_requests(int n, double prompt_mean, double gen_mean, double rel_std, int context,
                                        int vocab, uint64_t seed, const ServeBenchOptions& o) {
  Rng rng(seed);
  Rng seeds(seed ^ 0x5eedULL);  // a stream of its own: the lengths and prompts do not depend on the sampling
  std::vector<BenchRequest> out;
  for (int i = 0; i < n; ++i) {
    int p = static_cast<int>(std::lround(prompt_mean + rel_std * prompt_mean * rng.normal()));
    int g = static_cast<int>(std::lround(gen_mean + rel_std * gen_mean * rng.normal()));
    g = std::clamp(g, 1, context - 1);
    p = std::clamp(p, 1, context - g);
    BenchRequest r;
    r.gen = g;
    r.temperature = o.temperature;
    r.top_p = o.top_p;
    r.seed = seeds.next_u64() >> 1;  // OpenAI's seed is a signed integer
    for (int t = 0; t < p; ++t) r.prompt.push_back(static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(vocab)));
    out.push_back(std::move(r));
  }
  return out;
}

// Sends one streaming completion and records when each token arrived (the "token_ids" of each chunk).
Observed send_streaming(httplib::Client& cli, const BenchRequest& r, Clock::time_point t0) {
  nlohmann::json body = {{"prompt", r.prompt}, {"max_tokens", r.gen}, {"temperature", r.temperature},
                         {"top_p", r.top_p},   {"seed", r.seed},       {"stream", true},
                         {"ignore_eos", true}};
  Observed o;
  std::string buffer;
  double prev = -1;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    const double now = std::chrono::duration<double>(Clock::now() - t0).count();
    buffer.append(data, len);
    size_t end;
    while ((end = buffer.find("\n\n")) != std::string::npos) {
      const std::string event = buffer.substr(0, end);
      buffer.erase(0, end + 2);
      if (event.rfind("data: ", 0) != 0 || event == "data: [DONE]") continue;
      const nlohmann::json j = nlohmann::json::parse(event.substr(6));
      if (j.contains("error")) DS_THROW(Error, "[bench] the server failed a request: {}", j["error"].dump());
      if (!j.contains("choices") || j["choices"].empty()) continue;
      const auto& c = j["choices"][0];
      const int n = c.contains("token_ids") ? static_cast<int>(c["token_ids"].size()) : 0;
      for (int k = 0; k < n; ++k) {
        if (o.first < 0) o.first = now;
        else if (prev >= 0) o.gaps.push_back(now - prev);
        prev = now;
        o.last = now;
        ++o.tokens;
      }
    }
    return true;
  };
  o.sent = std::chrono::duration<double>(Clock::now() - t0).count();
  const httplib::Result res = cli.send(req);
  DS_CHECK(res && res->status == 200, "[bench] a completion request failed: {}",
           res ? fmt::format("HTTP {} {}", res->status, res->body) : httplib::to_string(res.error()));
  DS_CHECK(o.tokens == r.gen, "[bench] asked for {} tokens and received {}", r.gen, o.tokens);
  return o;
}

}  // namespace

bool generation_meets_sla(const std::vector<double>& gaps, double tokens_per_s) {
  constexpr double kAlpha = 2.0 / (16 + 1);
  double num = 0, den = 0;
  for (const double g : gaps) {
    num = g + (1 - kAlpha) * num;
    den = 1 + (1 - kAlpha) * den;
    if (num / den >= 1.0 / tokens_per_s) return false;
  }
  return true;
}

// Note [SLA capacity]
// With limit L = 1 / floor and d_k = gap_k - L, the moving average stays below L at every token exactly when
// S_n = d_n + (1 - alpha) S_{n-1} < 0 for every n (S_n is the numerator of average - L, and the weights are
// positive). Then sum_k d_k = S_N + alpha * (S_1 + ... + S_{N-1}) < 0: the mean gap is below L as well, so a
// request that meets both SLAs lasts at most prompt / prompt floor + (gen - 1) * L from sending to its last
// token. With C closed-loop clients (no pause between a response and the next request), Little's law gives
// requests/s = C / mean latency, and the passes cannot do more than one request's worth of work per request:
// C * (pass time per request) <= mean latency. The pass time per request is estimated from the engine's measured
// passes: its prompt at the cost of a pass over one mean-length prompt, each further token at a decode's share of
// a pass of `batch` decodes; a mixed pass spends about the sum of its parts (the engine-passes line shows it),
// and HTTP, sampling and scheduling come on top, so the estimate errs on the side of more clients.
SlaCapacity sla_capacity(double prompt_tokens, double gen_tokens, double prompt_floor_tokens_per_s,
                         double gen_floor_tokens_per_s, double prompt_pass_s, double decode_batch_pass_s, int batch) {
  SlaCapacity c;
  const double later_tokens = std::max(gen_tokens - 1, 0.0);
  c.max_latency_s = prompt_tokens / prompt_floor_tokens_per_s + later_tokens / gen_floor_tokens_per_s;
  c.pass_time_s = prompt_pass_s + later_tokens * decode_batch_pass_s / std::max(batch, 1);
  c.clients = c.pass_time_s > 0 ? c.max_latency_s / c.pass_time_s : 0;
  return c;
}

namespace {

// What dspeed serve would build for these options (ServingStack), over the already loaded model.
ServingStackOptions stack_options(const ServeBenchOptions& o, const std::string& policy) {
  ServingStackOptions so;
  so.tokenizer_dir.clear();  // token-id prompts only
  so.policy = policy;
  so.token_budget = o.token_budget;
  so.static_batch_size = o.static_batch_size;
  so.kv_block_size = o.kv_block_size;
  so.kv_memory_bytes = o.kv_memory_bytes;
  so.max_queue = 4096;
  so.seed = o.seed;
  so.threads = o.threads;
  so.device = o.device;
  so.weights = o.weights;
  so.kv_dtype = o.kv_dtype;
  return so;
}

// A server with its own engine and loop for one policy.
struct Served {
  Served(std::shared_ptr<const inference::InferenceModel> model, const ServeBenchOptions& o, const std::string& policy)
      : stack(stack_options(o, policy), std::move(model)), server(stack.loop(), nullptr, server_options()) {
    stack.loop().start();
    server.start();
  }
  ~Served() {
    server.stop();
    stack.loop().stop();
  }
  static ServerOptions server_options() {
    ServerOptions s;
    s.port = 0;
    return s;
  }
  ServingStack stack;
  HttpServer server;
};

// The engine's own costs behind the SLAs, without HTTP: a decode pass of 1 and of `batch` sequences at the mean
// prompt's context, and a pass of one mean-length prompt alone (medians of 9).
struct PassCosts {
  double decode1_s = 0, decode_batch_s = 0, prompt_s = 0;
  std::string device;
};

PassCosts measure_passes(std::shared_ptr<const inference::InferenceModel> model, const ServeBenchOptions& o,
                         int batch, int prompt_len) {
  inference::InferenceEngine engine(
      model, ServingStack::engine_config(stack_options(o, "splitfuse"), model->config().block_size));
  const std::vector<int32_t> context(static_cast<size_t>(prompt_len), 1);
  auto time_pass = [&](std::vector<uint64_t> uids, std::vector<std::span<const int32_t>> toks) {
    const auto t0 = Clock::now();
    engine.put(uids, toks);
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };
  PassCosts c;
  std::vector<double> d1, db, pr;
  uint64_t next = 1 << 20;
  for (int rep = 0; rep < 9; ++rep) {
    pr.push_back(time_pass({next}, {context}));
    engine.flush(next++);
  }
  for (uint64_t u = 1; u <= static_cast<uint64_t>(batch); ++u) time_pass({u}, {context});
  const int32_t token = 1;
  for (int rep = 0; rep < 9; ++rep) {
    d1.push_back(time_pass({1}, {std::span<const int32_t>(&token, 1)}));
    std::vector<uint64_t> uids;
    std::vector<std::span<const int32_t>> toks;
    for (uint64_t u = 1; u <= static_cast<uint64_t>(batch); ++u) {
      uids.push_back(u);
      toks.emplace_back(&token, 1);
    }
    db.push_back(time_pass(uids, toks));
  }
  c.decode1_s = median(d1);
  c.decode_batch_s = median(db);
  c.prompt_s = median(pr);
  c.device = engine.device_description();
  return c;
}

}  // namespace

ServeBenchResult run_serve_bench(const ServeBenchOptions& o) {
  DS_CHECK_AS(ConfigError, o.prompt_sla_fraction > 0 && o.gen_sla_fraction > 0 && o.prompt_sla_rate >= 0 &&
              o.gen_sla_rate >= 0, "[bench] the SLA fractions must be positive and the SLA rates positive or 0 (0: "
              "use the fraction); got --prompt-sla-fraction {}, --gen-sla-fraction {}, --prompt-sla-rate {}, "
              "--gen-sla-rate {}", o.prompt_sla_fraction, o.gen_sla_fraction, o.prompt_sla_rate, o.gen_sla_rate);
  DS_CHECK_AS(ConfigError, o.temperature >= 0 && o.temperature <= 2 && o.top_p > 0 && o.top_p <= 1, "[bench] need "
              "--temperature in [0, 2] (as the server) and --top-p in (0, 1], got {} and {}", o.temperature, o.top_p);
  DS_CHECK_AS(ConfigError, !o.model.empty(), "[bench] give --model: a checkpoint directory (dspeed train --save DIR) "
              "or a safetensors file");
  DS_CHECK_AS(ConfigError, o.requests > 0 && !o.clients.empty() && !o.policies.empty(), "[bench] need requests > 0, "
              "at least one client count and one policy");
  for (const std::string& p : o.policies)  // a bad name or limits fail here, before any cell runs
    inference::make_scheduler(inference::parse_policy(p), ServingStack::scheduler_limits(stack_options(o, p)));
  const Device device = inference::parse_device(o.device);  // the options that fail fast, before the model loads
  const inference::WeightFormat weights = inference::parse_weight_format(o.weights);
  inference::check_weights_on_device(weights, device);
  inference::check_kv_dtype_on_device(inference::parse_kv_dtype(o.kv_dtype), device);
  if (o.threads > 0) omp_set_num_threads(o.threads);
  const std::shared_ptr<const inference::InferenceModel> model = inference::InferenceModel::load(o.model, o.arch,
                                                                                                  weights, device);
  const nn::Gpt2Config& mc = model->config();
  const double prompt_mean = o.prompt_mean > 0 ? o.prompt_mean : 0.6 * mc.block_size;
  const double gen_mean = o.gen_mean > 0 ? o.gen_mean : 0.08 * mc.block_size;
  DS_CHECK_AS(ConfigError, prompt_mean + gen_mean < mc.block_size, "[bench] prompt mean {} + generation mean {} must "
              "stay below the model's context of {} tokens", prompt_mean, gen_mean, mc.block_size);
  const int max_clients = *std::max_element(o.clients.begin(), o.clients.end());
  const std::vector<BenchRequest> requests =
      make_requests(o.requests, prompt_mean, gen_mean, o.relative_std, mc.block_size, mc.vocab_size, o.seed, o);

  ServeBenchResult result;
  fmt::print("model {}\nrequests {} per cell; prompt ~N({:.0f}, {:.0f}) tokens, generation ~N({:.0f}, {:.0f}), {}; "
             "token budget {}; KV blocks of {}\n", mc.str(), o.requests, prompt_mean, o.relative_std * prompt_mean,
             gen_mean, o.relative_std * gen_mean,
             o.temperature > 0 ? fmt::format("temperature {} top_p {}", o.temperature, o.top_p) : "greedy",
             o.token_budget, o.kv_block_size);

  // The engine's own single-request speed: mean-length requests one at a time.
  {
    Served s(model, o, "splitfuse");
    httplib::Client cli("127.0.0.1", s.server.port());
    cli.set_read_timeout(600);
    const std::vector<BenchRequest> one = make_requests(6, prompt_mean, gen_mean, 0.0, mc.block_size, mc.vocab_size,
                                                        o.seed + 1, o);
    std::vector<double> prefill, decode;
    for (size_t i = 0; i < one.size(); ++i) {
      const Observed r = send_streaming(cli, one[i], Clock::now());
      if (i == 0) continue;  // warm-up
      prefill.push_back(static_cast<double>(one[i].prompt.size()) / (r.first - r.sent));
      if (r.tokens > 1) decode.push_back((r.tokens - 1) / (r.last - r.first));
    }
    result.single_prefill_tokens_per_s = median(prefill);
    result.single_decode_tokens_per_s = median(decode);
  }
  const double prefill_floor =
      o.prompt_sla_rate > 0 ? o.prompt_sla_rate : o.prompt_sla_fraction * result.single_prefill_tokens_per_s;
  const double decode_floor =
      o.gen_sla_rate > 0 ? o.gen_sla_rate : o.gen_sla_fraction * result.single_decode_tokens_per_s;
  const PassCosts pc = measure_passes(model, o, max_clients, static_cast<int>(std::lround(prompt_mean)));
  fmt::print("engine passes on {}, {} weights, {} KV: 1 decode {:.2f} ms, {} decodes {:.2f} ms ({:.1f}x), a prompt of "
             "{:.0f} tokens {:.2f} ms ({:.1f} us a token)\n", pc.device, o.weights, o.kv_dtype, 1e3 * pc.decode1_s,
             max_clients, 1e3 * pc.decode_batch_s, pc.decode_batch_s / pc.decode1_s, prompt_mean, 1e3 * pc.prompt_s,
             1e6 * pc.prompt_s / prompt_mean);
  fmt::print("single request: prefill {:.0f} tokens/s, decode {:.1f} tokens/s -> SLAs: prompt at >= {:.0f} tokens/s, "
             "generation at >= {:.1f} tokens/s\n", result.single_prefill_tokens_per_s,
             result.single_decode_tokens_per_s, prefill_floor, decode_floor);
  result.capacity = sla_capacity(prompt_mean, gen_mean, prefill_floor, decode_floor, pc.prompt_s, pc.decode_batch_s,
                                 max_clients);
  fmt::print("SLA capacity: a mean request meeting both SLAs lasts at most {:.1f} ms and needs about {:.2f} ms of "
             "passes, so at most about {:.1f} clients can all meet them at once, whatever the policy\n\n",
             1e3 * result.capacity.max_latency_s, 1e3 * result.capacity.pass_time_s, result.capacity.clients);
  fmt::print("{:<14} {:>7} {:>8} {:>10} {:>9} {:>9} {:>10} {:>10} {:>7} {:>7} {:>9} {:>10} {:>7} {:>5} {:>5}\n",
             "policy", "clients", "req/s", "out tok/s", "TTFT p50", "TTFT p95", "token p50", "token p95", "prompt",
             "gen", "SLA met", "eff. req/s", "preempt", "fwd", "loop");

  for (const int clients : o.clients) {
    DS_CHECK_AS(ConfigError, clients >= 1 && clients <= 256, "[bench] client counts must be 1..256, got {}", clients);
    for (const std::string& policy : o.policies) {
      Served s(model, o, policy);
      {  // warm-up: fault in the cache and the scratch buffers
        httplib::Client cli("127.0.0.1", s.server.port());
        cli.set_read_timeout(600);
        send_streaming(cli, requests[0], Clock::now());
      }
      const inference::LoopStats before = s.stack.loop().stats();
      std::vector<Observed> seen(requests.size());
      std::atomic<size_t> next{0};
      std::mutex err_mu;
      std::string error;
      const auto t0 = Clock::now();
      std::vector<std::thread> workers;
      for (int c = 0; c < clients; ++c) {
        workers.emplace_back([&] {
          httplib::Client cli("127.0.0.1", s.server.port());
          cli.set_read_timeout(600);
          for (size_t i = next++; i < requests.size(); i = next++) {
            try {
              seen[i] = send_streaming(cli, requests[i], t0);
            } catch (const std::exception& e) {
              const std::lock_guard<std::mutex> lock(err_mu);
              error = e.what();
            }
          }
        });
      }
      for (auto& w : workers) w.join();
      const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
      DS_CHECK(error.empty(), "{}", error);
      const inference::LoopStats after = s.stack.loop().stats();

      ServeBenchCell cell;
      cell.policy = policy;
      cell.clients = clients;
      cell.requests = static_cast<int>(requests.size());
      cell.seconds = wall;
      std::vector<double> ttft, gaps;
      int64_t out_tokens = 0;
      for (size_t i = 0; i < requests.size(); ++i) {
        const Observed& r = seen[i];
        const double t = r.first - r.sent;
        ttft.push_back(t);
        gaps.insert(gaps.end(), r.gaps.begin(), r.gaps.end());
        out_tokens += r.tokens;
        const bool prompt_ok = t <= static_cast<double>(requests[i].prompt.size()) / prefill_floor;
        const bool gen_ok = generation_meets_sla(r.gaps, decode_floor);
        cell.meeting_prompt_sla += prompt_ok;
        cell.meeting_generation_sla += gen_ok;
        if (prompt_ok && gen_ok) ++cell.meeting_sla;
      }
      cell.requests_per_s = cell.requests / wall;
      cell.output_tokens_per_s = static_cast<double>(out_tokens) / wall;
      cell.ttft_p50_s = percentile(ttft, 0.5);
      cell.ttft_p95_s = percentile(ttft, 0.95);
      cell.token_gap_p50_s = percentile(gaps, 0.5);
      cell.token_gap_p95_s = percentile(gaps, 0.95);
      cell.effective_requests_per_s = cell.meeting_sla / wall;
      cell.preemptions = after.preemptions - before.preemptions;
      cell.passes = after.passes - before.passes;
      cell.forward_share = (after.forward_seconds - before.forward_seconds) / wall;
      cell.loop_share = (after.busy_seconds - before.busy_seconds) / wall;
      cell.forward_s_per_request = (after.forward_seconds - before.forward_seconds) / cell.requests;
      fmt::print("{:<14} {:>7} {:>8.2f} {:>10.1f} {:>7.1f}ms {:>7.1f}ms {:>8.2f}ms {:>8.2f}ms {:>7} {:>7} {:>5}/{:<3} "
                 "{:>10.2f} {:>7} {:>4.0f}% {:>4.0f}%\n", policy, clients, cell.requests_per_s,
                 cell.output_tokens_per_s, 1e3 * cell.ttft_p50_s, 1e3 * cell.ttft_p95_s, 1e3 * cell.token_gap_p50_s,
                 1e3 * cell.token_gap_p95_s, cell.meeting_prompt_sla, cell.meeting_generation_sla, cell.meeting_sla,
                 cell.requests, cell.effective_requests_per_s, cell.preemptions, 100 * cell.forward_share,
                 100 * cell.loop_share);
      std::fflush(stdout);
      if (!o.json_out.empty()) {
        std::ofstream out(o.json_out, std::ios::app);
        out << nlohmann::json{{"policy", policy}, {"clients", clients}, {"requests", cell.requests},
                              {"seconds", wall}, {"requests_per_s", cell.requests_per_s},
                              {"output_tokens_per_s", cell.output_tokens_per_s}, {"ttft_p50_s", cell.ttft_p50_s},
                              {"ttft_p95_s", cell.ttft_p95_s}, {"token_gap_p50_s", cell.token_gap_p50_s},
                              {"token_gap_p95_s", cell.token_gap_p95_s}, {"meeting_sla", cell.meeting_sla},
                              {"meeting_prompt_sla", cell.meeting_prompt_sla},
                              {"meeting_generation_sla", cell.meeting_generation_sla},
                              {"effective_requests_per_s", cell.effective_requests_per_s},
                              {"single_prefill_tokens_per_s", result.single_prefill_tokens_per_s},
                              {"single_decode_tokens_per_s", result.single_decode_tokens_per_s},
                              {"prompt_sla_tokens_per_s", prefill_floor}, {"gen_sla_tokens_per_s", decode_floor},
                              {"sla_capacity_clients", result.capacity.clients},
                              {"token_budget", o.token_budget}, {"device", o.device}, {"weights", o.weights},
                              {"kv_dtype", o.kv_dtype}, {"temperature", o.temperature}, {"top_p", o.top_p},
                              {"preemptions", cell.preemptions}, {"passes", cell.passes},
                              {"forward_share", cell.forward_share}, {"loop_share", cell.loop_share},
                              {"forward_s_per_request", cell.forward_s_per_request}}
                   .dump()
            << "\n";
      }
      result.cells.push_back(cell);
    }
  }
  // The ratios the FastGen comparison is about, at the largest client count.
  auto find = [&](const std::string& p) -> const ServeBenchCell* {
    for (const auto& c : result.cells)
      if (c.policy == p && c.clients == max_clients) return &c;
    return nullptr;
  };
  const ServeBenchCell* sf = find("splitfuse");
  if (sf) {
    fmt::print("\nat {} clients{}:\n", max_clients,
               max_clients > result.capacity.clients
                   ? fmt::format(" (beyond the SLA capacity of about {:.1f}: not every request can meet the SLAs)",
                                 result.capacity.clients)
                   : std::string());
    for (const char* other : {"prefill-first", "static"}) {
      const ServeBenchCell* b = find(other);
      if (!b) continue;
      const double sf_eff = sf->effective_requests_per_s, b_eff = b->effective_requests_per_s;
      const std::string eff = b_eff > 0    ? fmt::format("{:.2f}x", sf_eff / b_eff)
                              : sf_eff > 0 ? std::string("only splitfuse met the SLAs")
                                           : std::string("n/a (neither met the SLAs)");
      fmt::print("  splitfuse / {:<13} effective throughput {}, p95 token gap {:.2f}x ({:.1f} vs {:.1f} ms)\n", other,
                 eff, sf->token_gap_p95_s / b->token_gap_p95_s, 1e3 * sf->token_gap_p95_s, 1e3 * b->token_gap_p95_s);
    }
    fmt::print("  splitfuse's forward passes took {:.2f} ms per request under this load ({:.2f} ms estimated from "
               "passes run alone)\n", 1e3 * sf->forward_s_per_request, 1e3 * result.capacity.pass_time_s);
  }
  return result;
}

}  // namespace ds::serve
