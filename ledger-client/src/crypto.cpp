#include <attrace/error.hpp>
#include <attrace/ledger/crypto.hpp>

#include <cryptopp/keccak.h>
#include <secp256k1.h>
#include <secp256k1_recovery.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

namespace attrace::ledger {

Bytes32 keccak256(const uint8_t* data, size_t n) {
  CryptoPP::Keccak_256 h;
  h.Update(data, n);
  Bytes32 out;
  h.Final(out.data());
  return out;
}

Bytes Signature::rsv() const {
  Bytes out(r.begin(), r.end());
  out.insert(out.end(), s.begin(), s.end());
  out.push_back(static_cast<uint8_t>(27 + recid));
  return out;
}

namespace {

struct ContextDeleter {
  void operator()(secp256k1_context* c) const { secp256k1_context_destroy(c); }
};

const secp256k1_context* context() {
  static const std::unique_ptr<secp256k1_context, ContextDeleter> ctx(
      secp256k1_context_create(SECP256K1_CONTEXT_SIGN | SECP256K1_CONTEXT_VERIFY));
  return ctx.get();
}

Address address_of(const secp256k1_pubkey& pub) {
  uint8_t ser[65];
  size_t len = sizeof ser;
  secp256k1_ec_pubkey_serialize(context(), ser, &len, &pub, SECP256K1_EC_UNCOMPRESSED);
  const Bytes32 h = keccak256(ser + 1, 64);
  Address a;
  std::copy(h.begin() + 12, h.end(), a.begin());
  return a;
}

}  // namespace

PrivateKey PrivateKey::from_hex(std::string_view hex) {
  std::string trimmed(hex);
  while (!trimmed.empty() && std::isspace(static_cast<unsigned char>(trimmed.back()))) trimmed.pop_back();
  size_t start = 0;
  while (start < trimmed.size() && std::isspace(static_cast<unsigned char>(trimmed[start]))) ++start;
  trimmed = trimmed.substr(start);
  Bytes b;
  try {
    b = attrace::ledger::from_hex(trimmed, "private key");
  } catch (const InputError&) {
    throw InputError("private key: not 32 bytes of hex");  // never echo key material
  }
  ATTRACE_CHECK(b.size() == 32, InputError, "private key: not 32 bytes of hex");
  PrivateKey k;
  std::copy(b.begin(), b.end(), k.key_.begin());
  std::fill(b.begin(), b.end(), 0);
  ATTRACE_CHECK(secp256k1_ec_seckey_verify(context(), k.key_.data()) == 1, InputError,
                "private key: not a valid secp256k1 key");
  return k;
}

PrivateKey PrivateKey::from_file(const std::string& path) {
  std::ifstream in(path);
  ATTRACE_CHECK(in.good(), InputError, "key file '" + path + "': cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return from_hex(ss.str());
  } catch (const InputError& e) {
    throw InputError("key file '" + path + "': " + e.what());
  }
}

PrivateKey PrivateKey::from_env(const char* name) {
  const char* v = std::getenv(name);
  ATTRACE_CHECK(v && *v, InputError, std::string("environment variable ") + name + " (private key) is not set");
  try {
    return from_hex(v);
  } catch (const InputError& e) {
    throw InputError(std::string("environment variable ") + name + ": " + e.what());
  }
}

PrivateKey::~PrivateKey() {
  volatile uint8_t* p = key_.data();
  for (size_t i = 0; i < key_.size(); ++i) p[i] = 0;
}

Address PrivateKey::address() const {
  secp256k1_pubkey pub;
  ATTRACE_CHECK(secp256k1_ec_pubkey_create(context(), &pub, key_.data()) == 1, RuntimeFailure, "public key derivation failed");
  return address_of(pub);
}

Signature PrivateKey::sign(const Bytes32& digest) const {
  secp256k1_ecdsa_recoverable_signature sig;
  ATTRACE_CHECK(secp256k1_ecdsa_sign_recoverable(context(), &sig, digest.data(), key_.data(), nullptr, nullptr) == 1,
                RuntimeFailure, "signing failed");
  uint8_t compact[64];
  Signature out;
  secp256k1_ecdsa_recoverable_signature_serialize_compact(context(), compact, &out.recid, &sig);
  std::memcpy(out.r.data(), compact, 32);
  std::memcpy(out.s.data(), compact + 32, 32);
  return out;
}

Address recover_address(const Bytes32& digest, const Signature& sig) {
  uint8_t compact[64];
  std::memcpy(compact, sig.r.data(), 32);
  std::memcpy(compact + 32, sig.s.data(), 32);
  secp256k1_ecdsa_recoverable_signature rs;
  ATTRACE_CHECK(sig.recid >= 0 && sig.recid <= 3 &&
                    secp256k1_ecdsa_recoverable_signature_parse_compact(context(), &rs, compact, sig.recid) == 1,
                InputError, "signature: malformed");
  secp256k1_pubkey pub;
  ATTRACE_CHECK(secp256k1_ecdsa_recover(context(), &pub, &rs, digest.data()) == 1, InputError, "signature: cannot recover a key");
  return address_of(pub);
}

}  // namespace attrace::ledger
