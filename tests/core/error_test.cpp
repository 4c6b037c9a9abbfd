// Check macros throw the requested types with formatted messages; internal asserts say they are bugs.
#include <gtest/gtest.h>

#include "ds/core/error.h"

TEST(Error, CheckThrowsTypedFormattedMessage) {
  try {
    DS_CHECK_AS(ds::ConfigError, 1 + 1 == 3, "[config] expected {}, found {}", 3, 2);
    FAIL();
  } catch (const ds::ConfigError& e) {
    EXPECT_STREQ(e.what(), "[config] expected 3, found 2");
  }
  EXPECT_NO_THROW(DS_CHECK(true, "never"));
  EXPECT_THROW(DS_CHECK(false, "[x] plain"), ds::Error);
}

TEST(Error, AssertIsInternalAndNamesTheCondition) {
  try {
    int x = 1;
    DS_ASSERT(x == 2, "x was {}", x);
    FAIL();
  } catch (const ds::InternalError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("x == 2"), std::string::npos);
    EXPECT_NE(m.find("x was 1"), std::string::npos);
    EXPECT_NE(m.find("bug"), std::string::npos);
  }
}
