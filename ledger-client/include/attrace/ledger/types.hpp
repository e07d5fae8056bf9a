#pragma once
// Value types of the ledger format (shared/specs/ledger.md): 32-byte hashes, 20-byte addresses,
// 256/512-bit unsigned integers, hex conversion.
#include <boost/multiprecision/cpp_int.hpp>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace attrace::ledger {

/// Unsigned 256-bit integer (uint256 on chain).
using U256 = boost::multiprecision::uint256_t;
/// Unsigned 512-bit integer, for T * s_i before division.
using U512 = boost::multiprecision::uint512_t;

/// A 32-byte value (keccak-256 hash, bytes32).
using Bytes32 = std::array<uint8_t, 32>;
/// A 20-byte EVM address.
using Address = std::array<uint8_t, 20>;
/// Raw bytes.
using Bytes = std::vector<uint8_t>;

/// Lowercase hex with 0x prefix.
std::string to_hex(const uint8_t* data, size_t n);
template <size_t N>
std::string to_hex(const std::array<uint8_t, N>& a) {
  return to_hex(a.data(), N);
}
inline std::string to_hex(const Bytes& b) { return to_hex(b.data(), b.size()); }

/// Parses hex (with or without 0x); InputError naming `what` on bad digits or length.
Bytes from_hex(std::string_view hex, const std::string& what);
/// Parses exactly 32 bytes of hex.
Bytes32 bytes32_from_hex(std::string_view hex, const std::string& what);
/// Parses an EVM address (0x + 40 hex digits, any case; the EIP-55 checksum is checked when the
/// string is mixed-case).
Address address_from_hex(std::string_view hex, const std::string& what);
/// EIP-55 mixed-case checksum form of an address.
std::string checksum_address(const Address& a);

/// Parses a non-negative decimal integer < 2^256; InputError naming `what` otherwise.
U256 u256_from_decimal(std::string_view s, const std::string& what);
/// Decimal string of a 256-bit value.
std::string to_decimal(const U256& v);
/// Big-endian 32-byte word of a value.
Bytes32 to_word(const U256& v);
/// Value of a big-endian 32-byte word.
U256 from_word(const uint8_t* word32);

}  // namespace attrace::ledger
