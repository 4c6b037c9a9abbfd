// The official openai client (npm, pinned in package.json) against a running `dspeed serve`: what its users call
// first. Usage: node check.mjs BASE_URL MODEL. Prints one line per check; exits 1 on the first failure.
import OpenAI from "openai";

const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0, timeout: 60000 });
let passed = 0;
function check(ok, what, detail) {
  if (!ok) {
    console.log(`FAIL: ${what}: ${detail === undefined ? "" : JSON.stringify(detail)}`);
    process.exit(1);
  }
  passed++;
}

const models = await client.models.list();
check(models.data.some((m) => m.id === model), "models.list names the served model", models.data);

const messages = [{ role: "system", content: "Be brief." }, { role: "user", content: "Say hello." }];
const chat = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0 });
const content = chat.choices[0].message.content;
check(chat.object === "chat.completion" && typeof content === "string", "chat completion", chat);
check(["stop", "length"].includes(chat.choices[0].finish_reason), "chat finish_reason", chat.choices[0]);
check(chat.usage.prompt_tokens > 0 && chat.usage.completion_tokens <= 8, "chat usage", chat.usage);

let streamed = "";
let role = null;
let finish = null;
const stream = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0, stream: true });
for await (const chunk of stream) {
  const choice = chunk.choices[0];
  if (choice.delta.role) role = choice.delta.role;
  if (choice.delta.content) streamed += choice.delta.content;
  if (choice.finish_reason) finish = choice.finish_reason;
}
check(role === "assistant" && streamed === content && finish === chat.choices[0].finish_reason,
      "streamed chat equals the whole reply", { role, streamed, content, finish });

const withLogprobs = await client.chat.completions.create(
    { model, messages, max_tokens: 4, temperature: 0, logprobs: true, top_logprobs: 2, ignore_eos: true });
const listed = withLogprobs.choices[0].logprobs.content;
check(listed.length === 4 && listed.every((t) => t.logprob <= 0 && t.top_logprobs.length === 2),
      "chat logprobs: one entry per token, two alternatives each", listed);

const prompt = "The quick brown fox";
const completion = await client.completions.create(
    { model, prompt, max_tokens: 6, temperature: 0, logprobs: 2, ignore_eos: true });
const lp = completion.choices[0].logprobs;
check(lp.tokens.length === 6 && lp.token_logprobs.every((x) => x <= 0) && lp.top_logprobs.length === 6,
      "completion logprobs", lp);
check(lp.tokens.join("") === completion.choices[0].text, "completion tokens spell its text",
      { tokens: lp.tokens, text: completion.choices[0].text });

let text = "";
for await (const chunk of await client.completions.create(
    { model, prompt, max_tokens: 6, temperature: 0, ignore_eos: true, stream: true })) {
  text += chunk.choices[0]?.text ?? "";
}
check(text === completion.choices[0].text, "streamed completion equals the whole", { text });

// What evaluation harnesses send for a log-likelihood: echo, logprobs, no new tokens.
const scored = await client.completions.create({ model, prompt, max_tokens: 0, echo: true, logprobs: 0 });
const s = scored.choices[0];
check(s.text === prompt && s.logprobs.token_logprobs[0] === null &&
      s.logprobs.token_logprobs.slice(1).every((x) => x < 0), "echo with logprobs scores the prompt", s);

const two = await client.chat.completions.create(
    { model, messages, max_tokens: 4, temperature: 1, seed: 3, n: 2 });
check(two.choices.length === 2 && two.choices.map((c) => c.index).join() === "0,1", "chat n: 2 choices",
      two.choices);
const best = await client.completions.create({ model, prompt, max_tokens: 4, temperature: 1, best_of: 3 });
check(best.choices.length === 1 && best.usage.completion_tokens <= 12, "best_of 3: one choice, all counted", best);

try {
  await client.completions.create({ model: "gpt-4", prompt, max_tokens: 2 });
  check(false, "another model is refused");
} catch (e) {
  check(e instanceof OpenAI.NotFoundError && e.code === "model_not_found", "another model: NotFoundError", e.error);
}
try {
  await client.chat.completions.create({ model, messages: [], max_tokens: 2 });
  check(false, "empty messages are refused");
} catch (e) {
  check(e instanceof OpenAI.BadRequestError && e.param === "messages", "empty messages: BadRequestError", e.error);
}
console.log(`openai client: ${passed} checks passed`);
