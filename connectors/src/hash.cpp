#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/fs.hpp>
#include <attrace/connectors/hash.hpp>
#include <attrace/error.hpp>

#include <openssl/evp.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <vector>

namespace attrace::connectors {
namespace {

struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

std::string to_hex(const unsigned char* d, unsigned n) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  s.reserve(2 * n);
  for (unsigned i = 0; i < n; ++i) {
    s.push_back(digits[d[i] >> 4]);
    s.push_back(digits[d[i] & 15]);
  }
  return s;
}

class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) {
    ATTRACE_CHECK(ctx_ && EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) == 1,
                  RuntimeFailure, "SHA-256 initialisation failed");
  }
  void update(const void* p, size_t n) {
    ATTRACE_CHECK(EVP_DigestUpdate(ctx_.get(), p, n) == 1, RuntimeFailure, "SHA-256 update failed");
  }
  void digest(unsigned char* out32) {
    unsigned n = 0;
    ATTRACE_CHECK(EVP_DigestFinal_ex(ctx_.get(), out32, &n) == 1 && n == 32, RuntimeFailure, "SHA-256 final failed");
  }
  std::string hex() {
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    ATTRACE_CHECK(EVP_DigestFinal_ex(ctx_.get(), d, &n) == 1, RuntimeFailure, "SHA-256 final failed");
    return to_hex(d, n);
  }

 private:
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx_;
};

}  // namespace

std::string sha256_file(const std::string& path) {
  require_regular_file(path);
  std::ifstream in(path, std::ios::binary);
  ATTRACE_CHECK(in.good(), InputError, path + ": cannot open file (missing or unreadable)");
  Sha256 h;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (in.gcount() > 0) h.update(buf.data(), static_cast<size_t>(in.gcount()));
  }
  ATTRACE_CHECK(in.eof(), InputError, path + ": read error");
  return h.hex();
}

std::string sha256_hex(std::string_view bytes) {
  Sha256 h;
  h.update(bytes.data(), bytes.size());
  return h.hex();
}

namespace {
void put_le(std::vector<uint8_t>& b, uint64_t v, int bytes) {
  for (int k = 0; k < bytes; ++k) b.push_back(static_cast<uint8_t>(v >> (8 * k)));
}

// Token examples: a tag (so no token example shares the bytes of a float one), the length, every
// id of the row (padding included: it is what the model is given), then the target, all
// little-endian (docs/formats.md#example-digests).
void token_example_digest(const Dataset& ds, int64_t i, uint8_t* out32) {
  static constexpr char kTag[] = "attrace.token-example/1";
  const int64_t t_len = ds.example_width(), tw = ds.target_width();
  std::vector<uint8_t> b(kTag, kTag + sizeof kTag - 1);
  put_le(b, static_cast<uint32_t>(ds.lengths.empty() ? t_len : ds.lengths[static_cast<size_t>(i)]), 4);
  for (int64_t t = 0; t < t_len; ++t) put_le(b, static_cast<uint32_t>(ds.int_inputs[static_cast<size_t>(i * t_len + t)]), 4);
  if (ds.target_kind == TargetKind::tokens) {
    for (int64_t t = 0; t < t_len; ++t)
      put_le(b, static_cast<uint32_t>(ds.token_targets[static_cast<size_t>(i * t_len + t)]), 4);
  } else if (ds.target_kind == TargetKind::class_index) {
    put_le(b, static_cast<uint64_t>(ds.class_targets[static_cast<size_t>(i)]), 8);
  } else {
    for (int64_t k = 0; k < tw; ++k) {
      uint32_t bits = 0;
      std::memcpy(&bits, &ds.regression_targets[static_cast<size_t>(i * tw + k)], 4);
      put_le(b, bits, 4);
    }
  }
  Sha256 h;
  h.update(b.data(), b.size());
  h.digest(out32);
}
}  // namespace

std::vector<uint8_t> example_digests(const Dataset& ds) {
  const int64_t n = ds.size(), w = ds.example_width(), tw = ds.target_width();
  std::vector<uint8_t> out(static_cast<size_t>(n) * 32);
  for (int64_t i = 0; i < n; ++i) {
    if (ds.input_kind == InputKind::integers) {
      token_example_digest(ds, i, out.data() + static_cast<size_t>(i) * 32);
      continue;
    }
    // Float examples: these bytes are in existing stores and registries; never change them.
    Sha256 h;
    h.update(ds.inputs.data() + i * w, static_cast<size_t>(w) * sizeof(float));
    if (ds.target_kind == TargetKind::class_index)
      h.update(&ds.class_targets[static_cast<size_t>(i)], sizeof(int64_t));
    else
      h.update(ds.regression_targets.data() + i * tw, static_cast<size_t>(tw) * sizeof(float));
    h.digest(out.data() + static_cast<size_t>(i) * 32);
  }
  return out;
}

}  // namespace attrace::connectors
