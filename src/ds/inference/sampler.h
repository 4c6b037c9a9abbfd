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

struct SamplingParams {
  int32_t max_tokens = 16;      // OpenAI's default
  float temperature = 1.0f;     // 0: greedy
  int32_t top_k = 0;            // 0: no limit
  float top_p = 1.0f;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;       // stop strings (at most 4, as OpenAI)
  std::vector<int32_t> stop_token_ids; // generation ends after sampling one of these (it is counted, not shown)
  bool ignore_eos = false;             // otherwise the tokenizer's end-of-text token ends the generation

  // Throws ds::Error naming the field, the allowed range and the value found.
  void validate(int32_t vocab_size) const;
};

class Sampler {
 public:
  // default_seed is used when params.seed is empty.
  Sampler(const SamplingParams& params, uint64_t default_seed);
  int32_t sample(std::span<const float> logits);

 private:
  float temperature_;
  int32_t top_k_;
  float top_p_;
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
