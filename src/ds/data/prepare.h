// Turns a text corpus into train.bin / val.bin token shards (llm.c layout), one document per file.
// Each document is preceded by the end-of-text token, as in llm.c's data scripts. The validation split is chosen
// by file name (a regex, e.g. SOTU 2010-2021) or as a fraction of documents held out from the end of the list.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ds::data {

struct PrepareOptions {
  std::vector<std::string> inputs;  // text files and/or directories (their non-hidden regular files, by name)
  std::string out_dir;              // receives train.bin and val.bin (created if missing)
  std::string tokenizer_dir = "data/tokenizer/gpt2";
  std::string val_pattern;    // ECMAScript regex searched in each file name; used when not empty
  double val_fraction = 0.0;  // otherwise: hold out round(fraction * documents) from the end, at least 1
};

struct PrepareSummary {
  int64_t train_documents = 0;
  int64_t val_documents = 0;
  int64_t train_tokens = 0;  // including one end-of-text token per document
  int64_t val_tokens = 0;
  int64_t train_bytes = 0;  // bytes of input text
  int64_t val_bytes = 0;
  double seconds = 0.0;
  std::string train_path;
  std::string val_path;
};

// The documents of inputs in processing order: files as given, each directory's files sorted by name.
// IoError for an input that does not exist.
std::vector<std::string> list_documents(const std::vector<std::string>& inputs);

// Encodes and writes the shards. ConfigError if no selector is given, the regex is invalid, or the split leaves
// train or val empty; IoError for unreadable inputs or an unwritable output directory.
PrepareSummary prepare_dataset(const PrepareOptions& options);

}  // namespace ds::data
