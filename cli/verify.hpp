#pragma once
// `attrace verify EPOCH`: recomputes a committed epoch from the inputs its manifest names and
// compares shares, amounts, leaves, root and settings with the commitment (docs/verify.md).
#include <CLI/CLI.hpp>

namespace attrace::cli {

/// Exit code of a verification that found the commitment does not hold (docs/verify.md).
constexpr int kExitDisputed = 3;
/// Exit code when the verdict is "disputed" but filing the dispute (--file-dispute) failed.
constexpr int kExitDisputeNotFiled = 4;

/// Registers the `verify` subcommand on `app`; returns its node.
CLI::App* add_verify_command(CLI::App& app);
/// Runs the parsed `verify` command; returns the exit code (0 confirmed, 3 disputed, 4 disputed
/// but the dispute could not be filed). Input errors and environment failures are thrown.
int run_verify_command(bool quiet);

}  // namespace attrace::cli
