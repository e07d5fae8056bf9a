#pragma once
// InputError message checks shared by connectors_test, text_test and recorder_test (needs attrace::core).
#include <attrace/error.hpp>

#include <gtest/gtest.h>

#include <initializer_list>
#include <string>

namespace attrace::test {
/// Expects `fn` to throw InputError whose message contains every one of `parts`.
template <class F>
void expect_input_error(F fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "no exception thrown";
  } catch (const attrace::InputError& e) {
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << "message: " << e.what() << "\nmissing: " << p;
  }
}

}  // namespace attrace::test
