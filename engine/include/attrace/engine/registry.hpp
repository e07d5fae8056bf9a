#pragma once
// What a run knows about the registry it was checked against: filled by the CLI after it compared
// each dataset tranche's content root with the registered one; the engine only reads it (the
// registration order drives the first_registered duplicate-credit policy, and the whole binding is
// written into manifest.json so a committed epoch names the registered data it paid).
#include <cstdint>
#include <string>
#include <vector>

namespace attrace::engine {

/// One dataset tranche as the registry knows it (filled by the CLI after it checked content roots).
struct RegisteredTranche {
  std::string id, account, license;
  std::string content_root;   ///< 0x-prefixed hex keccak Merkle root over the tranche's example digests
  uint64_t order = 0;         ///< registration sequence number (1 = first ever registered)
};

/// The registry a run was checked against: one entry per dataset tranche, in dataset tranche order.
struct RegistryBinding {
  std::string source;         ///< e.g. "embedded:/abs/path/ledger.db" or "evm:<chainId>:<contract>"
  std::vector<RegisteredTranche> tranches;
};

}  // namespace attrace::engine
