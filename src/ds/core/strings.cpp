// Edit distance and closest-name search for error messages (see strings.h). One row of the dynamic programme is
// kept, so memory is O(|b|); names here are short, so no early exit on the distance limit is attempted.
#include "ds/core/strings.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <utility>

namespace ds {

size_t edit_distance(std::string_view a, std::string_view b, Case letter_case) {
  const auto same = [letter_case](char x, char y) {
    if (letter_case == Case::sensitive) return x == y;
    return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
  };
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];  // row[j - 1] of the previous row
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (same(a[i - 1], b[j - 1]) ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

size_t typo_distance_limit(std::string_view name) { return std::max<size_t>(2, name.size() / 3); }

std::vector<std::string> closest_names(std::string_view wanted, const std::vector<std::string>& candidates,
                                       size_t max_results, size_t max_distance) {
  std::vector<std::pair<size_t, const std::string*>> near;
  for (const std::string& c : candidates) {
    const size_t d = edit_distance(wanted, c);
    if (d <= max_distance) near.emplace_back(d, &c);
  }
  std::sort(near.begin(), near.end(),
            [](const auto& x, const auto& y) { return x.first != y.first ? x.first < y.first : *x.second < *y.second; });
  std::vector<std::string> out;
  for (const auto& [d, name] : near) {
    if (out.size() == max_results) break;
    if (out.empty() || out.back() != *name) out.push_back(*name);
  }
  return out;
}

std::string quoted_list(const std::vector<std::string>& names) {
  std::string s;
  for (const std::string& n : names) {
    if (!s.empty()) s += ", ";
    s += '\'';
    s += n;
    s += '\'';
  }
  return s;
}

std::string shell_quote(const std::string& s) {
  const bool safe = !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || std::strchr("_-./,:=@%+", c) != nullptr;
  });
  if (safe) return s;
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

int utf8_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

bool utf8_valid_second(unsigned char lead, unsigned char b) {
  switch (lead) {
    case 0xE0: return b >= 0xA0 && b <= 0xBF;
    case 0xED: return b >= 0x80 && b <= 0x9F;
    case 0xF0: return b >= 0x90 && b <= 0xBF;
    case 0xF4: return b >= 0x80 && b <= 0x8F;
    default: return b >= 0x80 && b <= 0xBF;
  }
}

bool is_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const auto lead = static_cast<unsigned char>(s[i]);
    const auto n = static_cast<size_t>(utf8_length(lead));
    if (n == 0 || i + n > s.size()) return false;
    if (n > 1 && !utf8_valid_second(lead, static_cast<unsigned char>(s[i + 1]))) return false;
    for (size_t k = 2; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

}  // namespace ds
