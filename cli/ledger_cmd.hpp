#pragma once
// `attrace ledger ...`: commit attribution vectors to the embedded or EVM ledger, inspect them,
// prove, claim, dispute, resolve, deploy; `init` creates an embedded ledger database.
#include <attrace/ledger/epoch.hpp>
#include <attrace/ledger/ledger.hpp>

#include <CLI/CLI.hpp>

#include <memory>
#include <string>

namespace attrace::cli {

/// Registers the `ledger` subcommand tree on `app`; returns its node.
CLI::App* add_ledger_commands(CLI::App& app);
/// Runs whichever ledger subcommand was parsed; returns the exit code.
int run_ledger_command(CLI::App* ledger_cmd);

/// Prints a committed epoch's leaves and amounts (shared with `attrace demo`).
void print_commitment(const ledger::EpochCommitment& c, const ledger::CommitResult& r, const std::string& where);

}  // namespace attrace::cli
