// Name matching for "did you mean" error messages: edit distance, the closest names among candidates, and the
// quoted list those messages print; shell quoting; UTF-8 well-formedness. Distances are plain Levenshtein (one edit per inserted, deleted or replaced
// byte; a transposition costs two), so the ranking is predictable and easy to test by hand.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace ds {

enum class Case { sensitive, insensitive };

// Levenshtein distance between a and b; Case::insensitive compares ASCII letters without case.
size_t edit_distance(std::string_view a, std::string_view b, Case letter_case = Case::sensitive);

// The most edits a mistyped name of this length plausibly has, max(2, size / 3): beyond it a suggestion is noise.
size_t typo_distance_limit(std::string_view name);

// Up to max_results candidates closest to `wanted` by case-sensitive edit distance, nearest first, ties by name;
// only those within max_distance edits. Duplicates in candidates are returned once.
std::vector<std::string> closest_names(std::string_view wanted, const std::vector<std::string>& candidates,
                                       size_t max_results, size_t max_distance = static_cast<size_t>(-1));

// "'a', 'b', 'c'"; empty for no names.
std::string quoted_list(const std::vector<std::string>& names);

// s as one word for /bin/sh: as it is when it holds only safe characters, otherwise in single quotes.
std::string shell_quote(const std::string& s);

// UTF-8, by the Unicode standard's table of well-formed sequences. The length of a character from its lead byte
// (0 for a byte that cannot start one: a continuation, C0, C1, F5 and above).
int utf8_length(unsigned char lead);
// Whether b may follow lead as the first continuation byte (excludes overlong forms, surrogates and code points
// above U+10FFFF).
bool utf8_valid_second(unsigned char lead, unsigned char b);
// Whether s is whole, well-formed UTF-8.
bool is_utf8(std::string_view s);

}  // namespace ds
