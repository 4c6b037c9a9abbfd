// Edit distance and closest-name search against distances worked out by hand (each case's edits are listed).
#include "ds/core/strings.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace ds {
namespace {

TEST(Strings, EditDistanceByHand) {
  EXPECT_EQ(edit_distance("", ""), 0u);
  EXPECT_EQ(edit_distance("", "abc"), 3u);                 // 3 insertions
  EXPECT_EQ(edit_distance("abc", ""), 3u);                 // 3 deletions
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3u);       // k->s, e->i, +g
  EXPECT_EQ(edit_distance("flaw", "lawn"), 2u);            // -f, +n
  EXPECT_EQ(edit_distance("weight", "wieght"), 2u);        // a transposition is two substitutions
  EXPECT_EQ(edit_distance("n_layer", "n_layers"), 1u);
  EXPECT_EQ(edit_distance("abc", "abc"), 0u);
}

TEST(Strings, EditDistanceIsSymmetric) {
  const std::vector<std::string> words = {"", "a", "gradient_clipping", "gradient_clip", "Gradient_Clipping", "xyz"};
  for (const auto& a : words)
    for (const auto& b : words) EXPECT_EQ(edit_distance(a, b), edit_distance(b, a)) << a << " / " << b;
}

TEST(Strings, CaseInsensitiveDistance) {
  EXPECT_EQ(edit_distance("Gradient_Clipping", "gradient_clipping"), 2u);
  EXPECT_EQ(edit_distance("Gradient_Clipping", "gradient_clipping", Case::insensitive), 0u);
  EXPECT_EQ(edit_distance("ADAM", "adamw", Case::insensitive), 1u);
}

TEST(Strings, TypoDistanceLimit) {
  EXPECT_EQ(typo_distance_limit(""), 2u);
  EXPECT_EQ(typo_distance_limit("lr"), 2u);
  EXPECT_EQ(typo_distance_limit("train_batch_size"), 5u);  // 16 / 3
}

TEST(Strings, ClosestNamesNearestFirstTiesByName) {
  const std::vector<std::string> names = {"ln_2.weight", "ln_1.bias", "ln_1.weight", "attn.weight", "ln_f.weight"};
  // ln_1.weight: 2 (transposition); ln_2.weight and ln_f.weight: 3; ln_1.bias: 5; attn.weight: 6.
  EXPECT_EQ(closest_names("ln_1.wieght", names, 3),
            (std::vector<std::string>{"ln_1.weight", "ln_2.weight", "ln_f.weight"}));
  EXPECT_EQ(closest_names("ln_1.wieght", names, 1), (std::vector<std::string>{"ln_1.weight"}));
  EXPECT_EQ(closest_names("ln_1.wieght", names, 0), (std::vector<std::string>{}));
  EXPECT_EQ(closest_names("ln_1.wieght", names, 10).size(), names.size());
}

TEST(Strings, ClosestNamesRespectsTheDistanceLimit) {
  const std::vector<std::string> keys = {"preset", "n_layer", "n_head", "n_embd", "vocab_size", "block_size"};
  EXPECT_EQ(closest_names("n_layers", keys, 1, 2), (std::vector<std::string>{"n_layer"}));
  EXPECT_TRUE(closest_names("learning_rate", keys, 3, 2).empty());
  EXPECT_TRUE(closest_names("x", {}, 3).empty());
}

TEST(Strings, ClosestNamesListsADuplicateOnce) {
  EXPECT_EQ(closest_names("ab", {"ab", "ab", "abc"}, 3), (std::vector<std::string>{"ab", "abc"}));
}

TEST(Strings, QuotedList) {
  EXPECT_EQ(quoted_list({}), "");
  EXPECT_EQ(quoted_list({"a"}), "'a'");
  EXPECT_EQ(quoted_list({"a", "b c", "d"}), "'a', 'b c', 'd'");
}

}  // namespace
}  // namespace ds
