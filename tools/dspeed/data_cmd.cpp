// `dspeed data prepare|encode|decode`: argument parsing for the data library (ds/data), nothing more.
// Defaults are relative to the current directory and match the repository layout, so `dspeed data prepare` run
// from the repository root turns the bundled SOTU corpus into data/tokens/sotu/{train,val}.bin (val: 2010-2021).
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "ds/data/bpe_tokenizer.h"
#include "ds/data/prepare.h"

namespace ds::tool {
namespace {

constexpr const char* kDefaultTokenizer = "data/tokenizer/gpt2";

void add_prepare(CLI::App& data) {
  auto options = std::make_shared<ds::data::PrepareOptions>();
  options->inputs = {"data/corpus/sotu"};
  options->out_dir = "data/tokens/sotu";
  options->tokenizer_dir = kDefaultTokenizer;
  options->val_pattern = "^20(1[0-9]|2[01])_";
  auto* cmd = data.add_subcommand("prepare", "Encode text files into llm.c train.bin / val.bin token shards");
  cmd->add_option("--input", options->inputs, "Text files and/or directories (a directory's files in name order)")
      ->capture_default_str();
  cmd->add_option("--out", options->out_dir, "Output directory for train.bin and val.bin")->capture_default_str();
  auto* pattern = cmd->add_option("--val-pattern", options->val_pattern,
                                  "Regex on file names that selects validation documents")
                      ->capture_default_str();
  auto* fraction = cmd->add_option("--val-fraction", options->val_fraction,
                                   "Hold out this fraction of documents, from the end, instead of --val-pattern")
                       ->check(CLI::Range(0.0, 1.0));
  fraction->excludes(pattern);
  cmd->add_option("--tokenizer", options->tokenizer_dir, "Directory with encoder.json and vocab.bpe")
      ->capture_default_str();
  cmd->callback([options, fraction] {
    ds::data::PrepareOptions opts = *options;
    if (fraction->count() > 0) opts.val_pattern.clear();
    const ds::data::PrepareSummary s = ds::data::prepare_dataset(opts);
    fmt::print("prepared {} documents ({:.2f} MB of text) in {:.2f} s\n", s.train_documents + s.val_documents,
               static_cast<double>(s.train_bytes + s.val_bytes) / 1e6, s.seconds);
    fmt::print("  train: {} documents, {} tokens -> {}\n", s.train_documents, s.train_tokens, s.train_path);
    fmt::print("  val:   {} documents, {} tokens -> {}\n", s.val_documents, s.val_tokens, s.val_path);
  });
}

void add_encode(CLI::App& data) {
  struct Args {
    std::string text;
    std::string tokenizer = kDefaultTokenizer;
    bool eot = false;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = data.add_subcommand("encode", "Print the GPT-2 token ids of a text");
  cmd->add_option("--text", args->text, "Text to encode")->required();
  cmd->add_option("--tokenizer", args->tokenizer, "Directory with encoder.json and vocab.bpe")->capture_default_str();
  cmd->add_flag("--eot", args->eot, "Append the end-of-text token");
  cmd->callback([args] {
    auto tok = ds::data::BpeTokenizer::from_directory(args->tokenizer);
    std::vector<int32_t> ids = tok.encode(args->text);
    if (args->eot) tok.append_eot(ids);
    fmt::print("{}\n", fmt::join(ids, " "));
  });
}

void add_decode(CLI::App& data) {
  struct Args {
    std::vector<int32_t> ids;
    std::string tokenizer = kDefaultTokenizer;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = data.add_subcommand("decode", "Print the text of GPT-2 token ids");
  cmd->add_option("ids", args->ids, "Token ids")->required();
  cmd->add_option("--tokenizer", args->tokenizer, "Directory with encoder.json and vocab.bpe")->capture_default_str();
  cmd->callback([args] {
    const auto tok = ds::data::BpeTokenizer::from_directory(args->tokenizer);
    const std::string text = tok.decode(args->ids);
    fmt::print("{}\n", text);
  });
}

}  // namespace

void add_data_command(CLI::App& root) {
  auto* data = root.add_subcommand("data", "Prepare and inspect tokenized data");
  data->require_subcommand(1, 1);
  add_prepare(*data);
  add_encode(*data);
  add_decode(*data);
}

}  // namespace ds::tool
