// Fuzzes the EVM client's reply parsing without a network: the input is the body of a JSON-RPC
// reply as a node would send it. parse_rpc_reply takes it apart; its result then goes through every
// reader the client applies to results (quantities, hex data, hashes, receipts, blocks, the
// epochs() return data), and an error reply through the revert decoding. Any exception but
// attrace's own errors is a finding, and accepted values must be exactly what the text says.
#include <attrace/error.hpp>
#include <attrace/ledger/evm.hpp>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <sstream>

namespace {

namespace al = attrace::ledger;

[[noreturn]] void fail(const std::string& why) {
  std::fprintf(stderr, "%s\n", why.c_str());
  std::abort();
}

std::string lower(std::string s) {
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

// A quantity must read back as the digits it was given (leading zeros aside).
void quantity(const nlohmann::json& r) {
  try {
    const al::U256 v = al::parse_quantity(r, "quantity");
    std::string digits = lower(r.get<std::string>().substr(2));
    digits.erase(0, std::min(digits.find_first_not_of('0'), digits.size() - 1));
    std::ostringstream o;
    o << std::hex << v;
    if (o.str() != digits) fail("parse_quantity(" + r.get<std::string>() + ") = 0x" + o.str());
    const uint64_t small = al::parse_quantity_u64(r, "nonce");
    if (al::U256(small) != v) fail("parse_quantity_u64 changed the value");
  } catch (const attrace::Error&) {
  }
}

// Hex data must read back as the same bytes; 32 of them are a hash, 224 an epochs() reply.
void data(const nlohmann::json& r) {
  al::Bytes b;
  try {
    b = al::parse_data(r, "eth_call result");
  } catch (const attrace::Error&) {
    return;
  }
  std::string text = lower(r.get<std::string>());
  if (text.rfind("0x", 0) != 0) text = "0x" + text;
  if (al::to_hex(b) != text) fail("parse_data(" + r.get<std::string>() + ") = " + al::to_hex(b));
  try {
    const al::Bytes32 h = al::parse_hash(r, "transaction hash");
    if (!std::equal(h.begin(), h.end(), b.begin(), b.end())) fail("parse_hash differs from parse_data");
  } catch (const attrace::Error&) {
  }
  try {
    const al::EpochStatus s = al::decode_epoch_status(1, b, "epochs(1)");
    if (s.committed_at < 0 || s.challenge_ends < 0) fail("decode_epoch_status returned a negative timestamp");
    if (s.exists != (s.state != "none")) fail("decode_epoch_status: exists and state disagree");
  } catch (const attrace::Error&) {
  }
}

void objects(const nlohmann::json& r) {
  try {
    const al::TxReceipt t = al::parse_receipt(r, "receipt");
    if (t.succeeded != (al::parse_quantity(r.at("status"), "status") == 1)) fail("parse_receipt: succeeded differs from status");
  } catch (const attrace::Error&) {
  }
  try {
    al::parse_quantity(al::reply_field(r, "baseFeePerGas", "eth_getBlockByNumber"), "baseFeePerGas");
  } catch (const attrace::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  nlohmann::json r;
  try {
    r = al::parse_rpc_reply(std::string(reinterpret_cast<const char*>(bytes), size), "RPC fuzz eth_call");
  } catch (const al::RpcError& e) {
    try {
      al::throw_revert("claim(epoch 1)", e);
    } catch (const attrace::Error&) {
      return 0;
    }
  } catch (const attrace::Error&) {
    fail("parse_rpc_reply threw an error that is not an RpcError");
  }
  quantity(r);
  data(r);
  objects(r);
  return 0;
}
