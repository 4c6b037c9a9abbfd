// The OpenAI surface end to end over HTTP: chat completions (whole and streamed) against the model's own greedy
// continuation of the ChatML prompt computed by the full-recompute reference; completions' echo and logprobs
// against the full forward's log_softmax at every position; logit_bias and the penalties changing what greedy
// decoding picks. The tiny GPT-2 has random weights, so texts are arbitrary but exactly determined.
#include <cmath>
#include <map>

#include "common/full_recompute.h"
#include "ds/serve/chat_template.h"
#include "serve/server_harness.h"

namespace ds::serve {
namespace {

using namespace harness;

// The full forward's log_softmax at every position of `tokens`.
std::vector<std::vector<double>> log_softmax_rows(const std::vector<int32_t>& tokens) {
  nn::Gpt2& model = tiny_model();
  const int T = static_cast<int>(tokens.size()), V = model.config().vocab_size;
  std::vector<float> logits(static_cast<size_t>(T) * V);
  nn::Ctx ctx;
  model.forward_logits(ctx, tokens.data(), 1, T, logits.data());
  std::vector<std::vector<double>> rows;
  for (int t = 0; t < T; ++t) {
    const float* r = logits.data() + int64_t(t) * V;
    const double m = *std::max_element(r, r + V);
    double z = 0.0;
    for (int v = 0; v < V; ++v) z += std::exp(double(r[v]) - m);
    std::vector<double> row(static_cast<size_t>(V));
    for (int v = 0; v < V; ++v) row[static_cast<size_t>(v)] = double(r[v]) - m - std::log(z);
    rows.push_back(std::move(row));
  }
  return rows;
}

Reply post_to(const Harness& h, const std::string& path, const json& body) {
  httplib::Client cli = h.client();
  const httplib::Result res = cli.Post(path, body.dump(), "application/json");
  if (!res) {
    ADD_FAILURE() << "POST " << path << " failed: " << httplib::to_string(res.error());
    return {};
  }
  return {res->status, json::parse(res->body, nullptr, false), res->headers};
}

// The data events of a streamed response (without [DONE]), and whether [DONE] ended it.
std::pair<std::vector<json>, bool> stream_events(const Harness& h, const std::string& path, const json& body) {
  httplib::Client cli = h.client();
  const httplib::Result res = cli.Post(path, body.dump(), "application/json");
  std::vector<json> events;
  if (!res || res->status != 200) {
    ADD_FAILURE() << "stream " << path << ": " << (res ? res->body : httplib::to_string(res.error()));
    return {events, false};
  }
  bool done = false;
  size_t pos = 0;
  while (pos < res->body.size()) {
    const size_t end = res->body.find("\n\n", pos);
    if (end == std::string::npos) break;
    const std::string e = res->body.substr(pos, end - pos);
    pos = end + 2;
    EXPECT_EQ(e.rfind("data: ", 0), 0u) << e;
    EXPECT_FALSE(done) << "an event after [DONE]";
    if (e == "data: [DONE]") done = true;
    else events.push_back(json::parse(e.substr(6)));
  }
  return {events, done};
}

TEST(OpenAiApi, ChatCompletionIsTheGreedyContinuationOfTheChatMlPrompt) {
  Harness h;
  const json messages = {{{"role", "system"}, {"content", "You are terse."}},
                         {{"role", "user"}, {"content", "Name a colour."}}};
  const std::string prompt_text =
      "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n"
      "<|im_start|>assistant\n";
  const std::vector<int32_t> prompt = test_tokenizer().encode(prompt_text);
  const std::vector<int32_t> ref = ds::testing::full_recompute_greedy(tiny_model(), prompt, 12);
  const std::string ref_text = test_tokenizer().decode(ref);

  const json body = {{"model", kModelName}, {"messages", messages}, {"max_tokens", 12}, {"temperature", 0}};
  const Reply r = post_to(h, "/v1/chat/completions", body);
  ASSERT_EQ(r.status, 200) << r.body.dump();
  EXPECT_EQ(r.body["object"], "chat.completion");
  EXPECT_EQ(r.body["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  const json& c = r.body["choices"][0];
  EXPECT_EQ(c["message"]["role"], "assistant");
  EXPECT_EQ(c["message"]["content"], ref_text.substr(0, ref_text.find("<|im_end|>")));
  EXPECT_EQ(c["finish_reason"], ref_text.find("<|im_end|>") == std::string::npos ? "length" : "stop");
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], prompt.size());
  EXPECT_TRUE(c["logprobs"].is_null());

  // Streamed: the role first, content deltas that join to the same text, a closing chunk with the finish reason,
  // the usage chunk, then [DONE].
  json sbody = body;
  sbody["stream"] = true;
  sbody["stream_options"] = {{"include_usage", true}};
  const auto [events, done] = stream_events(h, "/v1/chat/completions", sbody);
  EXPECT_TRUE(done);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.front()["choices"][0]["delta"], json({{"role", "assistant"}, {"content", ""}}));
  std::string joined;
  for (size_t i = 1; i + 2 < events.size(); ++i) {
    EXPECT_EQ(events[i]["object"], "chat.completion.chunk");
    EXPECT_TRUE(events[i]["choices"][0]["finish_reason"].is_null());
    joined += events[i]["choices"][0]["delta"]["content"].get<std::string>();
  }
  EXPECT_EQ(joined, c["message"]["content"]);
  const json& closing = events[events.size() - 2];
  EXPECT_EQ(closing["choices"][0]["delta"], json::object());
  EXPECT_EQ(closing["choices"][0]["finish_reason"], c["finish_reason"]);
  EXPECT_EQ(events.back()["choices"], json::array());
  EXPECT_EQ(events.back()["usage"], r.body["usage"]);

  // Chat log-probabilities: one entry per generated token, the token's bytes, greedy = the most likely.
  json lbody = body;
  lbody["logprobs"] = true;
  lbody["top_logprobs"] = 2;
  const Reply l = post_to(h, "/v1/chat/completions", lbody);
  ASSERT_EQ(l.status, 200) << l.body.dump();
  const json& content = l.body["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), l.body["usage"]["completion_tokens"].get<size_t>());
  const auto rows = log_softmax_rows([&] {
    std::vector<int32_t> all = prompt;
    all.insert(all.end(), ref.begin(), ref.end());
    return all;
  }());
  for (size_t k = 0; k < content.size(); ++k) {
    const std::string token = test_tokenizer().decode(std::vector<int32_t>{ref[k]});
    EXPECT_EQ(content[k]["top_logprobs"].size(), 2u);
    EXPECT_EQ(content[k]["top_logprobs"][0]["logprob"], content[k]["logprob"]) << "greedy picks the most likely";
    EXPECT_NEAR(content[k]["logprob"].get<double>(), rows[prompt.size() - 1 + k][static_cast<size_t>(ref[k])], 2e-4);
    std::string bytes;
    for (const auto& b : content[k]["bytes"]) bytes += static_cast<char>(b.get<int>());
    EXPECT_EQ(bytes, token);
  }
  expect_idle(h);
}

// A model's own chat template (Jinja) replaces ChatML: the reply is the greedy continuation of the prompt that
// template makes, computed here independently of the server, and its eos_token text ends the reply.
TEST(OpenAiApi, ChatUsesTheModelsJinjaTemplate) {
  ServerOptions o = Harness::options();
  auto format = std::make_shared<ChatFormat>();
  format->jinja = std::make_shared<const ChatTemplate>(ChatTemplate::parse(
      "{% for m in messages %}{{ '<|' + m.role + '|>\n' + m.content | trim + eos_token }}\n{% endfor %}"
      "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}",
      "test template"));
  format->eos_token = "</s>";
  format->origin = "test template";
  o.chat = format;
  Harness h(256, true, &server_tokenizer(), o);
  const std::string prompt_text = "<|system|>\nBe kind.</s>\n<|user|>\nHi there</s>\n<|assistant|>\n";
  const std::vector<int32_t> prompt = test_tokenizer().encode(prompt_text);
  const std::string ref = test_tokenizer().decode(ds::testing::full_recompute_greedy(tiny_model(), prompt, 10));
  const Reply r = post_to(h, "/v1/chat/completions",
                          {{"messages", {{{"role", "system"}, {"content", "Be kind."}},
                                         {{"role", "user"}, {"content", "  Hi there "}}}},
                           {"max_tokens", 10}, {"temperature", 0}});
  ASSERT_EQ(r.status, 200) << r.body.dump();
  EXPECT_EQ(r.body["usage"]["prompt_tokens"], prompt.size());
  EXPECT_EQ(r.body["choices"][0]["message"]["content"], ref.substr(0, ref.find("</s>")));
  expect_idle(h);
}

TEST(OpenAiApi, EchoWithLogprobsScoresThePromptAsTheFullForwardDoes) {
  Harness h;
  const std::string text = "The quick brown fox jumps over";
  const std::vector<int32_t> prompt = test_tokenizer().encode(text);
  const auto rows = log_softmax_rows(prompt);
  // max_tokens 0: the evaluation harnesses' loglikelihood request.
  const Reply r = post_to(h, "/v1/completions", {{"prompt", text}, {"max_tokens", 0}, {"echo", true}, {"logprobs", 1}});
  ASSERT_EQ(r.status, 200) << r.body.dump();
  const json& c = r.body["choices"][0];
  EXPECT_EQ(c["text"], text);
  EXPECT_EQ(c["finish_reason"], "length");
  EXPECT_EQ(r.body["usage"]["completion_tokens"], 0);
  const json& lp = c["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), prompt.size());
  EXPECT_TRUE(lp["token_logprobs"][0].is_null());
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());
  size_t offset = 0;
  for (size_t k = 0; k < prompt.size(); ++k) {
    const std::string token = test_tokenizer().decode(std::vector<int32_t>{prompt[k]});
    EXPECT_EQ(lp["tokens"][k], token);
    EXPECT_EQ(lp["text_offset"][k], offset);
    offset += token.size();
    if (k == 0) continue;
    EXPECT_NEAR(lp["token_logprobs"][k].get<double>(), rows[k - 1][static_cast<size_t>(prompt[k])], 2e-4) << k;
    ASSERT_EQ(lp["top_logprobs"][k].size(), 1u);
  }

  // With generation: the text is prompt + completion, and the listing goes on with the generated tokens.
  const Reply g = post_to(h, "/v1/completions", {{"prompt", text}, {"max_tokens", 4}, {"echo", true},
                                                 {"logprobs", 0}, {"temperature", 0}, {"ignore_eos", true}});
  ASSERT_EQ(g.status, 200) << g.body.dump();
  const std::vector<int32_t> ref = ds::testing::full_recompute_greedy(tiny_model(), prompt, 4);
  EXPECT_EQ(g.body["choices"][0]["text"], text + test_tokenizer().decode(ref));
  EXPECT_EQ(g.body["choices"][0]["logprobs"]["tokens"].size(), prompt.size() + 4);

  // Streamed: the echo chunk first with the prompt's listing, then the tokens; the offsets run on.
  const auto [events, done] = stream_events(h, "/v1/completions",
                                            {{"prompt", text}, {"max_tokens", 4}, {"echo", true}, {"logprobs", 0},
                                             {"temperature", 0}, {"ignore_eos", true}, {"stream", true}});
  EXPECT_TRUE(done);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events[0]["choices"][0]["text"], text);
  std::string joined;
  std::vector<json> offsets;
  for (const json& e : events) {
    joined += e["choices"][0]["text"].get<std::string>();
    const json& l = e["choices"][0]["logprobs"];
    if (l.is_null()) continue;
    for (const auto& o : l["text_offset"]) offsets.push_back(o);
  }
  EXPECT_EQ(joined, g.body["choices"][0]["text"]);
  EXPECT_EQ(json(offsets), g.body["choices"][0]["logprobs"]["text_offset"]);
  expect_idle(h);
}

TEST(OpenAiApi, LogitBiasAndPenaltiesChangeWhatGreedyPicks) {
  Harness h;
  const std::vector<int32_t> prompt = test_tokenizer().encode("Once upon a time");
  const std::vector<int32_t> ref = ds::testing::full_recompute_greedy(tiny_model(), prompt, 6);
  auto ids_of = [&](const json& extra) {
    json body = {{"prompt", prompt}, {"max_tokens", 6}, {"temperature", 0}, {"ignore_eos", true}};
    body.update(extra);
    const Reply r = post_to(h, "/v1/completions", body);
    EXPECT_EQ(r.status, 200) << r.body.dump();
    return r.body["choices"][0]["token_ids"].get<std::vector<int32_t>>();
  };
  EXPECT_EQ(ids_of(json::object()), ref);
  // Banning the first greedy token changes the first token; +100 on a token makes it every token.
  EXPECT_NE(ids_of({{"logit_bias", {{std::to_string(ref[0]), -100}}}})[0], ref[0]);
  EXPECT_EQ(ids_of({{"logit_bias", {{"464", 100}}}}), std::vector<int32_t>(6, 464));
  // Penalties: OpenAI's formula applied here to the full recompute's logits at every step.
  const float presence = 0.5f, frequency = 1.5f, bias = 5.0f;
  std::vector<int32_t> expected, seq = prompt;
  std::map<int32_t, int> count;
  for (int k = 0; k < 6; ++k) {
    std::vector<float> l = ds::testing::full_recompute_last_logits(tiny_model(), seq);
    l[464] += bias;
    for (const auto& [t, n] : count) l[static_cast<size_t>(t)] -= frequency * static_cast<float>(n) + presence;
    const int32_t best = ds::testing::argmax(l);
    ++count[best];
    expected.push_back(best);
    seq.push_back(best);
  }
  const std::vector<int32_t> penalised = ids_of(
      {{"presence_penalty", presence}, {"frequency_penalty", frequency}, {"logit_bias", {{"464", bias}}}});
  EXPECT_EQ(penalised, expected);
  EXPECT_GT(std::count(expected.begin(), expected.end(), 464), 0);
  EXPECT_LT(std::count(expected.begin(), expected.end(), 464), 6) << "the penalties must come to outweigh the bias";
  expect_idle(h);
}

// n choices share the prompt: choice i is exactly what a lone request seeded seed + i gives (whole and streamed,
// completions and chat); best_of returns the candidate with the highest mean log-probability per token, checked
// against the candidates fetched one by one with their log-probabilities.
TEST(OpenAiApi, SeveralChoicesAndBestOf) {
  Harness h;
  const json base = {{"prompt", "It was a dark and stormy night"}, {"max_tokens", 6}, {"temperature", 1.0},
                     {"seed", 77}, {"ignore_eos", true}};
  auto lone = [&](int i) {
    json b = base;
    b["seed"] = 77 + i;
    b["logprobs"] = 0;
    const Reply r = post_to(h, "/v1/completions", b);
    EXPECT_EQ(r.status, 200) << r.body.dump();
    return r.body["choices"][0];
  };
  std::vector<json> lones;
  for (int i = 0; i < 3; ++i) lones.push_back(lone(i));

  json nb = base;
  nb["n"] = 3;
  const Reply several = post_to(h, "/v1/completions", nb);
  ASSERT_EQ(several.status, 200) << several.body.dump();
  ASSERT_EQ(several.body["choices"].size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(several.body["choices"][i]["index"], i);
    EXPECT_EQ(several.body["choices"][i]["text"], lones[static_cast<size_t>(i)]["text"]) << "choice " << i;
  }
  EXPECT_EQ(several.body["usage"]["completion_tokens"], 18);
  EXPECT_NE(several.body["choices"][0]["text"], several.body["choices"][1]["text"]);

  // Streamed: chunks of every index, joined per index to the same texts.
  nb["stream"] = true;
  const auto [events, done] = stream_events(h, "/v1/completions", nb);
  EXPECT_TRUE(done);
  std::vector<std::string> joined(3);
  for (const json& e : events) {
    const json& c = e["choices"][0];
    joined[c["index"].get<size_t>()] += c["text"].get<std::string>();
  }
  for (int i = 0; i < 3; ++i) EXPECT_EQ(joined[static_cast<size_t>(i)], lones[static_cast<size_t>(i)]["text"]);

  // best_of 3, n 1: the candidate with the best mean log-probability.
  size_t best = 0;
  auto mean = [&](size_t i) {
    double sum = 0;
    for (const auto& x : lones[i]["logprobs"]["token_logprobs"]) sum += x.get<double>();
    return sum / 6.0;
  };
  for (size_t i = 1; i < 3; ++i) {
    if (mean(i) > mean(best)) best = i;
  }
  json bb = base;
  bb["best_of"] = 3;
  const Reply b = post_to(h, "/v1/completions", bb);
  ASSERT_EQ(b.status, 200) << b.body.dump();
  ASSERT_EQ(b.body["choices"].size(), 1u);
  EXPECT_EQ(b.body["choices"][0]["index"], 0);
  EXPECT_EQ(b.body["choices"][0]["text"], lones[best]["text"]) << "best candidate " << best;
  EXPECT_TRUE(b.body["choices"][0]["logprobs"].is_null()) << "not asked for, so not listed";
  EXPECT_EQ(b.body["usage"]["completion_tokens"], 18) << "every candidate's tokens count";

  // Chat with n: the same rule, and a role chunk for each index when streamed.
  const json chat = {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"max_tokens", 4}, {"temperature", 1.0},
                     {"seed", 5}, {"n", 2}};
  const Reply c = post_to(h, "/v1/chat/completions", chat);
  ASSERT_EQ(c.status, 200) << c.body.dump();
  ASSERT_EQ(c.body["choices"].size(), 2u);
  json single = chat;
  single.erase("n");
  single["seed"] = 6;
  EXPECT_EQ(post_to(h, "/v1/chat/completions", single).body["choices"][0]["message"], c.body["choices"][1]["message"]);
  json cs = chat;
  cs["stream"] = true;
  const auto [chat_events, chat_done] = stream_events(h, "/v1/chat/completions", cs);
  EXPECT_TRUE(chat_done);
  int roles = 0;
  for (const json& e : chat_events) roles += e["choices"][0]["delta"].contains("role") ? 1 : 0;
  EXPECT_EQ(roles, 2);
  expect_idle(h);
}

}  // namespace
}  // namespace ds::serve
