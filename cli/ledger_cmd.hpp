#pragma once
// `attrace ledger ...`: commit attribution vectors to the embedded or EVM ledger, inspect them,
// prove, claim, dispute, resolve, deploy; `init` creates an embedded ledger database.
#include <attrace/engine/registry.hpp>
#include <attrace/ledger/crypto.hpp>
#include <attrace/ledger/epoch.hpp>
#include <attrace/ledger/evm.hpp>
#include <attrace/ledger/ledger.hpp>

#include <CLI/CLI.hpp>

#include <memory>
#include <optional>
#include <string>

namespace attrace::connectors {
struct Dataset;
}

namespace attrace::cli {

/// Registers the `ledger` subcommand tree on `app`; returns its node.
CLI::App* add_ledger_commands(CLI::App& app);
/// Runs whichever ledger subcommand was parsed; returns the exit code.
int run_ledger_command(CLI::App* ledger_cmd);

/// Where a run's registry lives: `--registry-db PATH` (embedded ledger) or `--registry-evm FILE`
/// (an [evm] config as for `ledger --backend evm`); neither: no registry check.
struct RegistryOptions {
  std::string db;
  std::string evm_config;
};

/// Adds --registry-db / --registry-evm to a command (attribute, score, demo, verify).
void add_registry_options(CLI::App* cmd, RegistryOptions& o);

/// Checks the training dataset `train_file` (read with its inputs) against the registry: every tranche
/// registered, for the same account, with the same content root. InputError naming the tranche and
/// the first differing example (embedded registries keep the per-example digests; EVM ones only
/// the root) otherwise. nullopt when `o` names no registry.
std::optional<engine::RegistryBinding> check_registry_for_dataset(const RegistryOptions& o, const std::string& train_file);

/// Same for the training set of a feature store (its ids, tranche table and content digests).
std::optional<engine::RegistryBinding> check_registry_for_store(const RegistryOptions& o, const std::string& store);

/// Same for a dataset already in memory (inputs or digests); `what` names it in messages.
engine::RegistryBinding check_registry(const RegistryOptions& o, const connectors::Dataset& ds, const std::string& what);

/// Opens the registry's ledger read-only (embedded file or EVM node) for other commands.
std::unique_ptr<ledger::Ledger> open_registry_ledger(const RegistryOptions& o);

/// The [evm] table of an --evm-config file (docs/ledger.md): unknown keys refused, integers
/// range-checked; when `key_file` is given and empty, it receives `key_file` from the table,
/// resolved against the config's folder.
ledger::EvmOptions read_evm_config(const std::string& evm_config, std::string* key_file);

/// The signing key: from `key_file` when given, else $ATTRACE_PRIVATE_KEY, else none.
std::optional<ledger::PrivateKey> load_private_key(const std::string& key_file);

/// Prints a committed epoch's leaves and amounts (shared with `attrace demo`).
void print_commitment(const ledger::EpochCommitment& c, const ledger::CommitResult& r, const std::string& where);

}  // namespace attrace::cli
