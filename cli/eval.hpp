#pragma once
// `attrace eval noisy|lds`: measured attribution quality of every method (docs/eval.md).
#include <CLI/CLI.hpp>

namespace attrace::cli {

/// Registers the `eval` subcommand (with `noisy` and `lds`) on `app`; returns its node.
CLI::App* add_eval_command(CLI::App& app);
/// Runs the parsed `eval` command; returns the exit code. Errors are thrown.
int run_eval_command(bool quiet);

}  // namespace attrace::cli
