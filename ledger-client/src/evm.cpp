#include <attrace/error.hpp>
#include <attrace/ledger/evm.hpp>
#include <attrace/ledger/merkle.hpp>

#include <curl/curl.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <thread>

namespace attrace::ledger {
namespace {

// ---- RLP ----
Bytes be_minimal(const U256& v) {
  Bytes out;
  U256 x = v;
  while (x > 0) {
    out.insert(out.begin(), static_cast<uint8_t>(x & 0xff));
    x >>= 8;
  }
  return out;
}

Bytes rlp_length_prefix(size_t len, uint8_t short_base, uint8_t long_base) {
  if (len <= 55) return {static_cast<uint8_t>(short_base + len)};
  const Bytes l = be_minimal(U256(len));
  Bytes out{static_cast<uint8_t>(long_base + l.size())};
  out.insert(out.end(), l.begin(), l.end());
  return out;
}

Bytes rlp_bytes(const Bytes& b) {
  if (b.size() == 1 && b[0] < 0x80) return b;
  Bytes out = rlp_length_prefix(b.size(), 0x80, 0xb7);
  out.insert(out.end(), b.begin(), b.end());
  return out;
}
Bytes rlp_uint(const U256& v) { return rlp_bytes(be_minimal(v)); }

Bytes rlp_list(const std::vector<Bytes>& items) {
  Bytes payload;
  for (const auto& i : items) payload.insert(payload.end(), i.begin(), i.end());
  Bytes out = rlp_length_prefix(payload.size(), 0xc0, 0xf7);
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

Bytes rlp_to(const std::optional<Address>& to) { return to ? rlp_bytes(Bytes(to->begin(), to->end())) : rlp_bytes({}); }

// ---- ABI ----
Bytes selector(const std::string& signature) {
  const Bytes32 h = keccak256(signature);
  return Bytes(h.begin(), h.begin() + 4);
}
void put_word(Bytes& out, const Bytes32& w) { out.insert(out.end(), w.begin(), w.end()); }
void put_uint(Bytes& out, const U256& v) { put_word(out, to_word(v)); }
void put_address(Bytes& out, const Address& a) {
  Bytes32 w{};
  std::copy(a.begin(), a.end(), w.begin() + 12);
  put_word(out, w);
}
void put_bytes_tail(Bytes& out, const Bytes& b) {
  put_uint(out, b.size());
  out.insert(out.end(), b.begin(), b.end());
  out.resize(out.size() + (32 - b.size() % 32) % 32, 0);
}

// Custom errors of AttributionLedger and the refusal each stands for.
struct ErrorInfo {
  std::string name;
  std::optional<Refusal> refusal;
};
const std::map<std::string, ErrorInfo>& known_errors() {
  static const std::map<std::string, ErrorInfo> m = [] {
    std::map<std::string, ErrorInfo> r;
    auto add = [&](const std::string& sig, std::optional<Refusal> ref) {
      r[to_hex(selector(sig))] = {sig.substr(0, sig.find('(')), ref};
    };
    add("Unauthorized()", Refusal::unauthorized);
    add("EpochExists(uint64)", Refusal::epoch_exists);
    add("UnknownEpoch(uint64)", Refusal::unknown_epoch);
    add("WrongValue(uint256,uint256)", std::nullopt);
    add("NotFinal(uint64,uint64)", Refusal::not_final);
    add("ChallengeClosed(uint64)", Refusal::window_closed);
    add("Disputed(uint64)", Refusal::disputed);
    add("NotDisputed(uint64)", Refusal::not_disputed);
    add("Cancelled(uint64)", Refusal::cancelled);
    add("AlreadyClaimed(uint64,bytes32)", Refusal::already_claimed);
    add("InvalidProof()", Refusal::invalid_proof);
    add("ExceedsTotal(uint64)", Refusal::over_budget);
    add("TransferFailed()", std::nullopt);
    add("TrancheExists(bytes32)", Refusal::tranche_exists);
    add("UnknownTranche(bytes32)", std::nullopt);
    add("EmptyTranche()", std::nullopt);
    return r;
  }();
  return m;
}

std::string hex_quantity(const U256& v) {
  if (v == 0) return "0x0";
  std::ostringstream o;
  o << std::hex << v;
  return "0x" + o.str();
}

size_t curl_write(char* p, size_t size, size_t n, void* user) {
  static_cast<std::string*>(user)->append(p, size * n);
  return size * n;
}

struct CurlGlobal {
  CurlGlobal() { curl_global_init(CURL_GLOBAL_DEFAULT); }
};

// A reply string quoted in a message: bounded, so a hostile node cannot flood the terminal.
std::string quoted(const std::string& s) { return "'" + (s.size() <= 80 ? s : s.substr(0, 80) + "...") + "'"; }

}  // namespace

[[noreturn]] void throw_revert(const std::string& what, const RpcError& e) {
  const std::string& data = e.revert_data();
  if (data.size() >= 10) {
    const auto it = known_errors().find(data.substr(0, 10));
    if (it != known_errors().end()) {
      if (it->second.refusal) throw LedgerRefusal(*it->second.refusal, what + " (contract reverted)");
      throw InputError(what + ": contract reverted with " + it->second.name);
    }
    // The contract refused the call with an error this client does not know: still a refusal of
    // the request, not a failure of the node.
    throw InputError(what + ": contract reverted with unknown error " + data.substr(0, 10) + " (" + e.what() + ")");
  }
  throw RpcError(what + ": " + e.what(), data);
}

nlohmann::json parse_rpc_reply(const std::string& body, const std::string& context) {
  // No reply the client reads nests beyond 4 levels; copying a value recurses once per level, so a
  // node answering with 300000 '[' would overflow the stack.
  constexpr int kMaxDepth = 64;
  const auto limit_depth = [&](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
    ATTRACE_CHECK(depth <= kMaxDepth, RpcError, context + ": reply nested deeper than " + std::to_string(kMaxDepth) + " levels");
    return true;
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(body, limit_depth);
  } catch (const nlohmann::json::exception&) {
    throw RpcError(context + ": reply is not JSON");
  }
  if (j.contains("error") && !j["error"].is_null()) {
    // The node's own words when it gives them as a string; any other shape is still an error reply.
    const auto& e = j["error"];
    std::string message = "error", data;
    if (e.is_string()) message = e.get<std::string>();
    if (e.is_object() && e.contains("message") && e["message"].is_string()) message = e["message"].get<std::string>();
    if (e.is_object() && e.contains("data") && e["data"].is_string()) data = e["data"].get<std::string>();
    throw RpcError(context + ": " + message, data);
  }
  ATTRACE_CHECK(j.contains("result"), RpcError, context + ": reply has no result");
  return j["result"];
}

const nlohmann::json& reply_field(const nlohmann::json& j, const char* key, const std::string& what) {
  ATTRACE_CHECK(j.is_object(), RpcError, what + ": expected an object, got " + j.type_name());
  ATTRACE_CHECK(j.contains(key), RpcError, what + ": no field '" + key + "'");
  return j.at(key);
}

U256 parse_quantity(const nlohmann::json& j, const std::string& what) {
  ATTRACE_CHECK(j.is_string(), RpcError, what + ": expected a hex quantity");
  const std::string s = j.get<std::string>();
  ATTRACE_CHECK(s.size() > 2 && s.rfind("0x", 0) == 0 && s.size() <= 66, RpcError, what + ": bad quantity " + quoted(s));
  // Checked here: boost's parser would throw its own exception type on a non-digit.
  ATTRACE_CHECK(s.find_first_not_of("0123456789abcdefABCDEF", 2) == std::string::npos, RpcError,
                what + ": bad quantity " + quoted(s));
  return U256(s);
}

uint64_t parse_quantity_u64(const nlohmann::json& j, const std::string& what) {
  const U256 v = parse_quantity(j, what);
  ATTRACE_CHECK(v <= U256(std::numeric_limits<uint64_t>::max()), RpcError, what + ": " + to_decimal(v) + " exceeds 2^64 - 1");
  return static_cast<uint64_t>(v);
}

Bytes parse_data(const nlohmann::json& j, const std::string& what) {
  ATTRACE_CHECK(j.is_string(), RpcError, what + ": expected hex data, got " + j.type_name());
  try {
    return from_hex(j.get<std::string>(), what);
  } catch (const InputError& e) {
    throw RpcError(e.what());  // the node's reply is malformed, not the user's input
  }
}

Bytes32 parse_hash(const nlohmann::json& j, const std::string& what) {
  const Bytes b = parse_data(j, what);
  ATTRACE_CHECK(b.size() == 32, RpcError, what + ": expected 32 bytes, got " + std::to_string(b.size()));
  Bytes32 h;
  std::copy(b.begin(), b.end(), h.begin());
  return h;
}

TxReceipt parse_receipt(const nlohmann::json& j, const std::string& what) {
  TxReceipt r;
  r.block_number = parse_quantity(reply_field(j, "blockNumber", what), what + " blockNumber");
  const U256 status = parse_quantity(reply_field(j, "status", what), what + " status");
  ATTRACE_CHECK(status <= 1, RpcError, what + ": status " + to_decimal(status) + " is neither 0x0 nor 0x1");
  r.succeeded = status == 1;
  if (j.contains("contractAddress") && !j["contractAddress"].is_null()) {
    const auto& a = j["contractAddress"];
    ATTRACE_CHECK(a.is_string(), RpcError, what + ": contractAddress must be a string");
    try {
      r.contract_address = address_from_hex(a.get<std::string>(), what + " contractAddress");
    } catch (const InputError& e) {
      throw RpcError(e.what());
    }
  }
  return r;
}

EpochStatus decode_epoch_status(uint64_t epoch, const Bytes& r, const std::string& what) {
  ATTRACE_CHECK(r.size() >= 7 * 32, RpcError, what + ": short reply (" + std::to_string(r.size()) + " bytes, expected 224)");
  EpochStatus s;
  s.epoch = epoch;
  static const char* states[] = {"none", "committed", "disputed", "cancelled"};
  const U256 state = from_word(r.data() + 6 * 32);
  ATTRACE_CHECK(state < 4, RpcError, what + ": unknown state " + to_decimal(state));
  s.exists = state != 0;
  s.state = states[static_cast<unsigned>(state)];
  std::copy(r.begin(), r.begin() + 32, s.root.begin());
  std::copy(r.begin() + 32, r.begin() + 64, s.manifest_hash.begin());
  s.total_reward = from_word(r.data() + 64);
  s.claimed = from_word(r.data() + 96);
  const U256 committed = from_word(r.data() + 128), ends = from_word(r.data() + 160);
  const U256 int64_max(std::numeric_limits<int64_t>::max());
  ATTRACE_CHECK(committed <= int64_max && ends <= int64_max, RpcError, what + ": a timestamp exceeds 2^63 - 1");
  s.committed_at = static_cast<int64_t>(committed);
  s.challenge_ends = static_cast<int64_t>(ends);
  if (r.size() >= 8 * 32) {  // contracts with revisions (an older deployment answers 7 words)
    const U256 revision = from_word(r.data() + 7 * 32);
    ATTRACE_CHECK(revision <= U256(0xffffffffu), RpcError, what + ": revision " + to_decimal(revision) + " exceeds uint32");
    s.revision = static_cast<uint32_t>(revision);
  }
  return s;
}

Bytes sign_transaction(const TxRequest& tx, const PrivateKey& key) {
  if (tx.legacy) {
    std::vector<Bytes> f = {rlp_uint(tx.nonce), rlp_uint(tx.gas_price), rlp_uint(tx.gas), rlp_to(tx.to), rlp_uint(tx.value),
                            rlp_bytes(tx.data)};
    auto unsigned_fields = f;
    unsigned_fields.push_back(rlp_uint(tx.chain_id));
    unsigned_fields.push_back(rlp_uint(0));
    unsigned_fields.push_back(rlp_uint(0));
    const Signature sig = key.sign(keccak256(rlp_list(unsigned_fields)));
    f.push_back(rlp_uint(U256(tx.chain_id) * 2 + 35 + sig.recid));
    f.push_back(rlp_uint(from_word(sig.r.data())));
    f.push_back(rlp_uint(from_word(sig.s.data())));
    return rlp_list(f);
  }
  std::vector<Bytes> f = {rlp_uint(tx.chain_id), rlp_uint(tx.nonce), rlp_uint(tx.max_priority_fee), rlp_uint(tx.max_fee),
                          rlp_uint(tx.gas),      rlp_to(tx.to),       rlp_uint(tx.value),            rlp_bytes(tx.data),
                          rlp_list({})};
  Bytes pre{0x02};
  const Bytes body = rlp_list(f);
  pre.insert(pre.end(), body.begin(), body.end());
  const Signature sig = key.sign(keccak256(pre));
  f.push_back(rlp_uint(sig.recid));
  f.push_back(rlp_uint(from_word(sig.r.data())));
  f.push_back(rlp_uint(from_word(sig.s.data())));
  Bytes out{0x02};
  const Bytes signed_body = rlp_list(f);
  out.insert(out.end(), signed_body.begin(), signed_body.end());
  return out;
}

Bytes32 receipt_digest(uint64_t chain_id, const Address& contract, uint64_t epoch, const Bytes32& root,
                       const Bytes32& manifest_hash, const U256& total_reward) {
  Bytes domain;
  put_word(domain, keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"));
  put_word(domain, keccak256("AttributionLedger"));
  put_word(domain, keccak256("1"));
  put_uint(domain, chain_id);
  put_address(domain, contract);
  Bytes st;
  put_word(st, keccak256("EpochCommitment(uint64 epoch,bytes32 root,bytes32 manifestHash,uint256 totalReward)"));
  put_uint(st, epoch);
  put_word(st, root);
  put_word(st, manifest_hash);
  put_uint(st, total_reward);
  Bytes msg{0x19, 0x01};
  put_word(msg, keccak256(domain));
  put_word(msg, keccak256(st));
  return keccak256(msg);
}

RpcClient::RpcClient(std::string url, std::chrono::milliseconds timeout) : url_(std::move(url)), timeout_(timeout) {
  static CurlGlobal init;
}

nlohmann::json RpcClient::call(const std::string& method, nlohmann::json params) {
  const std::string body = nlohmann::json{{"jsonrpc", "2.0"}, {"id", next_id_++}, {"method", method}, {"params", std::move(params)}}.dump();
  std::unique_ptr<CURL, void (*)(CURL*)> h(curl_easy_init(), curl_easy_cleanup);
  ATTRACE_CHECK(h, RuntimeFailure, "libcurl initialisation failed");
  std::string reply;
  curl_slist* headers = curl_slist_append(nullptr, "Content-Type: application/json");
  curl_easy_setopt(h.get(), CURLOPT_URL, url_.c_str());
  curl_easy_setopt(h.get(), CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(h.get(), CURLOPT_POSTFIELDS, body.c_str());
  curl_easy_setopt(h.get(), CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
  curl_easy_setopt(h.get(), CURLOPT_WRITEFUNCTION, curl_write);
  curl_easy_setopt(h.get(), CURLOPT_WRITEDATA, &reply);
  curl_easy_setopt(h.get(), CURLOPT_TIMEOUT_MS, static_cast<long>(timeout_.count()));
  curl_easy_setopt(h.get(), CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(timeout_.count()));
  curl_easy_setopt(h.get(), CURLOPT_NOSIGNAL, 1L);
  const CURLcode rc = curl_easy_perform(h.get());
  curl_slist_free_all(headers);
  ATTRACE_CHECK(rc == CURLE_OK, RpcError, "RPC " + url_ + " " + method + ": " + curl_easy_strerror(rc));
  long status = 0;
  curl_easy_getinfo(h.get(), CURLINFO_RESPONSE_CODE, &status);
  ATTRACE_CHECK(status == 200, RpcError, "RPC " + url_ + " " + method + ": HTTP status " + std::to_string(status));
  return parse_rpc_reply(reply, "RPC " + url_ + " " + method);
}

EvmLedger::EvmLedger(EvmOptions options, std::optional<PrivateKey> key)
    : opts_(std::move(options)), key_(std::move(key)), rpc_(opts_.rpc_url, opts_.rpc_timeout) {
  const U256 node_chain = parse_quantity(rpc_.call("eth_chainId", nlohmann::json::array()), "eth_chainId");
  ATTRACE_CHECK(node_chain == opts_.chain_id, InputError,
                "wrong chain id: node " + opts_.rpc_url + " reports " + to_decimal(node_chain) + ", configuration says " +
                    std::to_string(opts_.chain_id));
}

Address EvmLedger::sender() const {
  ATTRACE_CHECK(key_.has_value(), InputError, "no private key configured (set ATTRACE_PRIVATE_KEY or a key file)");
  return key_->address();
}

U256 EvmLedger::balance(const Address& a) {
  return parse_quantity(rpc_.call("eth_getBalance", {to_hex(a), "latest"}), "eth_getBalance");
}

Bytes EvmLedger::call(const Bytes& data) {
  return parse_data(rpc_.call("eth_call", {{{"to", to_hex(opts_.contract)}, {"data", to_hex(data)}}, "latest"}),
                    "eth_call result from " + opts_.rpc_url);
}

std::string EvmLedger::transact(const Bytes& data, const U256& value, const std::optional<Address>& to, nlohmann::json* receipt_out) {
  const Address from = sender();
  nlohmann::json call_obj = {{"from", to_hex(from)}, {"value", hex_quantity(value)}, {"data", to_hex(data)}};
  if (to) call_obj["to"] = to_hex(*to);
  const auto insufficient = [&](const U256& have, const U256& need) {
    return "insufficient funds: " + checksum_address(from) + " holds " + to_decimal(have) +
           " (smallest native units) but the transaction needs up to " + to_decimal(need);
  };
  const U256 have = balance(from);
  ATTRACE_CHECK(have >= value, InputError, insufficient(have, value));
  // Dry run first: a refused operation is reported without sending anything.
  rpc_.call("eth_call", {call_obj, "latest"});
  const U256 estimate = parse_quantity(rpc_.call("eth_estimateGas", {call_obj}), "eth_estimateGas");
  TxRequest tx;
  tx.legacy = opts_.legacy;
  tx.chain_id = opts_.chain_id;
  tx.nonce = parse_quantity_u64(rpc_.call("eth_getTransactionCount", {to_hex(from), "pending"}), "nonce");
  const U256 gas = estimate + estimate / 5 + 10000;
  ATTRACE_CHECK(estimate <= U256(std::numeric_limits<uint64_t>::max()) && gas <= U256(std::numeric_limits<uint64_t>::max()),
                RpcError, "eth_estimateGas: " + to_decimal(estimate) + " gas does not fit a transaction");
  tx.gas = static_cast<uint64_t>(gas);
  tx.to = to;
  tx.value = value;
  tx.data = data;
  U256 fee_cap;
  if (tx.legacy) {
    tx.gas_price = parse_quantity(rpc_.call("eth_gasPrice", nlohmann::json::array()), "eth_gasPrice");
    fee_cap = tx.gas_price;
  } else {
    const auto block = rpc_.call("eth_getBlockByNumber", {"latest", false});
    const U256 base = parse_quantity(reply_field(block, "baseFeePerGas", "eth_getBlockByNumber"), "baseFeePerGas");
    U256 tip = 1'000'000'000;
    try {
      tip = parse_quantity(rpc_.call("eth_maxPriorityFeePerGas", nlohmann::json::array()), "eth_maxPriorityFeePerGas");
    } catch (const RpcError&) {
      // Nodes without the method: 1 gwei-equivalent tip.
    }
    tx.max_priority_fee = tip;
    tx.max_fee = base * 2 + tip;
    fee_cap = tx.max_fee;
  }
  const U256 needed = value + fee_cap * tx.gas;
  ATTRACE_CHECK(have >= needed, InputError, insufficient(have, needed));
  const std::string hash =
      to_hex(parse_hash(rpc_.call("eth_sendRawTransaction", {to_hex(sign_transaction(tx, *key_))}), "eth_sendRawTransaction"));
  const auto deadline = std::chrono::steady_clock::now() + opts_.receipt_timeout;
  while (true) {
    const auto receipt = rpc_.call("eth_getTransactionReceipt", {hash});
    if (!receipt.is_null()) {
      const TxReceipt parsed = parse_receipt(receipt, "receipt of " + hash);
      const U256 mined = parsed.block_number;
      const U256 head = parse_quantity(rpc_.call("eth_blockNumber", nlohmann::json::array()), "eth_blockNumber");
      if (head + 1 >= mined + opts_.confirmations) {
        ATTRACE_CHECK(parsed.succeeded, InputError, "transaction " + hash + " reverted");
        if (receipt_out) *receipt_out = receipt;
        return hash;
      }
    }
    ATTRACE_CHECK(std::chrono::steady_clock::now() < deadline, RuntimeFailure,
                  "transaction " + hash + " not confirmed (" + std::to_string(opts_.confirmations) +
                      " blocks) within the receipt timeout; re-running is safe: state is read before sending");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

EpochStatus EvmLedger::status(uint64_t epoch) {
  Bytes d = selector("epochs(uint64)");
  put_uint(d, epoch);
  return decode_epoch_status(epoch, call(d), "epochs(" + std::to_string(epoch) + ") from " + opts_.rpc_url);
}

CommitResult EvmLedger::commit(const EpochCommitment& c, const std::string& uri) {
  CommitResult r;
  // Idempotence: the chain is read first, so a re-run after a crash never commits twice.
  const EpochStatus live = status(c.epoch);
  if (live.exists && live.state != "cancelled") {
    if (live.root == c.root && live.manifest_hash == c.manifest_hash && live.total_reward == c.pool) {
      r.already_committed = true;
      r.status = live;
      return r;
    }
    throw LedgerRefusal(Refusal::epoch_exists, "epoch " + std::to_string(c.epoch) + " already has root " + to_hex(live.root));
  }
  Bytes d = selector("commitEpoch(uint64,bytes32,bytes32,uint256,string)");
  put_uint(d, c.epoch);
  put_word(d, c.root);
  put_word(d, c.manifest_hash);
  put_uint(d, c.pool);
  put_uint(d, 5 * 32);
  put_bytes_tail(d, Bytes(uri.begin(), uri.end()));
  try {
    r.transaction = transact(d, c.pool, opts_.contract);
  } catch (const RpcError& e) {
    throw_revert("commitEpoch(" + std::to_string(c.epoch) + ")", e);
  }
  r.status = status(c.epoch);
  r.status.uri = uri;
  return r;
}

std::string EvmLedger::dispute(uint64_t epoch, const Bytes32& reason) {
  Bytes d = selector("dispute(uint64,bytes32)");
  put_uint(d, epoch);
  put_word(d, reason);
  try {
    return transact(d, 0, opts_.contract);
  } catch (const RpcError& e) {
    throw_revert("dispute(" + std::to_string(epoch) + ")", e);
  }
}

std::string EvmLedger::resolve(uint64_t epoch, bool upheld) {
  Bytes d = selector("resolve(uint64,bool)");
  put_uint(d, epoch);
  put_uint(d, upheld ? 1 : 0);
  try {
    return transact(d, 0, opts_.contract);
  } catch (const RpcError& e) {
    throw_revert("resolve(" + std::to_string(epoch) + ")", e);
  }
}

namespace {
Bytes claim_call(const Leaf& leaf, const std::vector<Bytes32>& proof) {
  Bytes d = selector("claim(uint64,bytes32,address,uint256,uint256,bytes32[])");
  put_uint(d, leaf.epoch);
  put_word(d, leaf.tranche_id);
  put_address(d, leaf.account);
  put_uint(d, leaf.score);
  put_uint(d, leaf.amount);
  put_uint(d, 6 * 32);
  put_uint(d, proof.size());
  for (const auto& p : proof) put_word(d, p);
  return d;
}
}  // namespace

void EvmLedger::check_claim(const Leaf& leaf, const std::vector<Bytes32>& proof) {
  try {
    call(claim_call(leaf, proof));
  } catch (const RpcError& e) {
    throw_revert("claim(epoch " + std::to_string(leaf.epoch) + ", account " + checksum_address(leaf.account) + ")", e);
  }
}

std::string EvmLedger::claim(const Leaf& leaf, const std::vector<Bytes32>& proof) {
  try {
    return transact(claim_call(leaf, proof), 0, opts_.contract);
  } catch (const RpcError& e) {
    throw_revert("claim(epoch " + std::to_string(leaf.epoch) + ", account " + checksum_address(leaf.account) + ")", e);
  }
}

bool EvmLedger::claimed(const Leaf& leaf) {
  Bytes d = selector("claimedLeaf(uint64,bytes32)");
  put_uint(d, leaf.epoch);
  put_word(d, leaf_hash(leaf));
  const Bytes r = call(d);
  ATTRACE_CHECK(r.size() >= 32, RpcError, "claimedLeaf(): short reply");
  return from_word(r.data()) != 0;
}

Address EvmLedger::deploy(const std::string& artifact_path, const Address& arbiter, uint64_t challenge_period) {
  std::ifstream in(artifact_path);
  ATTRACE_CHECK(in.good(), InputError, "contract artifact '" + artifact_path + "': cannot open (run forge build)");
  nlohmann::json art;
  try {
    art = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception&) {
    throw InputError("contract artifact '" + artifact_path + "': malformed JSON");
  }
  ATTRACE_CHECK(art.contains("bytecode") && art["bytecode"].contains("object") && art["bytecode"]["object"].is_string(),
                InputError, "contract artifact '" + artifact_path + "': no bytecode.object string");
  Bytes code = from_hex(art["bytecode"]["object"].get<std::string>(), artifact_path + ": bytecode");
  put_address(code, arbiter);
  put_uint(code, challenge_period);
  nlohmann::json receipt;
  try {
    transact(code, 0, std::nullopt, &receipt);
  } catch (const RpcError& e) {
    throw_revert("deploy", e);
  }
  const auto created = parse_receipt(receipt, "deploy receipt").contract_address;
  ATTRACE_CHECK(created.has_value(), RpcError, "deploy: the receipt from " + opts_.rpc_url + " names no contractAddress");
  const Address a = *created;
  opts_.contract = a;
  return a;
}

Address EvmLedger::receipt_signer(uint64_t epoch, const Bytes32& root, const Bytes32& manifest_hash, const U256& total,
                                  const Bytes& signature) {
  Bytes d = selector("receiptSigner(uint64,bytes32,bytes32,uint256,bytes)");
  put_uint(d, epoch);
  put_word(d, root);
  put_word(d, manifest_hash);
  put_uint(d, total);
  put_uint(d, 5 * 32);
  put_bytes_tail(d, signature);
  Bytes r;
  try {
    r = call(d);
  } catch (const RpcError& e) {
    throw_revert("receiptSigner", e);
  }
  ATTRACE_CHECK(r.size() >= 32, RpcError, "receiptSigner(): short reply");
  Address a;
  std::copy(r.begin() + 12, r.begin() + 32, a.begin());
  return a;
}

std::string EvmLedger::source() const { return "evm:" + std::to_string(opts_.chain_id) + ":" + checksum_address(opts_.contract); }

int64_t EvmLedger::current_time() {
  const auto block = rpc_.call("eth_getBlockByNumber", {"latest", false});
  const uint64_t t = parse_quantity_u64(reply_field(block, "timestamp", "eth_getBlockByNumber"), "block timestamp");
  ATTRACE_CHECK(t <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), RpcError, "block timestamp exceeds 2^63 - 1");
  return static_cast<int64_t>(t);
}

std::vector<EpochStatus> EvmLedger::epochs() {
  // Every epoch that ever had an EpochCommitted event (the contract keeps no list of epochs).
  const auto topic = to_hex(keccak256("EpochCommitted(uint64,bytes32,bytes32,uint256,uint64,string)"));
  const auto logs = rpc_.call("eth_getLogs", {{{"address", to_hex(opts_.contract)}, {"fromBlock", "0x0"}, {"toBlock", "latest"},
                                              {"topics", {topic}}}});
  ATTRACE_CHECK(logs.is_array(), RpcError, "eth_getLogs: expected an array");
  std::vector<uint64_t> numbers;
  for (const auto& log : logs) {
    const auto& topics = reply_field(log, "topics", "eth_getLogs log");
    ATTRACE_CHECK(topics.is_array() && topics.size() >= 2, RpcError, "eth_getLogs: EpochCommitted log without its epoch topic");
    const Bytes32 w = parse_hash(topics[1], "EpochCommitted epoch topic");
    const U256 e = from_word(w.data());
    ATTRACE_CHECK(e <= U256(std::numeric_limits<uint64_t>::max()), RpcError, "EpochCommitted epoch exceeds uint64");
    numbers.push_back(static_cast<uint64_t>(e));
  }
  std::sort(numbers.begin(), numbers.end());
  numbers.erase(std::unique(numbers.begin(), numbers.end()), numbers.end());
  std::vector<EpochStatus> out;
  for (const uint64_t e : numbers) out.push_back(status(e));
  return out;
}

namespace {

// A string at byte offset `at` of return data (length word, then bytes); RpcError when out of range.
std::string abi_string(const Bytes& r, size_t at, const std::string& what) {
  ATTRACE_CHECK(at + 32 <= r.size(), RpcError, what + ": string offset out of range");
  const U256 n = from_word(r.data() + at);
  ATTRACE_CHECK(n <= U256(r.size() - at - 32), RpcError, what + ": string length out of range");
  return std::string(r.begin() + static_cast<std::ptrdiff_t>(at + 32), r.begin() + static_cast<std::ptrdiff_t>(at + 32 + static_cast<size_t>(n)));
}

uint64_t abi_u64(const uint8_t* w, const std::string& what) {
  const U256 v = from_word(w);
  ATTRACE_CHECK(v <= U256(std::numeric_limits<uint64_t>::max()), RpcError, what + ": value exceeds uint64");
  return static_cast<uint64_t>(v);
}

}  // namespace

Registration decode_registration(const Bytes& r, const std::string& what) {
  // returns (Registration memory): offset word, then the tuple (contentRoot, account, exampleCount,
  // order, registeredAt, registrant, id offset, license offset) and the two strings.
  ATTRACE_CHECK(r.size() >= 9 * 32, RpcError, what + ": short reply (" + std::to_string(r.size()) + " bytes)");
  const U256 base_word = from_word(r.data());
  ATTRACE_CHECK(base_word <= U256(r.size() - 8 * 32), RpcError, what + ": tuple offset out of range");
  const size_t base = static_cast<size_t>(base_word);
  const uint8_t* t = r.data() + base;
  Registration g;
  std::copy(t, t + 32, g.content_root.begin());
  std::copy(t + 32 + 12, t + 64, g.account.begin());
  g.example_count = abi_u64(t + 64, what);
  g.order = abi_u64(t + 96, what);
  const uint64_t at = abi_u64(t + 128, what);
  ATTRACE_CHECK(at <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), RpcError, what + ": time exceeds 2^63 - 1");
  g.registered_at = static_cast<int64_t>(at);
  Address registrant;
  std::copy(t + 160 + 12, t + 192, registrant.begin());
  g.registrant = checksum_address(registrant);
  const uint64_t id_off = abi_u64(t + 192, what), lic_off = abi_u64(t + 224, what);
  ATTRACE_CHECK(id_off < r.size() && lic_off < r.size(), RpcError, what + ": string offset out of range");
  g.tranche = abi_string(r, base + static_cast<size_t>(id_off), what + " id");
  g.license = abi_string(r, base + static_cast<size_t>(lic_off), what + " license");
  g.tranche_id = keccak256(g.tranche);
  return g;
}

std::vector<Registration> EvmLedger::registrations() {
  const Bytes n_reply = call(selector("registrationCount()"));
  ATTRACE_CHECK(n_reply.size() >= 32, RpcError, "registrationCount(): short reply");
  const uint64_t n = abi_u64(n_reply.data(), "registrationCount()");
  std::vector<Registration> out;
  for (uint64_t k = 1; k <= n; ++k) {
    Bytes d = selector("registrationAt(uint64)");
    put_uint(d, k);
    out.push_back(decode_registration(call(d), "registrationAt(" + std::to_string(k) + ") from " + opts_.rpc_url));
  }
  return out;
}

RegisterResult EvmLedger::register_tranche(const TrancheRegistration& reg) {
  RegisterResult out;
  // Read first: a re-run after a crash (or of the same dataset) sends nothing.
  Bytes q = selector("registration(bytes32)");
  put_word(q, keccak256(reg.tranche));
  const Registration have = decode_registration(call(q), "registration(" + reg.tranche + ")");
  if (have.order != 0) {
    if (have.content_root == reg.content_root && have.account == reg.account) {
      out.already_registered = true;
      out.registration = have;
      return out;
    }
    throw LedgerRefusal(Refusal::tranche_exists, "tranche '" + reg.tranche + "' is registered (order " + std::to_string(have.order) +
                                                     ") with content root " + to_hex(have.content_root) + " for " +
                                                     checksum_address(have.account) +
                                                     "; a tranche id is registered once: changed content needs a new tranche id");
  }
  Bytes d = selector("registerTranche(string,address,string,bytes32,uint64)");
  const Bytes id(reg.tranche.begin(), reg.tranche.end()), license(reg.license.begin(), reg.license.end());
  put_uint(d, 5 * 32);
  put_address(d, reg.account);
  put_uint(d, 5 * 32 + 32 + (id.size() + 31) / 32 * 32);
  put_word(d, reg.content_root);
  put_uint(d, reg.example_count);
  put_bytes_tail(d, id);
  put_bytes_tail(d, license);
  try {
    transact(d, 0, opts_.contract);
  } catch (const RpcError& e) {
    throw_revert("registerTranche(" + reg.tranche + ")", e);
  }
  out.registration = decode_registration(call(q), "registration(" + reg.tranche + ")");
  return out;
}

bool EvmLedger::verify_example(const Bytes32& tranche_id, const Bytes32& digest, const std::vector<Bytes32>& proof) {
  Bytes d = selector("verifyExample(bytes32,bytes32,bytes32[])");
  put_word(d, tranche_id);
  put_word(d, digest);
  put_uint(d, 3 * 32);
  put_uint(d, proof.size());
  for (const auto& p : proof) put_word(d, p);
  Bytes r;
  try {
    r = call(d);
  } catch (const RpcError& e) {
    throw_revert("verifyExample", e);
  }
  ATTRACE_CHECK(r.size() >= 32, RpcError, "verifyExample(): short reply");
  return from_word(r.data()) != 0;
}

}  // namespace attrace::ledger
