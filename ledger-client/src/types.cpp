#include <attrace/error.hpp>
#include <attrace/ledger/crypto.hpp>
#include <attrace/ledger/types.hpp>

#include <cctype>

namespace attrace::ledger {

std::string to_hex(const uint8_t* data, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string s = "0x";
  s.reserve(2 + 2 * n);
  for (size_t i = 0; i < n; ++i) {
    s.push_back(digits[data[i] >> 4]);
    s.push_back(digits[data[i] & 15]);
  }
  return s;
}

namespace {
int nibble(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
}  // namespace

Bytes from_hex(std::string_view hex, const std::string& what) {
  if (hex.size() >= 2 && hex[0] == '0' && (hex[1] == 'x' || hex[1] == 'X')) hex.remove_prefix(2);
  ATTRACE_CHECK(hex.size() % 2 == 0, InputError, what + ": odd number of hex digits");
  Bytes out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    const int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    ATTRACE_CHECK(hi >= 0 && lo >= 0, InputError, what + ": not hexadecimal");
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return out;
}

Bytes32 bytes32_from_hex(std::string_view hex, const std::string& what) {
  const Bytes b = from_hex(hex, what);
  ATTRACE_CHECK(b.size() == 32, InputError, what + ": expected 32 bytes, got " + std::to_string(b.size()));
  Bytes32 out;
  std::copy(b.begin(), b.end(), out.begin());
  return out;
}

std::string checksum_address(const Address& a) {
  std::string lower = to_hex(a).substr(2);
  const Bytes32 h = keccak256(lower);
  std::string out = "0x";
  for (size_t i = 0; i < lower.size(); ++i) {
    const int bit = (i % 2 == 0) ? h[i / 2] >> 4 : h[i / 2] & 15;
    out.push_back(bit >= 8 ? static_cast<char>(std::toupper(static_cast<unsigned char>(lower[i]))) : lower[i]);
  }
  return out;
}

Address address_from_hex(std::string_view hex, const std::string& what) {
  ATTRACE_CHECK(hex.size() == 42 && hex[0] == '0' && hex[1] == 'x', InputError,
                what + ": '" + std::string(hex) + "' is not an address (0x + 40 hex digits)");
  const Bytes b = from_hex(hex, what);
  Address a;
  std::copy(b.begin(), b.end(), a.begin());
  bool upper = false, lower = false;
  for (char c : hex.substr(2)) {
    upper |= std::isupper(static_cast<unsigned char>(c)) != 0;
    lower |= std::islower(static_cast<unsigned char>(c)) != 0;
  }
  if (upper && lower)
    ATTRACE_CHECK(checksum_address(a) == hex, InputError, what + ": '" + std::string(hex) + "' fails its EIP-55 checksum");
  return a;
}

U256 u256_from_decimal(std::string_view s, const std::string& what) {
  ATTRACE_CHECK(!s.empty() && s.size() <= 78, InputError, what + ": '" + std::string(s) + "' is not a uint256");
  boost::multiprecision::uint512_t v = 0;
  for (char c : s) {
    ATTRACE_CHECK(c >= '0' && c <= '9', InputError,
                  what + ": '" + std::string(s) + "' is not a non-negative decimal integer");
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  ATTRACE_CHECK(v <= boost::multiprecision::uint512_t((std::numeric_limits<U256>::max)()), InputError,
                what + ": '" + std::string(s) + "' exceeds 2^256 - 1");
  return static_cast<U256>(v);
}

std::string to_decimal(const U256& v) { return v.str(); }

Bytes32 to_word(const U256& v) {
  Bytes32 w{};
  U256 x = v;
  for (int i = 31; i >= 0; --i) {
    w[static_cast<size_t>(i)] = static_cast<uint8_t>(x & 0xff);
    x >>= 8;
  }
  return w;
}

U256 from_word(const uint8_t* word32) {
  U256 v = 0;
  for (int i = 0; i < 32; ++i) v = (v << 8) | word32[i];
  return v;
}

}  // namespace attrace::ledger
