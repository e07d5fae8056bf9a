#pragma once
// keccak-256 (Crypto++) and secp256k1 signatures (libsecp256k1, always low-s).
#include <attrace/ledger/types.hpp>

#include <string_view>

namespace attrace::ledger {

/// keccak-256 (the Ethereum hash, not NIST SHA3-256) of bytes.
Bytes32 keccak256(const uint8_t* data, size_t n);
inline Bytes32 keccak256(const Bytes& b) { return keccak256(b.data(), b.size()); }
inline Bytes32 keccak256(std::string_view s) { return keccak256(reinterpret_cast<const uint8_t*>(s.data()), s.size()); }

/// A recoverable ECDSA signature: r, s (low-s) and the recovery id (0 or 1).
struct Signature {
  Bytes32 r{}, s{};
  int recid = 0;
  /// 65 bytes r || s || v with v = 27 + recid (what OpenZeppelin's ECDSA.recover takes).
  Bytes rsv() const;
};

/// A secp256k1 private key, kept in memory only; never printed or logged.
class PrivateKey {
 public:
  /// From 32 bytes of hex; InputError (without echoing the key) if it is not a valid key.
  static PrivateKey from_hex(std::string_view hex);
  /// Reads a key file (hex, surrounding whitespace ignored).
  static PrivateKey from_file(const std::string& path);
  /// From the environment variable `name`; InputError naming the variable if unset.
  static PrivateKey from_env(const char* name);
  ~PrivateKey();
  PrivateKey(const PrivateKey&) = default;
  PrivateKey& operator=(const PrivateKey&) = default;

  /// The account address of this key.
  Address address() const;
  /// Signs a 32-byte digest (RFC 6979 nonces, low-s).
  Signature sign(const Bytes32& digest) const;

 private:
  PrivateKey() = default;
  Bytes32 key_{};
};

/// Recovers the signer's address from a digest and signature; InputError if invalid.
Address recover_address(const Bytes32& digest, const Signature& sig);

}  // namespace attrace::ledger
