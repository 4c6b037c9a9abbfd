// Token sampling and streamed text for one request: OpenAI completion semantics. temperature 0 is greedy (the
// lowest id among equal maxima); otherwise softmax(logits / temperature) restricted to the top_k most likely
// tokens (0: all), then to the smallest set whose probability reaches top_p, sampled with the request's own
// random stream (its seed, or one drawn by the server), so a seeded request repeats exactly whatever else runs
// beside it. TextStream turns tokens into text that is final: it holds back a tail that could still become a stop
// string, or that ends inside a UTF-8 character, and ends the text before the first stop string, which is not
// returned (as OpenAI does).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "ds/core/rng.h"

namespace ds::data {
class BpeTokenizer;
}

namespace ds::inference {

// A token's log-probability under the model, and the most likely tokens at its position (OpenAI's logprobs).
struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
  std::vector<std::pair<int32_t, float>> top;  // (token, log-probability), most likely first, ties by lower id
};
// From one row of logits: log_softmax of the raw logits, the model's own distribution (before temperature,
// penalties and biases; vLLM reports the same), with the `top` most likely tokens.
TokenLogprob token_logprob(std::span<const float> logits, int32_t token, int32_t top);

struct SamplingParams {
  int32_t max_tokens = 16;      // OpenAI's default; 0 only with prompt_logprobs (score the prompt, generate nothing)
  float temperature = 1.0f;     // 0: greedy
  int32_t top_k = 0;            // 0: no limit
  float top_p = 1.0f;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;       // stop strings (at most 4, as OpenAI)
  std::vector<int32_t> stop_token_ids; // generation ends after sampling one of these (it is counted, not shown)
  bool ignore_eos = false;             // otherwise the tokenizer's end-of-text token ends the generation
  // OpenAI's penalties, on the tokens generated so far: a token's logit loses frequency_penalty per occurrence
  // and presence_penalty once. Each in [-2, 2].
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::vector<std::pair<int32_t, float>> logit_bias;  // (token, bias in [-100, 100]) added before sampling
  int32_t logprobs = -1;          // -1: none; k in [0, 20]: each token's log-probability and the k most likely
  bool prompt_logprobs = false;   // also the prompt's tokens' (the first has none); needs logprobs >= 0
  int32_t n = 1;                  // sequences generated from the prompt, each with its own random stream

  // Throws ds::Error naming the field, the allowed range and the value found.
  void validate(int32_t vocab_size) const;
};

class Sampler {
 public:
  // default_seed is used when params.seed is empty.
  Sampler(const SamplingParams& params, uint64_t default_seed);
  // The next token from this position's logits, after the biases and penalties. The sampler remembers the tokens
  // it chose, for the penalties.
  int32_t sample(std::span<const float> logits);

 private:
  int32_t draw_token(std::span<const float> logits);

  float temperature_;
  int32_t top_k_;
  float top_p_;
  float presence_, frequency_;
  std::vector<std::pair<int32_t, float>> bias_;
  std::vector<std::pair<int32_t, int32_t>> counts_;  // (token, times chosen), for the penalties only
  Rng rng_;
};

class TextStream {
 public:
  // tokenizer may be null: the stream then yields no text and stop strings must be empty.
  TextStream(const data::BpeTokenizer* tokenizer, std::vector<std::string> stop);
  struct Delta {
    std::string text;      // newly final text
    bool stopped = false;  // a stop string completed: the text ends before it and generation must end
  };
  Delta push(int32_t token);
  // The held-back rest when generation ends for another reason (length, end of text).
  std::string finish();

 private:
  const data::BpeTokenizer* tokenizer_;
  std::vector<std::string> stop_;
  size_t max_stop_ = 0;
  std::string pending_;  // decoded bytes not yet returned
  bool stopped_ = false;
};

}  // namespace ds::inference
