#pragma once
// The EVM backend: JSON-RPC over HTTP (libcurl), EIP-1559 and legacy EIP-155 transactions signed
// with secp256k1, nonce and receipt handling, and the AttributionLedger contract's ABI.
#include <attrace/ledger/crypto.hpp>
#include <attrace/ledger/ledger.hpp>

#include <nlohmann/json.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <string>

namespace attrace::ledger {

/// A transaction before signing.
struct TxRequest {
  bool legacy = false;     ///< EIP-155 legacy transaction instead of EIP-1559 (type 2)
  uint64_t chain_id = 0;
  uint64_t nonce = 0;
  U256 gas_price = 0;      ///< legacy only
  U256 max_priority_fee = 0, max_fee = 0;  ///< EIP-1559 only
  uint64_t gas = 0;
  std::optional<Address> to;  ///< empty: contract creation
  U256 value = 0;
  Bytes data;
};

/// RLP encoding of the signed transaction (0x02-prefixed for EIP-1559), ready for
/// eth_sendRawTransaction.
Bytes sign_transaction(const TxRequest& tx, const PrivateKey& key);

/// EIP-712 digest of an EpochCommitment receipt for the AttributionLedger domain.
Bytes32 receipt_digest(uint64_t chain_id, const Address& contract, uint64_t epoch, const Bytes32& root,
                       const Bytes32& manifest_hash, const U256& total_reward);

/// A JSON-RPC error reply or transport failure (names the URL and method). For reverts,
/// `revert_data` holds the hex-encoded revert payload when the node returned one. An environment
/// failure (the CLI exits 1), not bad input: an unreachable, slow or misbehaving node says nothing
/// about the user's files. Contract refusals are turned into InputError/LedgerRefusal where the
/// revert payload is recognized.
class RpcError : public RuntimeFailure {
 public:
  explicit RpcError(const std::string& msg, std::string revert_data = "")
      : RuntimeFailure(msg), revert_data_(std::move(revert_data)) {}
  const std::string& revert_data() const { return revert_data_; }

 private:
  std::string revert_data_;
};

// ---- Replies: pure parsing, no network (RpcClient and EvmLedger use these; fuzz/fuzz_rpc_reply
// feeds them arbitrary bytes). Every malformed reply is an RpcError naming what was being read.

/// The `result` of a JSON-RPC 2.0 reply body; RpcError "<context>: ..." if the body is not JSON, is
/// an error reply (its message and revert data kept) or has no result.
nlohmann::json parse_rpc_reply(const std::string& body, const std::string& context);
/// Member `key` of an object in a reply; RpcError naming `what` if `j` is no object or lacks it.
const nlohmann::json& reply_field(const nlohmann::json& j, const char* key, const std::string& what);
/// A hex quantity ("0x1a", 1 to 64 digits); RpcError naming `what` otherwise.
U256 parse_quantity(const nlohmann::json& j, const std::string& what);
/// A hex quantity that must fit in 64 bits (nonces, gas); RpcError naming `what` otherwise.
uint64_t parse_quantity_u64(const nlohmann::json& j, const std::string& what);
/// Hex data ("0x" + an even number of digits, e.g. eth_call's return data); RpcError naming `what`.
Bytes parse_data(const nlohmann::json& j, const std::string& what);
/// A 32-byte hash (a transaction hash); RpcError naming `what` otherwise.
Bytes32 parse_hash(const nlohmann::json& j, const std::string& what);

/// The fields of an eth_getTransactionReceipt result the client uses.
struct TxReceipt {
  U256 block_number = 0;                  ///< block the transaction was mined in
  bool succeeded = false;                 ///< status 0x1 (0x0: reverted)
  std::optional<Address> contract_address;  ///< set for contract creations
};
/// Parses a non-null receipt object; RpcError naming `what` on a missing or malformed field.
TxReceipt parse_receipt(const nlohmann::json& j, const std::string& what);

/// Decodes the return data of AttributionLedger.epochs(uint64) for `epoch`; RpcError naming `what`
/// on a short reply, an unknown state or a timestamp beyond int64.
EpochStatus decode_epoch_status(uint64_t epoch, const Bytes& data, const std::string& what);

/// Decodes the return data of AttributionLedger.registration(bytes32) / registrationAt(uint64)
/// (order 0: not registered); RpcError naming `what` on a malformed reply.
Registration decode_registration(const Bytes& data, const std::string& what);

/// Rethrows an RpcError of a contract call as the refusal its revert data names (LedgerRefusal,
/// or InputError for another custom error of the contract), or as RpcError prefixed with `what`.
[[noreturn]] void throw_revert(const std::string& what, const RpcError& e);

/// Minimal JSON-RPC 2.0 client over HTTP POST.
class RpcClient {
 public:
  RpcClient(std::string url, std::chrono::milliseconds timeout);
  /// Calls `method`; RpcError on transport failure, timeout or an error reply.
  nlohmann::json call(const std::string& method, nlohmann::json params);
  const std::string& url() const { return url_; }

 private:
  std::string url_;
  std::chrono::milliseconds timeout_;
  uint64_t next_id_ = 1;
};

/// Connection settings of the EVM backend.
struct EvmOptions {
  std::string rpc_url = "http://127.0.0.1:8545";
  uint64_t chain_id = 0;           ///< must equal the node's eth_chainId
  Address contract{};              ///< AttributionLedger address (not needed to deploy)
  unsigned confirmations = 1;      ///< blocks a receipt must be buried under
  std::chrono::milliseconds rpc_timeout{10000};
  std::chrono::milliseconds receipt_timeout{120000};
  bool legacy = false;             ///< send legacy EIP-155 transactions
};

/// The EVM ledger. `key` signs transactions; it may be absent for read-only use.
class EvmLedger final : public Ledger {
 public:
  EvmLedger(EvmOptions options, std::optional<PrivateKey> key);
  std::string kind() const override { return "evm"; }
  CommitResult commit(const EpochCommitment& c, const std::string& uri) override;
  EpochStatus status(uint64_t epoch) override;
  std::string manifest(uint64_t) override { return ""; }
  std::string dispute(uint64_t epoch, const Bytes32& reason_hash) override;
  std::string resolve(uint64_t epoch, bool upheld) override;
  std::string claim(const Leaf& leaf, const std::vector<Bytes32>& proof) override;
  bool claimed(const Leaf& leaf) override;
  std::string source() const override;
  int64_t current_time() override;
  std::vector<EpochStatus> epochs() override;
  U256 balance_of(const Address& account) override { return balance(account); }
  RegisterResult register_tranche(const TrancheRegistration& r) override;
  std::vector<Registration> registrations() override;
  std::vector<Bytes32> registered_digests(const std::string&) override { return {}; }
  /// The contract's own check (OpenZeppelin MerkleProof, eth_call of verifyExample) that an
  /// example digest is in a registered tranche's content root.
  bool verify_example(const Bytes32& tranche_id, const Bytes32& digest, const std::vector<Bytes32>& proof);

  /// Deploys AttributionLedger from a forge artifact (out/AttributionLedger.sol/...json) with
  /// the given arbiter and challenge period; returns the contract address.
  Address deploy(const std::string& artifact_path, const Address& arbiter, uint64_t challenge_period);
  /// The contract's recovery of an EIP-712 receipt signature (eth_call of receiptSigner).
  Address receipt_signer(uint64_t epoch, const Bytes32& root, const Bytes32& manifest_hash, const U256& total,
                         const Bytes& signature);
  /// Dry-runs claim() with eth_call: returns normally if the contract would pay this leaf now,
  /// throws the refusal (InvalidProof, NotFinal, ...) otherwise. Sends nothing, costs no gas.
  void check_claim(const Leaf& leaf, const std::vector<Bytes32>& proof);
  /// Native-token balance of an account (smallest unit).
  U256 balance(const Address& a);
  /// The signer's address.
  Address sender() const;
  RpcClient& rpc() { return rpc_; }

 private:
  std::string transact(const Bytes& data, const U256& value, const std::optional<Address>& to, nlohmann::json* receipt = nullptr);
  Bytes call(const Bytes& data);
  EvmOptions opts_;
  std::optional<PrivateKey> key_;
  RpcClient rpc_;
};

}  // namespace attrace::ledger
