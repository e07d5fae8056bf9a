#include <attrace/connectors/dataset.hpp>
#include <attrace/connectors/fs.hpp>
#include <attrace/connectors/hash.hpp>
#include <attrace/error.hpp>

#include <openssl/evp.h>

#include <cstdio>
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

std::vector<uint8_t> example_digests(const Dataset& ds) {
  const int64_t n = ds.size(), w = ds.example_width(), tw = ds.target_width();
  std::vector<uint8_t> out(static_cast<size_t>(n) * 32);
  for (int64_t i = 0; i < n; ++i) {
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
