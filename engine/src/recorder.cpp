// The torch-free half of the recorder (docs/recorder.md): the projection of captured factors
// into feature rows (the featurizer's arithmetic, bit for bit, with each recorded step's matrices
// generated once), and the recording directory (recording.json, template.pt, segments of
// recorded steps written by a background thread and made durable at a step interval).
#include <attrace/connectors/fs.hpp>
#include <attrace/engine/gradients.hpp>
#include <attrace/engine/recorder.hpp>
#include <attrace/engine/report.hpp>
#include <attrace/error.hpp>
#include <attrace/kernels/philox.hpp>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <sys/file.h>
#include <sys/uio.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>
#include <climits>

namespace attrace::engine {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// Segments of format 2 (written) store a layer with one position per example as its two
// projected factors; format 1 (read only) stored every row in full.
constexpr char kSegmentMagic[8] = {'A', 'T', 'R', 'S', 'E', 'G', '2', '\0'};
constexpr char kSegmentMagic1[8] = {'A', 'T', 'R', 'S', 'E', 'G', '1', '\0'};
constexpr char kSegmentEnd[8] = {'A', 'T', 'R', 'E', 'N', 'D', '1', '\0'};
constexpr const char* kFormat = "attrace.recording/2";
constexpr const char* kFormat1 = "attrace.recording/1";
constexpr int64_t kHeaderBytes = 8 + 4 * 8;

std::string segment_name(size_t s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "segment_%06zu.bin", s);
  return buf;
}

std::string distribution_name(kernels::ProjectionKind k) {
  return k == kernels::ProjectionKind::gaussian ? "gaussian" : "rademacher";
}

kernels::ProjectionKind parse_distribution(const std::string& s, const std::string& where) {
  if (s == "rademacher") return kernels::ProjectionKind::rademacher;
  if (s == "gaussian") return kernels::ProjectionKind::gaussian;
  throw InputError(where + ": distribution '" + s + "' is not rademacher or gaussian");
}

// Each layer's projected sizes (k_in, k_out): the same at every recorded step.
using Sizes = std::vector<std::pair<int64_t, int64_t>>;

// Layer modes of a stored step: its rows, its two projected factors, or the captured tensors
// themselves (deferred projection).
constexpr int64_t kModeRows = 0, kModeFactors = 1, kModeRaw = 2;
// A raw block starts with positions, x_bias_column, height, width (int64) and the loss scale
// (float32 bits in an int64).
constexpr int64_t kRawHead = 5;

// Bytes of one recorded step in a segment of format 2: step, lr, batch, ids, one mode per layer,
// the layers' blocks (mode 1: the projected factors, B (k_in + k_out) floats; mode 0: rows,
// B k_in k_out floats; mode 2: its head and raw[l] floats of captured tensors), parameters.
int64_t step_bytes(int64_t batch, const Sizes& sizes, const std::vector<int64_t>& modes, int64_t params,
                   const std::vector<int64_t>& raw) {
  int64_t n = 24 + batch * 8 + static_cast<int64_t>(sizes.size()) * 8 + params * 4;
  for (size_t l = 0; l < sizes.size(); ++l) {
    if (modes[l] == kModeRaw)
      n += kRawHead * 8 + 4 * raw[l];
    else
      n += batch * 4 * (modes[l] == kModeFactors ? sizes[l].first + sizes[l].second : sizes[l].first * sizes[l].second);
  }
  return n;
}

nlohmann::json layer_json(const RecordedLayer& l) {
  nlohmann::json j = {{"name", l.name}, {"d_in", l.d_in}, {"d_out", l.d_out}, {"bias", l.bias}};
  if (l.conv) {
    const auto& g = l.geometry;
    j["conv2d"] = {{"c_in", g.c_in}, {"kernel", {g.kh, g.kw}}, {"stride", {g.sh, g.sw}}, {"padding", {g.ph, g.pw}},
                   {"dilation", {g.dh, g.dw}}};
  }
  return j;
}

RecordedLayer layer_from_json(const nlohmann::json& j) {
  RecordedLayer l{j.at("name").get<std::string>(), j.at("d_in").get<int64_t>(), j.at("d_out").get<int64_t>(),
                  j.at("bias").get<bool>()};
  if (j.contains("conv2d")) {
    const auto& c = j.at("conv2d");
    l.conv = true;
    auto& g = l.geometry;
    g.c_in = c.at("c_in").get<int64_t>();
    const auto pair = [&](const char* key, int64_t& a, int64_t& b) {
      const auto v = c.at(key).get<std::vector<int64_t>>();
      if (v.size() != 2) throw nlohmann::json::other_error::create(501, std::string(key) + " is not a pair", &c);
      a = v[0];
      b = v[1];
    };
    pair("kernel", g.kh, g.kw);
    pair("stride", g.sh, g.sw);
    pair("padding", g.ph, g.pw);
    pair("dilation", g.dh, g.dw);
  }
  return l;
}

// Everything in recording.json that must match on resume (settings that change no feature,
// flush_steps, flush_bytes, queue_steps and threads, are left out).
nlohmann::json recording_json(const RecorderSettings& s, const std::vector<RecordedLayer>& layers,
                              const std::vector<RecordedParameter>& params, int64_t width) {
  nlohmann::json jl = nlohmann::json::array(), jp = nlohmann::json::array();
  for (const auto& l : layers) jl.push_back(layer_json(l));
  for (const auto& p : params) jp.push_back({{"name", p.name}, {"shape", p.shape}});
  return {{"format", kFormat},
          {"semantics",
           "recorded step c = checkpoint c of the run: for each example of that step's batch, every Linear and Conv2d "
           "layer's Kronecker-projected per-example gradient (P_out (x) P_in, the featurizer's plan and streams for "
           "checkpoint c) times sqrt(lr_c), rounded to dtype; the finalized store holds zero rows for examples not in the "
           "batch, weight 1, so score = sum over recorded steps that saw i of lr_t <P g_t(i), P g_t(q)>"},
          {"layout", "segment_NNNNNN.bin: magic, first index, count, width, parameter count (int64); per step: step "
                     "(int64), lr (float64), batch (int64), ids (int64 x batch), one mode per layer (int64), then per layer "
                     "mode 1: P_in^T x (float32 x batch x k_in) and P_out^T delta (float32 x batch x k_out) of its one "
                     "position per example, the row being their outer product times float(sqrt(lr)), rounded to dtype; "
                     "mode 0: the rows (float32 x batch x k_in k_out); mode 2 (deferred projection): positions, "
                     "x_bias_column, height, width (int64), the loss scale (float32 in an int64), then the captured layer "
                     "inputs and output gradients (float32, as the recorder was given them; projected when read); then "
                     "parameters (float32); end magic; little-endian"},
          {"projection", s.projection == Projection::none
                             ? nlohmann::json{{"kind", "none"}, {"factored", to_string(s.factored)}}
                             : nlohmann::json{{"kind", "kronecker"},
                                              {"k", s.k},
                                              {"seed", std::to_string(s.seed)},
                                              {"distribution", distribution_name(s.distribution)}}},
          // Stored beside "projection" (not inside it), so that recordings made before this key
          // existed compare equal on resume: their matrices were the same.
          {"projection_matrices",
           s.projection == Projection::none
               ? "none: exact per-example gradients (weight lr), laid out as `attrace featurize` lays out exact features"
               : "per recorded step: checkpoint c uses streams 2 (4096 c + layer) and 2 (4096 c + layer) + 1, the matrices "
                 "`attrace featurize` uses for checkpoint c of the finalized run"},
          {"features", {{"dtype", connectors::to_string(s.dtype)}}},
          {"schedule", {{"every", s.every}, {"steps", s.steps}, {"window", s.window}}},
          {"layers", jl},
          {"parameters", jp},
          {"width", width},
          {"template", "template.pt"}};
}

struct Parsed {
  int version = 2;
  RecorderSettings settings;
  std::vector<RecordedLayer> layers;
  std::vector<RecordedParameter> params;
  int64_t width = 0;
};

Parsed parse_recording_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ATTRACE_CHECK(in.good(), InputError, path + ": cannot read (not a recording directory?)");
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    const auto j = nlohmann::json::parse(ss.str());
    const std::string format = j.at("format").get<std::string>();
    ATTRACE_CHECK(format == kFormat || format == kFormat1, InputError,
                  path + ": format '" + format + "' is not " + kFormat + " (nor " + kFormat1 + ")");
    Parsed p;
    p.version = format == kFormat ? 2 : 1;
    const auto& pj = j.at("projection");
    const std::string kind = pj.at("kind").get<std::string>();
    if (kind == "none") {
      p.settings.projection = Projection::none;
      const std::string f = pj.at("factored").get<std::string>();
      ATTRACE_CHECK(f == "auto" || f == "never" || f == "always", InputError, path + ": projection.factored '" + f + "'");
      p.settings.factored = f == "never" ? Factoring::never : f == "always" ? Factoring::always : Factoring::automatic;
    } else {
      ATTRACE_CHECK(kind == "kronecker", InputError, path + ": projection.kind '" + kind + "' is not kronecker or none");
      p.settings.k = pj.at("k").get<int64_t>();
      p.settings.seed = std::stoull(pj.at("seed").get<std::string>());
      p.settings.distribution = parse_distribution(pj.at("distribution").get<std::string>(), path);
    }
    p.settings.dtype = connectors::parse_feature_dtype(j.at("features").at("dtype").get<std::string>(), path);
    p.settings.every = j.at("schedule").at("every").get<int64_t>();
    p.settings.steps = j.at("schedule").at("steps").get<std::vector<int64_t>>();
    p.settings.window = j.at("schedule").value("window", int64_t{1});  // recordings before windows: 1
    ATTRACE_CHECK(p.settings.window >= 1, InputError, path + ": schedule.window must be >= 1");
    for (const auto& l : j.at("layers")) p.layers.push_back(layer_from_json(l));
    for (const auto& q : j.at("parameters"))
      p.params.push_back({q.at("name").get<std::string>(), q.at("shape").get<std::vector<int64_t>>()});
    p.width = j.at("width").get<int64_t>();
    return p;
  } catch (const nlohmann::json::exception& e) {
    throw InputError(path + ": not a recording description: " + e.what());
  }
}

int64_t total_params(const std::vector<RecordedParameter>& ps) {
  int64_t n = 0;
  for (const auto& p : ps) n += p.numel();
  return n;
}

// Where each durable step lies: its segment file, byte offset, batch size and layer modes
// (empty: a format 1 segment, full rows).
struct StepIndex {
  std::string file;
  int64_t offset = 0, batch = 0, step = 0;
  double lr = 0;
  std::vector<int64_t> modes;
  bool has_params = true;          // the first step of its window (checkpoint) holds the parameters
  std::vector<LayerBatch> raw;     // mode 2 layers: the capture's shape (no pointers)
  std::vector<int64_t> raw_floats;  // mode 2 layers: floats of x and delta
};

// Index of the first NaN or infinity in p[0, n) (n when there is none): an exponent of all ones,
// tested on the bits (a branch-free integer scan the compiler vectorizes).
int64_t first_non_finite(const float* p, int64_t n) {
  constexpr int64_t kChunk = 4096;
  for (int64_t a = 0; a < n; a += kChunk) {
    const int64_t b = std::min(n, a + kChunk);
    uint32_t any = 0;
    for (int64_t q = a; q < b; ++q) {
      uint32_t u;
      std::memcpy(&u, p + q, 4);
      any |= static_cast<uint32_t>((u & 0x7f800000u) == 0x7f800000u);
    }
    if (any)
      for (int64_t q = a; q < b; ++q)
        if (!std::isfinite(p[q])) return q;
  }
  return n;
}

// A mode 2 block's head and back.
void raw_head(const LayerBatch& c, int64_t out[kRawHead]) {
  out[0] = c.positions;
  out[1] = c.x_bias_column ? 1 : 0;
  out[2] = c.height;
  out[3] = c.width;
  uint32_t bits;
  std::memcpy(&bits, &c.delta_scale, 4);
  out[4] = static_cast<int64_t>(bits);
}

LayerBatch raw_capture(const int64_t h[kRawHead]) {
  LayerBatch c;
  c.positions = h[0];
  c.x_bias_column = h[1] != 0;
  c.height = h[2];
  c.width = h[3];
  const auto bits = static_cast<uint32_t>(h[4]);
  std::memcpy(&c.delta_scale, &bits, 4);
  return c;
}

std::pair<int64_t, int64_t> capture_floats(const RecordedLayer& l, const LayerBatch& c, int64_t batch);

// Reads the segments segment_000000.bin, ... in order (stopping at the first missing one) and
// checks each one's framing and size: a segment exists only complete (rename after fsync), so
// a mismatch means damage, never a crash, and is refused.
std::vector<StepIndex> index_segments(const std::string& dir, const std::vector<RecordedLayer>& layers, const Sizes& sizes,
                                      int64_t width, int64_t params, int64_t window) {
  std::vector<StepIndex> idx;
  for (size_t s = 0;; ++s) {
    const std::string path = (fs::path(dir) / segment_name(s)).string();
    std::error_code ec;
    if (!fs::exists(path, ec)) break;
    std::ifstream in(path, std::ios::binary);
    ATTRACE_CHECK(in.good(), InputError, path + ": cannot read");
    const auto size = static_cast<int64_t>(fs::file_size(path));
    char magic[8];
    int64_t head[4];
    in.read(magic, 8);
    in.read(reinterpret_cast<char*>(head), sizeof head);
    const bool v1 = in.good() && std::memcmp(magic, kSegmentMagic1, 8) == 0;
    ATTRACE_CHECK(in.good() && (v1 || std::memcmp(magic, kSegmentMagic, 8) == 0), InputError, path + ": not a recording segment");
    ATTRACE_CHECK(head[0] == static_cast<int64_t>(idx.size()), InputError,
                  path + ": first step index " + std::to_string(head[0]) + ", expected " + std::to_string(idx.size()));
    ATTRACE_CHECK(head[2] == width && head[3] == params, InputError,
                  path + ": rows of " + std::to_string(head[2]) + " columns and " + std::to_string(head[3]) +
                      " parameters, recording.json says " + std::to_string(width) + " and " + std::to_string(params));
    int64_t at = kHeaderBytes;
    for (int64_t k = 0; k < head[1]; ++k) {
      ATTRACE_CHECK(at + 24 <= size, InputError, path + ": truncated at step " + std::to_string(k));
      StepIndex e;
      e.file = path;
      e.offset = at;
      in.seekg(at);
      in.read(reinterpret_cast<char*>(&e.step), 8);
      in.read(reinterpret_cast<char*>(&e.lr), 8);
      in.read(reinterpret_cast<char*>(&e.batch), 8);
      ATTRACE_CHECK(in.good() && e.batch > 0 && e.batch <= (int64_t{1} << 32), InputError,
                    path + ": step " + std::to_string(k) + " has a batch of " + std::to_string(e.batch));
      ATTRACE_CHECK(idx.empty() || e.step > idx.back().step, InputError, path + ": steps do not increase");
      if (v1) {
        at += 24 + e.batch * 8 + e.batch * width * 4 + params * 4;
      } else {
        e.modes.resize(sizes.size());
        in.seekg(at + 24 + e.batch * 8);
        in.read(reinterpret_cast<char*>(e.modes.data()), static_cast<std::streamsize>(e.modes.size() * 8));
        ATTRACE_CHECK(in.good(), InputError, path + ": truncated at step " + std::to_string(k));
        const bool raw = !e.modes.empty() && e.modes[0] == kModeRaw;
        for (const auto m : e.modes)
          ATTRACE_CHECK((m == kModeRows || m == kModeFactors) != raw && (m == kModeRaw) == raw, InputError,
                        path + ": step " + std::to_string(k) + " has layer modes that do not go together (" + std::to_string(m) + ")");
        if (raw) {
          // Each layer's head says how many floats its captured tensors take.
          int64_t p = at + 24 + e.batch * 8 + static_cast<int64_t>(e.modes.size()) * 8;
          e.raw_floats.assign(e.modes.size(), 0);
          for (size_t l = 0; l < e.modes.size(); ++l) {
            int64_t h[kRawHead];
            in.seekg(p);
            in.read(reinterpret_cast<char*>(h), sizeof h);
            ATTRACE_CHECK(in.good() && p + static_cast<int64_t>(sizeof h) <= size, InputError,
                          path + ": truncated at step " + std::to_string(k));
            const LayerBatch c = raw_capture(h);
            const bool sane = c.positions >= 1 && c.positions <= (int64_t{1} << 32) && c.height >= 0 && c.width >= 0 &&
                              c.height <= (int64_t{1} << 24) && c.width <= (int64_t{1} << 24) &&
                              (c.height > 0) == (layers[l].conv && c.height > 0);
            ATTRACE_CHECK(sane, InputError, path + ": step " + std::to_string(k) + ", layer '" + layers[l].name + "': damaged capture head");
            const auto [nx, nd] = capture_floats(layers[l], c, e.batch);
            ATTRACE_CHECK(nx > 0 && nd > 0, InputError,
                          path + ": step " + std::to_string(k) + ", layer '" + layers[l].name + "': damaged capture head");
            e.raw.push_back(c);
            e.raw_floats[l] = nx + nd;
            p += kRawHead * 8 + 4 * (nx + nd);
          }
        }
        e.has_params = static_cast<int64_t>(idx.size()) % window == 0;
        at += step_bytes(e.batch, sizes, e.modes, e.has_params ? params : 0, e.raw_floats);
      }
      idx.push_back(std::move(e));
    }
    char end[8] = {};
    in.seekg(at);
    in.read(end, 8);
    ATTRACE_CHECK(in.good() && std::memcmp(end, kSegmentEnd, 8) == 0 && at + 8 == size, InputError,
                  path + ": damaged segment (size " + std::to_string(size) + ", expected " + std::to_string(at + 8) + ")");
  }
  return idx;
}

// Each layer's stored sizes: (k_in, k_out) projected, (d_in, d_out) exact.
Sizes sizes_of(const std::vector<RecordedLayer>& layers, const RecorderSettings& s) {
  Sizes z;
  if (s.projection == Projection::none) {
    for (const auto& l : layers) z.emplace_back(l.d_in, l.d_out);
    return z;
  }
  for (const auto& u : plan_recorded_projection(layers, s.k, 0)) z.emplace_back(u.k_in, u.k_out);
  return z;
}

// Columns of a recorded row.
int64_t width_of(const std::vector<RecordedLayer>& layers, const RecorderSettings& s) {
  if (s.projection == Projection::none) return recorded_exact_layout(layers, s.factored).width();
  return recorded_width(plan_recorded_projection(layers, s.k, 0));
}

// Exact rows (recorded_exact_layout) from each layer's factors of one position per example: x
// rows (d_in, with the bias column) and delta rows (d_out), row strides lx and ld. Dense layers
// by the chain path's own products (outer_row_sum: one position, one product per entry; the
// bias entries are delta), factored layers copied.
void exact_rows(const std::vector<RecordedLayer>& layers, const FeatureLayout& layout, int64_t batch,
                const std::vector<const float*>& xs, const std::vector<int64_t>& lx, const std::vector<const float*>& ds,
                const std::vector<int64_t>& ld, float* out) {
  const int64_t w = layout.width();
  for (int64_t b = 0; b < batch; ++b) {
    float* row = out + b * w;
    int64_t dense_at = 0;
    size_t k = 0;
    for (size_t l = 0; l < layers.size(); ++l) {
      const auto& L = layers[l];
      const float* x = xs[l] + b * lx[l];
      const float* d = ds[l] + b * ld[l];
      if (k < layout.factored.size() && layout.factored[k].layer == L.name) {
        const auto& fl = layout.factored[k++];
        std::copy(x, x + L.d_in, row + fl.offset);
        std::copy(d, d + L.d_out, row + fl.delta_offset());
        continue;
      }
      const int64_t n_in = L.d_in - (L.bias ? 1 : 0);
      float* wg = row + dense_at;
      for (int64_t o = 0; o < L.d_out; ++o) outer_row_sum(wg + o * n_in, d, o, L.d_out, x, L.d_in, n_in, int64_t{1});
      if (L.bias)
        for (int64_t o = 0; o < L.d_out; ++o) wg[L.d_out * n_in + o] = d[o];
      dense_at += L.d_in * L.d_out;
    }
  }
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ATTRACE_CHECK(in.good(), InputError, path + ": cannot read");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ---------------------------------------------------------------------------------------------
// The projection. kernels::project_dense defines each output as: the float32 sum over rows q of P
// in ascending order of g[q] * e[q][j] (e = +-1 or the unscaled Gaussian rounded to float32),
// started from 0.0f within each chunk of kProjectionChunk rows, the chunk sums added in ascending
// chunk order, then times float(1 / sqrt(k)); project_kronecker then sums the outer products of
// the projected factors over positions t (ascending, from 0.0f), and the recorder multiplies by
// float(sqrt(lr)) and rounds to the dtype. The recorder computes exactly that, but from a matrix of
// e generated once per recorded step (the kernel regenerates it for every block of 64 rows), with
// 4 rows x 16 columns of outputs held in vector registers; the sum over positions is the same
// kind of product. Vectorised across outputs only, never across the summed index;
// -ffp-contract=off keeps every multiply and add separately rounded.

using v16 = float __attribute__((vector_size(64)));

int64_t round16(int64_t k) { return (k + 15) / 16 * 16; }

// Unscaled entries of P (p rows x k columns) in rows of round16(k) floats (zero padding), as
// kernels' generator makes them.
void generate_matrix(const kernels::ProjectionSpec& s, int64_t p, std::vector<float>& e) {
  const int64_t k = s.k, ld = round16(k);
  e.assign(static_cast<size_t>(p * ld), 0.0f);
  for (int64_t q = 0; q < p; ++q) {
    float* er = e.data() + q * ld;
    if (s.kind == kernels::ProjectionKind::rademacher) {
      for (int64_t c0 = 0; c0 < k; c0 += 128) {
        const kernels::Philox4 block = kernels::rademacher_block(s, q, c0 >> 7);
        const int64_t n = std::min<int64_t>(128, k - c0);
        // Bit c of the block: -1 when set (kernels::rademacher_sign), without a branch.
        for (int64_t c = 0; c < n; ++c)
          er[c0 + c] = static_cast<float>(1 - 2 * static_cast<int>((block.v[c >> 5] >> (c & 31)) & 1u));
      }
    } else {
      for (int64_t c = 0; c < k; ++c) er[c] = static_cast<float>(kernels::gaussian_unscaled(s, q, c));
    }
  }
}

// A product out(r, j) = (sum over q of g(r, q) e(q, j)) * scale for R rows and 16 columns from
// j0: g(r, q) = g[r rs + q qs], e(q, j) = e[q lde + j] (lde >= j0 + 16: padded), the sum over q in
// [0, n) ascending from 0.0f in chunks of `chunk` (the chunk sums added in order); `valid` of
// the 16 columns are stored.
template <int R>
__attribute__((always_inline)) inline void product_block(const float* g, int64_t rs, int64_t qs, int64_t n, int64_t chunk,
                                                         const float* e, int64_t lde, int64_t j0, float scale, float* out,
                                                         int64_t ldo, int64_t valid) {
  v16 total[R]{}, acc[R]{};  // total is set by the first chunk (n >= 1)
  for (int64_t c0 = 0; c0 < n; c0 += chunk) {
    const int64_t c1 = std::min(n, c0 + chunk);
    for (int r = 0; r < R; ++r) acc[r] = v16{};
    for (int64_t q = c0; q < c1; ++q) {
      v16 ev;
      std::memcpy(&ev, e + q * lde + j0, sizeof ev);
      for (int r = 0; r < R; ++r) acc[r] += g[r * rs + q * qs] * ev;
    }
    for (int r = 0; r < R; ++r) total[r] = c0 == 0 ? acc[r] : total[r] + acc[r];
  }
  for (int r = 0; r < R; ++r) {
    const v16 o = total[r] * scale;
    if (valid == 16) {
      std::memcpy(out + r * ldo + j0, &o, sizeof o);
    } else {
      float tmp[16];
      std::memcpy(tmp, &o, sizeof o);
      std::memcpy(out + r * ldo + j0, tmp, static_cast<size_t>(valid) * 4);
    }
  }
}

// Rows [r0, r1) of a product: out (row stride ldo, k columns) from g rows (stride rs, q stride
// qs) and e (n x lde, lde >= round16(k)).
__attribute__((target_clones("avx512f", "avx2", "default"))) void product_rows(const float* g, int64_t rs, int64_t qs,
                                                                                 int64_t r0, int64_t r1, int64_t n,
                                                                                 int64_t chunk, const float* e, int64_t lde,
                                                                                 int64_t k, float scale, float* out,
                                                                                 int64_t ldo) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4)
    for (int64_t j0 = 0; j0 < k; j0 += 16)
      product_block<4>(g + r * rs, rs, qs, n, chunk, e, lde, j0, scale, out + r * ldo, ldo, std::min<int64_t>(16, k - j0));
  for (; r < r1; ++r)
    for (int64_t j0 = 0; j0 < k; j0 += 16)
      product_block<1>(g + r * rs, rs, qs, n, chunk, e, lde, j0, scale, out + r * ldo, ldo, std::min<int64_t>(16, k - j0));
}

// The projection matrices of one recorded step (each layer's P_in and P_out, unscaled, in padded
// rows; none for a factor kept exact).
struct StepMatrices {
  int64_t index = -1;
  std::vector<KroneckerUse> plan;
  std::vector<std::vector<float>> e_in, e_out;
};

kernels::ProjectionSpec spec_of(const RecorderSettings& s, uint32_t stream, int64_t k, int64_t d) {
  return {s.seed, stream, k, k == d ? kernels::ProjectionKind::identity : s.distribution};
}

void make_matrices(const std::vector<RecordedLayer>& layers, const RecorderSettings& s, int64_t index, StepMatrices& m) {
  m.index = index;
  m.plan = plan_recorded_projection(layers, s.k, static_cast<size_t>(index));
  m.e_in.resize(m.plan.size());
  m.e_out.resize(m.plan.size());
  for (size_t l = 0; l < m.plan.size(); ++l) {
    const auto& u = m.plan[l];
    const auto in = spec_of(s, u.stream_in, u.k_in, u.d_in), out = spec_of(s, u.stream_out, u.k_out, u.d_out);
    if (in.kind == kernels::ProjectionKind::identity) m.e_in[l].clear(); else generate_matrix(in, u.d_in, m.e_in[l]);
    if (out.kind == kernels::ProjectionKind::identity) m.e_out[l].clear(); else generate_matrix(out, u.d_out, m.e_out[l]);
  }
}

// Scratch buffers of the projection (kept across steps so that steady state allocates nothing).
struct Scratch {
  std::vector<float> x, d;
  std::vector<std::vector<float>> xp, dp;  // per layer: projected (or padded exact) factors
};

// One layer's factors as the featurizer holds them: x (rows x d_in, with the bias column) and
// delta (rows x d_out, scaled), rows = batch x positions. Points into the capture when it is
// already in that form, else builds them in `sx` / `sd`.
struct Factors {
  const float* x = nullptr;
  const float* d = nullptr;
  int64_t positions = 1;
};

int64_t conv_positions(const RecordedLayer& l, const LayerBatch& c) {
  const auto& g = l.geometry;
  const int64_t ho = ConvGeometry::out_size(c.height, g.ph, g.dh, g.kh, g.sh);
  const int64_t wo = ConvGeometry::out_size(c.width, g.pw, g.dw, g.kw, g.sw);
  return ho >= 1 && wo >= 1 ? ho * wo : 0;
}

Factors factors_of(const RecordedLayer& l, const LayerBatch& c, int64_t batch, std::vector<float>& sx, std::vector<float>& sd) {
  Factors f;
  const int64_t n_in = l.d_in - (l.bias ? 1 : 0);
  if (l.conv && c.height > 0) {
    // Unfold as the CLI's chain path does (gradients.cpp, unfold): row b L + t for output
    // position t = oy W_out + ox, column (ch kh + i) kw + j (zero outside the image), then the 1.
    const auto& g = l.geometry;
    const int64_t h = c.height, w = c.width;
    const int64_t ho = ConvGeometry::out_size(h, g.ph, g.dh, g.kh, g.sh), wo = ConvGeometry::out_size(w, g.pw, g.dw, g.kw, g.sw);
    const int64_t L = ho * wo;
    f.positions = L;
    sx.resize(static_cast<size_t>(batch * L * l.d_in));
    for (int64_t e = 0; e < batch; ++e) {
      const float* img = c.x + e * g.c_in * h * w;
      for (int64_t oy = 0; oy < ho; ++oy) {
        const int64_t y0 = oy * g.sh - g.ph;
        const bool rows_inside = y0 >= 0 && y0 + (g.kh - 1) * g.dh < h;
        for (int64_t ox = 0; ox < wo; ++ox) {
          float* row = sx.data() + (e * L + oy * wo + ox) * l.d_in;
          const int64_t x0 = ox * g.sw - g.pw;
          if (rows_inside && x0 >= 0 && x0 + (g.kw - 1) * g.dw < w) {
            // The whole patch lies inside the image: no bounds to check.
            for (int64_t ch = 0; ch < g.c_in; ++ch)
              for (int64_t i = 0; i < g.kh; ++i) {
                const float* src = img + (ch * h + y0 + i * g.dh) * w + x0;
                float* dst = row + (ch * g.kh + i) * g.kw;
                for (int64_t j = 0; j < g.kw; ++j) dst[j] = src[j * g.dw];
              }
          } else {
            for (int64_t ch = 0; ch < g.c_in; ++ch)
              for (int64_t i = 0; i < g.kh; ++i) {
                const int64_t y = y0 + i * g.dh;
                for (int64_t j = 0; j < g.kw; ++j) {
                  const int64_t xx = x0 + j * g.dw;
                  const bool inside = y >= 0 && y < h && xx >= 0 && xx < w;
                  row[(ch * g.kh + i) * g.kw + j] = inside ? img[(ch * h + y) * w + xx] : 0.0f;
                }
              }
          }
          if (l.bias) row[n_in] = 1.0f;
        }
      }
    }
    f.x = sx.data();
    // [B, C_out, L] to [B, L, C_out], times the scale.
    sd.resize(static_cast<size_t>(batch * L * l.d_out));
    for (int64_t e = 0; e < batch; ++e)
      for (int64_t o = 0; o < l.d_out; ++o) {
        const float* src = c.delta + (e * l.d_out + o) * L;
        float* dst = sd.data() + e * L * l.d_out + o;
        for (int64_t t = 0; t < L; ++t) dst[t * l.d_out] = src[t] * c.delta_scale;
      }
    f.d = sd.data();
    return f;
  }
  f.positions = c.positions;
  const int64_t rows = batch * c.positions;
  if (c.x_bias_column || !l.bias) {
    f.x = c.x;
  } else {
    sx.resize(static_cast<size_t>(rows * l.d_in));
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(sx.data() + r * l.d_in, c.x + r * n_in, static_cast<size_t>(n_in) * 4);
      sx[static_cast<size_t>(r * l.d_in + n_in)] = 1.0f;  // [W b] acts on [x 1]
    }
    f.x = sx.data();
  }
  if (c.delta_scale == 1.0f) {
    f.d = c.delta;
  } else {
    sd.resize(static_cast<size_t>(rows * l.d_out));
    for (int64_t q = 0; q < rows * l.d_out; ++q) sd[static_cast<size_t>(q)] = c.delta[q] * c.delta_scale;
    f.d = sd.data();
  }
  return f;
}

// The projected factors of one layer, P_in^T x_t and P_out^T delta_t for every row (rows =
// batch x positions), into rows of round16(k) floats (an exact factor is copied there).
void project_factor(const float* g, int64_t rows, int64_t d, int64_t k, const std::vector<float>& e, std::vector<float>& out,
                    int threads) {
  const int64_t ld = round16(k);
  out.resize(static_cast<size_t>(rows * ld));
  if (e.empty()) {  // kept exact: k == d
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(out.data() + r * ld, g + r * d, static_cast<size_t>(d) * 4);
      std::fill(out.data() + r * ld + d, out.data() + (r + 1) * ld, 0.0f);
    }
    return;
  }
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(k)));
  // Blocks of 64 rows: the unit of work of the optional threads (a row's result never depends
  // on its block).
  const int64_t blocks = (rows + 63) / 64;
  const auto block = [&](int64_t bl) {
    product_rows(g, d, 1, bl * 64, std::min(rows, bl * 64 + 64), d, kernels::kProjectionChunk, e.data(), round16(k), k, scale,
                 out.data(), ld);
  };
  if (threads > 1) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t bl = 0; bl < blocks; ++bl) block(bl);
  } else {
    for (int64_t bl = 0; bl < blocks; ++bl) block(bl);  // no OpenMP region: its start-up costs more than small products
  }
}

// One example's Kronecker row of a layer from its projected factors: o[a ki + c] = (sum over
// positions t, ascending from 0.0f, of dp[t][a] xp[t][c]) * root_lr.
void kronecker_rows(const std::vector<float>& xp, int64_t ki, const std::vector<float>& dp, int64_t ko, int64_t batch,
                    int64_t positions, float root_lr, float* out, int64_t ldo, int threads) {
  const int64_t ldx = round16(ki), ldd = round16(ko);
  // g(a, t) = dp[t][a] (rows a, summed index t), e(t, c) = xp[t][c], out rows a of ki columns.
  const auto example = [&](int64_t e) {
    product_rows(dp.data() + e * positions * ldd, 1, ldd, 0, ko, positions, positions, xp.data() + e * positions * ldx, ldx, ki,
                 root_lr, out + e * ldo, ki);
  };
  if (threads > 1) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t e = 0; e < batch; ++e) example(e);
  } else {
    for (int64_t e = 0; e < batch; ++e) example(e);
  }
}

// Rounds features to the dtype (a no-op for f32).
void round_rows(float* p, int64_t n, connectors::FeatureDtype dtype) {
  if (dtype != connectors::FeatureDtype::f32)
    for (int64_t i = 0; i < n; ++i) p[i] = connectors::round_to_dtype(p[i], dtype);
}

// The projected factors of every layer of a batch (recorded_rows' first part).
void project_batch(const std::vector<RecordedLayer>& layers, const StepMatrices& m, int64_t batch,
                   const std::vector<LayerBatch>& captured, Scratch& sc, std::vector<int64_t>& positions, int threads) {
  sc.xp.resize(m.plan.size());
  sc.dp.resize(m.plan.size());
  positions.resize(m.plan.size());
  for (size_t l = 0; l < m.plan.size(); ++l) {
    const auto& u = m.plan[l];
    const Factors f = factors_of(layers[l], captured[l], batch, sc.x, sc.d);
    positions[l] = f.positions;
    project_factor(f.x, batch * f.positions, u.d_in, u.k_in, m.e_in[l], sc.xp[l], threads);
    project_factor(f.d, batch * f.positions, u.d_out, u.k_out, m.e_out[l], sc.dp[l], threads);
  }
}

// The full rows (batch x width) from projected factors.
void rows_of(const StepMatrices& m, connectors::FeatureDtype dtype, double lr, int64_t batch, const Scratch& sc,
             const std::vector<int64_t>& positions, float* out, int threads) {
  const int64_t width = recorded_width(m.plan);
  const auto root_lr = static_cast<float>(std::sqrt(lr));
  int64_t at = 0;
  for (size_t l = 0; l < m.plan.size(); ++l) {
    const auto& u = m.plan[l];
    kronecker_rows(sc.xp[l], u.k_in, sc.dp[l], u.k_out, batch, positions[l], root_lr, out + at, width, threads);
    at += u.k_in * u.k_out;
  }
  round_rows(out, batch * width, dtype);
}

// Checks one layer's capture description against the layer; returns the floats of x and delta.
// `what` makes the message's prefix, only when a check fails (this runs on the training thread).
template <class What>
std::pair<int64_t, int64_t> capture_sizes(const RecordedLayer& l, const LayerBatch& c, int64_t batch, const What& what,
                                          const RecorderSettings& s) {
  const auto where = [&] { return what() + ", layer '" + l.name + "'"; };
  ATTRACE_CHECK(s.projection != Projection::none || (!l.conv && c.positions == 1), InputError,
                where() + ": exact recording (projection none) takes Linear layers with one position per example; record "
                        "this model with projection kronecker");
  ATTRACE_CHECK(c.x != nullptr && c.delta != nullptr, InputError, where() + ": no captured inputs or output gradients");
  ATTRACE_CHECK(std::isfinite(c.delta_scale), InputError, where() + ": the loss scale is not finite");
  if (l.conv && c.height > 0) {
    ATTRACE_CHECK(c.width > 0, InputError, where() + ": image width must be > 0");
    ATTRACE_CHECK(conv_positions(l, c) > 0, InputError,
                  where() + ": an input of " + std::to_string(c.height) + "x" + std::to_string(c.width) + " is smaller than the kernel");
  } else {
    ATTRACE_CHECK(c.positions >= 1, InputError, where() + ": positions must be >= 1");
    ATTRACE_CHECK(c.x_bias_column || !l.conv, InputError, where() + ": conv patches must carry the bias column (or give the image)");
  }
  return capture_floats(l, c, batch);
}

// Floats of a capture's x and delta (0, 0 for a shape that cannot be).
std::pair<int64_t, int64_t> capture_floats(const RecordedLayer& l, const LayerBatch& c, int64_t batch) {
  if (l.conv && c.height > 0) {
    if (c.width <= 0) return {0, 0};
    const int64_t L = conv_positions(l, c);
    return {batch * l.geometry.c_in * c.height * c.width, batch * L * l.d_out};
  }
  if (c.positions < 1) return {0, 0};
  const int64_t rows = batch * c.positions;
  const int64_t n_in = c.x_bias_column ? l.d_in : l.d_in - (l.bias ? 1 : 0);
  return {rows * n_in, rows * l.d_out};
}

}  // namespace

int64_t ConvGeometry::out_size(int64_t in, int64_t pad, int64_t dil, int64_t ker, int64_t stride) {
  return (in + 2 * pad - dil * (ker - 1) - 1) / stride + 1;
}

int64_t RecordedParameter::numel() const {
  int64_t n = 1;
  for (const auto d : shape) n *= d;
  return n;
}

std::vector<KroneckerUse> plan_recorded_projection(const std::vector<RecordedLayer>& layers, int64_t k, size_t checkpoint) {
  ATTRACE_CHECK(k > 0, InputError, "recorder: projection k must be > 0");
  ATTRACE_CHECK(layers.size() < 4096, InputError, "recorder: at most 4095 layers");
  std::vector<KroneckerUse> plan;
  for (size_t l = 0; l < layers.size(); ++l)
    plan.push_back(plan_kronecker_layer(layers[l].name, layers[l].d_in, layers[l].d_out, k, checkpoint, l));
  return plan;
}

int64_t recorded_width(const std::vector<KroneckerUse>& plan) {
  int64_t w = 0;
  for (const auto& u : plan) w += u.k_in * u.k_out;
  return w;
}

FeatureLayout recorded_exact_layout(const std::vector<RecordedLayer>& layers, Factoring factored) {
  std::vector<LayerScoring> ls;
  int64_t dim = 0;
  for (const auto& l : layers) {
    LayerScoring s{l.name, l.d_in, l.d_out, 1, false};
    s.factored = factored == Factoring::always || (factored == Factoring::automatic && factored_pair_cost(s) < dense_pair_cost(s));
    ls.push_back(s);
    dim += l.d_in * l.d_out;
  }
  return layout_of(ls, dim);
}

void recorded_rows(const std::vector<RecordedLayer>& layers, const RecorderSettings& settings, size_t checkpoint, double lr,
                   int64_t batch, const std::vector<LayerBatch>& captured, float* out) {
  ATTRACE_CHECK(captured.size() == layers.size(), InputError,
                "recorder: " + std::to_string(captured.size()) + " layers captured, " + std::to_string(layers.size()) + " recorded");
  ATTRACE_CHECK(batch > 0, InputError, "recorder: empty batch");
  for (size_t l = 0; l < layers.size(); ++l) capture_sizes(layers[l], captured[l], batch, [] { return std::string("recorder"); }, settings);
  if (settings.projection == Projection::none) {
    std::vector<std::vector<float>> sx(layers.size()), sd(layers.size());
    std::vector<const float*> xs, ds;
    std::vector<int64_t> lx, ld;
    for (size_t l = 0; l < layers.size(); ++l) {
      const Factors f = factors_of(layers[l], captured[l], batch, sx[l], sd[l]);
      xs.push_back(f.x);
      ds.push_back(f.d);
      lx.push_back(layers[l].d_in);
      ld.push_back(layers[l].d_out);
    }
    exact_rows(layers, recorded_exact_layout(layers, settings.factored), batch, xs, lx, ds, ld, out);
    return;
  }
  StepMatrices m;
  make_matrices(layers, settings, static_cast<int64_t>(checkpoint), m);
  Scratch sc;
  std::vector<int64_t> positions;
  const int threads = std::max(1, settings.threads);
  project_batch(layers, m, batch, captured, sc, positions, threads);
  rows_of(m, settings.dtype, lr, batch, sc, positions, out, threads);
}

// ---------------------------------------------------------------------------------------------
// The writer. record() (the caller's thread) checks a step, copies it into a job from a fixed
// pool of queue_steps jobs (waiting while all are in use) and queues it. The projection thread
// projects each job in queue order and appends it to the open segment's temporary file; at each
// durable point it closes that segment (end magic, count) and hands it to the sync thread, which
// makes segments durable in order (fsync, rename, directory fsync) while the next one is written.
// At most kSyncBacklog closed segments wait for their fsync before the projection thread waits.

namespace {

constexpr size_t kSyncBacklog = 2;
// queue_steps = 0 (automatic): bytes of queued steps the pool is sized for.
constexpr int64_t kQueueBytes = int64_t{64} << 20;

struct Job {
  enum class Kind { step, flush, stop } kind = Kind::step;
  int64_t index = 0, step = 0, batch = 0;  // index: the checkpoint (window) whose matrices it uses
  int64_t seq = 0;                          // its place among all recorded steps
  double lr = 0;
  uint64_t ticket = 0;  // flush / stop: the ticket its caller waits for
  std::vector<int64_t> ids;
  std::vector<std::vector<float>> x, d;
  std::vector<LayerBatch> captured;  // pointers into x and d
  std::vector<float> params;
};

// A closed segment waiting for durability (fd < 0: only a ticket to acknowledge, in order).
struct SyncItem {
  int fd = -1;
  std::string tmp, path;
  int64_t steps = 0;
  uint64_t ticket = 0;
};

}  // namespace

struct RecordingWriter::Impl {
  std::string dir, template_file;
  RecorderSettings settings;
  std::vector<RecordedLayer> layers;
  std::vector<RecordedParameter> params;
  Sizes sizes;
  int64_t width = 0, n_params = 0;
  int lock_fd = -1;

  // Caller's thread.
  int64_t submitted = 0;  // steps accepted (resumed durable ones included)
  int64_t last_step = -1;
  std::vector<int64_t> sorted;
  bool closed = false;
  uint64_t next_ticket = 0;

  // Shared, under mu.
  std::mutex mu;
  std::condition_variable cv_work, cv_done, cv_sync;
  std::deque<std::unique_ptr<Job>> queue;
  std::vector<std::unique_ptr<Job>> free_jobs;
  std::deque<SyncItem> sync_queue;
  uint64_t done_ticket = 0;
  bool idle = false;    // the projection thread waits for work
  int64_t wake_at = 1;  // queued steps that wake it: half the queue
  int64_t pool_cap = 0;   // jobs at most (queue_steps, or chosen at the first step for 0)
  int64_t jobs_made = 0;  // jobs made so far (free, queued or being written)
  std::exception_ptr error;
  int64_t durable = 0;
  size_t segments = 0;  // segment files named so far (durable or waiting for their fsync)
  RecorderTimings timings;

  // Projection thread only.
  std::thread worker, syncer;
  StepMatrices matrices;
  Scratch scratch;
  std::vector<int64_t> positions, modes;
  std::vector<std::vector<float>> blocks;  // per layer: what is written (factors or rows)
  std::vector<std::array<int64_t, kRawHead>> raw_heads;  // deferred: per layer, the capture's head
  std::vector<int64_t> raw_floats;                       // deferred: per layer, floats of x and delta
  bool last_live = true;                                 // the last step was projected here
  int seg_fd = -1;
  std::string seg_tmp, seg_path;
  int64_t seg_steps = 0, seg_bytes = 0, seg_first = 0, written = 0;

  void rethrow_locked() {
    if (error) std::rethrow_exception(error);
  }

  void fail(std::exception_ptr e) {
    std::lock_guard<std::mutex> lk(mu);
    if (!error) error = e;
    cv_done.notify_all();
  }

  // Writes all of [p, p + n) at the end of the open segment.
  void write_all(const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      const ssize_t w = ::write(seg_fd, c, n);
      if (w < 0 && errno == EINTR) continue;
      ATTRACE_CHECK(w > 0, RuntimeFailure, seg_tmp + ": write failed: " + std::strerror(errno));
      c += w;
      n -= static_cast<size_t>(w);
    }
  }

  // Writes the buffers in order at the end of the open segment (one system call when it can).
  void write_vector(std::vector<iovec>& io) {
    size_t first = 0;
    while (first < io.size()) {
      const ssize_t w = ::writev(seg_fd, io.data() + first, static_cast<int>(std::min<size_t>(io.size() - first, IOV_MAX)));
      if (w < 0 && errno == EINTR) continue;
      ATTRACE_CHECK(w >= 0, RuntimeFailure, seg_tmp + ": write failed: " + std::strerror(errno));
      auto left = static_cast<size_t>(w);
      while (first < io.size() && left >= io[first].iov_len) left -= io[first++].iov_len;
      if (first < io.size()) {
        io[first].iov_base = static_cast<char*>(io[first].iov_base) + left;
        io[first].iov_len -= left;
        ATTRACE_CHECK(w > 0 || io[first].iov_len == 0, RuntimeFailure, seg_tmp + ": write made no progress");
      }
    }
  }

  void open_segment() {
    {
      std::lock_guard<std::mutex> lk(mu);
      seg_path = (fs::path(dir) / segment_name(segments++)).string();
    }
    seg_tmp = seg_path + ".tmp-" + std::to_string(::getpid());
    seg_fd = ::open(seg_tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ATTRACE_CHECK(seg_fd >= 0, RuntimeFailure, seg_tmp + ": cannot create: " + std::strerror(errno));
    seg_first = written;
    seg_steps = 0;
    seg_bytes = 0;
    // The header's count is written when the segment is closed.
    const int64_t head[4] = {seg_first, 0, width, n_params};
    write_all(kSegmentMagic, 8);
    write_all(head, sizeof head);
  }

  // Queues an item for the sync thread, waiting while kSyncBacklog segments wait for theirs.
  void push_sync(SyncItem item) {
    std::unique_lock<std::mutex> lk(mu);
    cv_done.wait(lk, [&] { return sync_queue.size() < kSyncBacklog; });
    sync_queue.push_back(std::move(item));
    cv_sync.notify_one();
  }

  // Closes the open segment (end magic, count) and queues it for the sync thread, with `ticket`
  // (0: none) acknowledged once it and every segment before it are durable.
  void close_segment(uint64_t ticket) {
    SyncItem item;
    item.ticket = ticket;
    if (seg_fd >= 0) {
      write_all(kSegmentEnd, 8);
      ATTRACE_CHECK(::pwrite(seg_fd, &seg_steps, 8, 16) == 8, RuntimeFailure, seg_tmp + ": write failed: " + std::strerror(errno));
      item.fd = seg_fd;
      item.tmp = seg_tmp;
      item.path = seg_path;
      item.steps = seg_steps;
      seg_fd = -1;
    }
    if (item.fd >= 0 || ticket != 0) push_sync(std::move(item));
  }

  // The sync thread: each closed segment in order made durable; only then do its steps count.
  void run_sync() {
    for (;;) {
      SyncItem item;
      {
        std::unique_lock<std::mutex> lk(mu);
        cv_sync.wait(lk, [&] { return !sync_queue.empty(); });
        item = std::move(sync_queue.front());
      }
      const bool stop = item.fd < 0 && item.ticket == UINT64_MAX;
      // A closed segment holds only complete steps: it is committed even when the projection
      // thread failed later.
      bool committed = false;
      const auto t0 = Clock::now();
      if (item.fd >= 0) {
        try {
          ATTRACE_CHECK(::fsync(item.fd) == 0, RuntimeFailure, item.tmp + ": fsync failed: " + std::strerror(errno));
          ::close(item.fd);
          item.fd = -1;
          std::error_code ec;
          fs::rename(item.tmp, item.path, ec);
          ATTRACE_CHECK(!ec, RuntimeFailure, item.path + ": cannot move into place: " + ec.message());
          connectors::fsync_path(dir);  // the rename itself is durable before the steps count as written
          committed = true;
        } catch (...) {
          if (item.fd >= 0) ::close(item.fd);
          std::error_code ec;
          fs::remove(item.tmp, ec);
          fail(std::current_exception());
        }
      }
      {
        std::lock_guard<std::mutex> lk(mu);
        if (committed) durable += item.steps;
        timings.sync += seconds(t0, Clock::now());
        if (item.ticket && !stop) done_ticket = std::max(done_ticket, item.ticket);
        sync_queue.pop_front();
      }
      cv_done.notify_all();
      if (stop) return;
    }
  }

  // Exact recording: each layer's factors (one position per example) are what is stored; the
  // rows they make must be finite (dense columns are products of the two).
  void process_exact(Job& j) {
    const auto t0 = Clock::now();
    modes.assign(layers.size(), 1);
    blocks.resize(layers.size());
    for (size_t l = 0; l < layers.size(); ++l) {
      const auto& L = layers[l];
      const Factors f = factors_of(L, j.captured[l], j.batch, scratch.x, scratch.d);
      auto& out = blocks[l];
      out.resize(static_cast<size_t>(j.batch * (L.d_in + L.d_out)));
      std::memcpy(out.data(), f.x, static_cast<size_t>(j.batch * L.d_in) * 4);
      std::memcpy(out.data() + j.batch * L.d_in, f.d, static_cast<size_t>(j.batch * L.d_out) * 4);
      for (int64_t e = 0; e < j.batch; ++e) {
        double mx = 0, md = 0, sx = 0, sd = 0;  // a NaN fails every comparison: the sums carry it
        for (int64_t c = 0; c < L.d_in; ++c) {
          const double v = std::fabs(f.x[e * L.d_in + c]);
          sx += v;
          mx = std::max(mx, v);
        }
        for (int64_t a = 0; a < L.d_out; ++a) {
          const double v = std::fabs(f.d[e * L.d_out + a]);
          sd += v;
          md = std::max(md, v);
        }
        bool ok = std::isfinite(sx) && std::isfinite(sd);
        if (ok && mx * md >= 3.0e38)  // a product may overflow: check them
          for (int64_t a = 0; a < L.d_out && ok; ++a)
            for (int64_t c = 0; c < L.d_in && ok; ++c) ok = std::isfinite(f.d[e * L.d_out + a] * f.x[e * L.d_in + c]);
        ATTRACE_CHECK(ok, NumericError,
                      dir + ": step " + std::to_string(j.step) + ": non-finite gradient for example id " +
                          std::to_string(j.ids[static_cast<size_t>(e)]) + " in layer '" + L.name +
                          "' (nothing from this step on was recorded)");
      }
    }
    write_step(j, t0, Clock::now());
  }

  // Appends a step (its modes and blocks made) to the open segment; a durable point after
  // flush_steps steps or flush_bytes bytes.
  void write_step(const Job& j, Clock::time_point t0, Clock::time_point t1) {
    if (seg_fd < 0) open_segment();
    char head[24];
    std::memcpy(head, &j.step, 8);
    std::memcpy(head + 8, &j.lr, 8);
    std::memcpy(head + 16, &j.batch, 8);
    std::vector<iovec> io = {{head, sizeof head},
                             {const_cast<int64_t*>(j.ids.data()), j.ids.size() * 8},
                             {modes.data(), modes.size() * 8}};
    for (size_t l = 0; l < layers.size(); ++l) {
      if (modes[l] == kModeRaw) {  // straight from the job's copies
        io.push_back({raw_heads[l].data(), kRawHead * 8});
        io.push_back({const_cast<float*>(j.x[l].data()), j.x[l].size() * 4});
        io.push_back({const_cast<float*>(j.d[l].data()), j.d[l].size() * 4});
      } else {
        io.push_back({blocks[l].data(), blocks[l].size() * 4});
      }
    }
    if (!j.params.empty()) io.push_back({const_cast<float*>(j.params.data()), j.params.size() * 4});
    write_vector(io);
    ++seg_steps;
    ++written;
    seg_bytes += step_bytes(j.batch, sizes, modes, static_cast<int64_t>(j.params.size()), raw_floats);
    if (seg_steps >= settings.flush_steps || seg_bytes >= settings.flush_bytes) close_segment(0);
    const auto t2 = Clock::now();
    std::lock_guard<std::mutex> lk(mu);
    timings.project += seconds(t0, t1);
    timings.write += seconds(t1, t2);
    ++timings.steps;
  }

  // Deferred projection: the captured tensors are stored as they came; the projection runs when
  // the recording is read. Only their finiteness is checked here (a finite capture whose
  // features overflow is reported by the reader, naming the step, example and layer).
  void process_deferred(Job& j) {
    const auto t0 = Clock::now();
    last_live = false;
    modes.assign(layers.size(), kModeRaw);
    raw_heads.resize(layers.size());
    raw_floats.assign(layers.size(), 0);
    for (size_t l = 0; l < layers.size(); ++l) {
      raw_head(j.captured[l], raw_heads[l].data());
      raw_floats[l] = static_cast<int64_t>(j.x[l].size() + j.d[l].size());
      for (const auto* v : {&j.x[l], &j.d[l]}) {
        const int64_t n = static_cast<int64_t>(v->size());
        const int64_t bad = first_non_finite(v->data(), n);
        if (bad < n)
          throw NumericError(dir + ": step " + std::to_string(j.step) + ": non-finite " + (v == &j.x[l] ? "input" : "output gradient") +
                             " for example id " + std::to_string(j.ids[static_cast<size_t>(bad / (n / j.batch))]) + " in layer '" +
                             layers[l].name + "' (nothing from this step on was recorded)");
      }
    }
    write_step(j, t0, Clock::now());
    std::lock_guard<std::mutex> lk(mu);
    ++timings.deferred;
  }

  // Whether a step is stored as its captured tensors: by the setting, or (automatic) when they
  // take at most twice the floats of the projected blocks (factors for one position per
  // example, rows otherwise). Shapes only: files still depend only on the calls.
  bool defers(const Job& j) const {
    if (settings.defer != Deferral::automatic) return settings.defer == Deferral::always;
    int64_t raw = 0, live = 0;
    for (size_t l = 0; l < layers.size(); ++l) {
      raw += static_cast<int64_t>(j.x[l].size() + j.d[l].size());
      const auto& c = j.captured[l];
      const int64_t t = layers[l].conv && c.height > 0 ? conv_positions(layers[l], c) : c.positions;
      const auto [ki, ko] = sizes[l];
      live += j.batch * (t == 1 ? ki + ko : ki * ko);
    }
    return raw <= 2 * live;
  }

  void process_step(Job& j) {
    if (settings.projection == Projection::none) {
      process_exact(j);
      return;
    }
    if (defers(j)) {
      process_deferred(j);
      return;
    }
    last_live = true;
    const auto t0 = Clock::now();
    const int threads = std::max(1, settings.threads);
    if (matrices.index != j.index) make_matrices(layers, settings, j.index, matrices);
    project_batch(layers, matrices, j.batch, j.captured, scratch, positions, threads);
    // Per layer: one position per example keeps its two projected factors (the row is their
    // outer product: B (k_in + k_out) floats instead of B k_in k_out); more positions, the rows.
    const auto root_lr = static_cast<float>(std::sqrt(j.lr));
    const double limit = settings.dtype == connectors::FeatureDtype::f16 ? 6.5e4 : 3.0e38;
    modes.assign(layers.size(), 0);
    blocks.resize(layers.size());
    for (size_t l = 0; l < layers.size(); ++l) {
      const auto& u = matrices.plan[l];
      const auto& xp = scratch.xp[l];
      const auto& dp = scratch.dp[l];
      const int64_t lx = round16(u.k_in), ld = round16(u.k_out);
      if (positions[l] == 1) {
        // The row is finite when both factors are and the largest product cannot overflow (in
        // float32 or in the dtype); otherwise the rows are made, checked and stored.
        bool fine = true;
        for (int64_t e = 0; e < j.batch && fine; ++e) {
          // (a NaN fails every comparison: the sums of magnitudes carry it)
          double mx = 0, md = 0, sx = 0, sd = 0;
          for (int64_t c = 0; c < u.k_in; ++c) {
            const double v = std::fabs(xp[static_cast<size_t>(e * lx + c)]);
            sx += v;
            mx = std::max(mx, v);
          }
          for (int64_t a = 0; a < u.k_out; ++a) {
            const double v = std::fabs(dp[static_cast<size_t>(e * ld + a)]);
            sd += v;
            md = std::max(md, v);
          }
          fine = std::isfinite(sx) && std::isfinite(sd) && mx * md * root_lr < limit;
        }
        if (fine) {
          modes[l] = 1;
          continue;
        }
      }
      auto& rows = blocks[l];
      rows.resize(static_cast<size_t>(j.batch * u.k_in * u.k_out));
      kronecker_rows(xp, u.k_in, dp, u.k_out, j.batch, positions[l], root_lr, rows.data(), u.k_in * u.k_out, threads);
      round_rows(rows.data(), j.batch * u.k_in * u.k_out, settings.dtype);
      for (size_t i = 0; i < rows.size(); ++i)
        ATTRACE_CHECK(std::isfinite(rows[i]), NumericError,
                      dir + ": step " + std::to_string(j.step) + ": non-finite feature for example id " +
                          std::to_string(j.ids[i / static_cast<size_t>(u.k_in * u.k_out)]) + " in layer '" + u.layer +
                          "' (nothing from this step on was recorded)");
    }
    for (size_t l = 0; l < layers.size(); ++l) {
      if (modes[l] != 1) continue;
      const auto& u = matrices.plan[l];
      const int64_t lx = round16(u.k_in), ld = round16(u.k_out);
      auto& f = blocks[l];
      f.resize(static_cast<size_t>(j.batch * (u.k_in + u.k_out)));
      for (int64_t e = 0; e < j.batch; ++e)
        std::memcpy(f.data() + e * u.k_in, scratch.xp[l].data() + e * lx, static_cast<size_t>(u.k_in) * 4);
      for (int64_t e = 0; e < j.batch; ++e)
        std::memcpy(f.data() + j.batch * u.k_in + e * u.k_out, scratch.dp[l].data() + e * ld, static_cast<size_t>(u.k_out) * 4);
    }
    write_step(j, t0, Clock::now());
  }

  void discard_segment() {
    if (seg_fd < 0) return;
    ::close(seg_fd);
    seg_fd = -1;
    std::error_code ec;
    fs::remove(seg_tmp, ec);
  }

  void run(int64_t first) {
    written = first;
    bool draining = false;  // woken, and the queue has not been empty since
    try {
      if (settings.projection != Projection::none && settings.defer != Deferral::always)
        make_matrices(layers, settings, first / settings.window, matrices);  // the first step's, before it comes
      else
        matrices.index = -1;  // nothing is projected here
    } catch (...) {
      matrices.index = -1;
    }
    for (;;) {
      std::unique_ptr<Job> j;
      {
        std::unique_lock<std::mutex> lk(mu);
        // Woken by record() only once wake_at steps wait (or by a flush or stop marker): one
        // wake-up per few steps (a cross-core wake-up costs the training thread on a VM).
        // Once woken it drains the queue (steps queued meanwhile included) before it waits again.
        idle = true;
        if (queue.empty()) draining = false;
        cv_work.wait(lk, [&] {
          return !queue.empty() &&
                 (draining || static_cast<int64_t>(queue.size()) >= wake_at || queue.back()->kind != Job::Kind::step);
        });
        idle = false;
        draining = true;
        j = std::move(queue.front());
        queue.pop_front();
      }
      bool failed;
      {
        std::lock_guard<std::mutex> lk(mu);
        failed = error != nullptr;
      }
      const Job::Kind kind = j->kind;
      const bool window_ends = (j->seq + 1) % settings.window == 0;  // the next step uses other matrices
      if (kind == Job::Kind::step) {
        if (!failed) {
          try {
            process_step(*j);
          } catch (const NumericError&) {
            // A step that cannot be projected leaves the steps before it intact: they are made
            // durable, and nothing after it is recorded.
            const auto e = std::current_exception();
            try {
              close_segment(0);
            } catch (...) {
            }
            fail(e);
          } catch (...) {
            // A failed write loses the open segment (its steps were never durable).
            discard_segment();
            fail(std::current_exception());
          }
        }
        {
          std::lock_guard<std::mutex> lk(mu);
          free_jobs.push_back(std::move(j));
        }
        cv_done.notify_all();
        // Ahead of need: the next recorded step's matrices, while nothing waits.
        bool idle;
        {
          std::lock_guard<std::mutex> lk(mu);
          idle = queue.empty() && error == nullptr;
        }
        if (idle && last_live && window_ends && matrices.index >= 0) {  // (a deferred step needs none)
          try {
            make_matrices(layers, settings, matrices.index + 1, matrices);
          } catch (...) {
            matrices.index = -1;  // made again when needed, where an error is reported
          }
        }
        continue;
      }
      // flush / stop: the open segment goes to the sync thread with the ticket, acknowledged
      // once it (and every segment before it) is durable.
      try {
        if (failed) discard_segment();  // after a failed write (a failed projection closed its segment)
        close_segment(j->ticket);
      } catch (...) {
        discard_segment();
        fail(std::current_exception());
        SyncItem ack;
        ack.ticket = j->ticket;
        push_sync(std::move(ack));
      }
      if (kind == Job::Kind::stop) {
        // The sync thread ends after everything queued before this marker.
        SyncItem end;
        end.ticket = UINT64_MAX;
        push_sync(std::move(end));
        return;
      }
    }
  }

  // Queues a flush or stop marker and waits for it.
  void barrier(Job::Kind kind) {
    auto j = std::make_unique<Job>();
    j->kind = kind;
    j->ticket = ++next_ticket;
    const uint64_t t = j->ticket;
    const auto t0 = Clock::now();
    std::unique_lock<std::mutex> lk(mu);
    queue.push_back(std::move(j));
    cv_work.notify_one();
    cv_done.wait(lk, [&] { return done_ticket >= t; });
    timings.wait += seconds(t0, Clock::now());
  }
};

RecordingWriter::RecordingWriter(const std::string& dir, const RecorderSettings& settings, std::vector<RecordedLayer> layers,
                                 std::vector<RecordedParameter> parameters, const std::string& template_file)
    : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  m.dir = dir;
  m.settings = settings;
  m.layers = std::move(layers);
  m.params = std::move(parameters);
  m.template_file = template_file;
  ATTRACE_CHECK(!m.layers.empty(), InputError, dir + ": the model has no Linear or Conv2d layer to record");
  ATTRACE_CHECK(settings.every >= 1, InputError, dir + ": record every " + std::to_string(settings.every) + " steps (must be >= 1)");
  ATTRACE_CHECK(settings.flush_steps >= 1, InputError, dir + ": flush_steps must be >= 1");
  ATTRACE_CHECK(settings.queue_steps >= 0, InputError, dir + ": queue_steps must be >= 0 (0: automatic)");
  ATTRACE_CHECK(settings.window >= 1, InputError, dir + ": window must be >= 1");
  ATTRACE_CHECK(settings.window == 1 || settings.projection == Projection::kronecker, InputError,
                dir + ": a window of several steps sums their rows, which exact recording (projection none) stores as "
                      "factors: use window 1 or projection kronecker");
  for (size_t i = 1; i < settings.steps.size(); ++i)
    ATTRACE_CHECK(settings.steps[i] > settings.steps[i - 1], InputError, dir + ": the steps to record must increase");
  for (const auto& l : m.layers) {
    ATTRACE_CHECK(l.d_in > 0 && l.d_out > 0, InputError, dir + ": layer '" + l.name + "' has a size <= 0");
    if (l.conv) {
      const auto& g = l.geometry;
      ATTRACE_CHECK(g.c_in > 0 && g.kh > 0 && g.kw > 0 && g.sh > 0 && g.sw > 0 && g.dh > 0 && g.dw > 0 && g.ph >= 0 && g.pw >= 0 &&
                        g.c_in * g.kh * g.kw + (l.bias ? 1 : 0) == l.d_in,
                    InputError, dir + ": Conv2d layer '" + l.name + "' has an inconsistent geometry");
    }
  }
  ATTRACE_CHECK(settings.projection == Projection::kronecker || settings.projection == Projection::none, InputError,
                dir + ": the recorder projects with kronecker or records exact gradients (projection none)");
  if (settings.projection == Projection::none) {
    ATTRACE_CHECK(settings.dtype == connectors::FeatureDtype::f32, InputError,
                  dir + ": exact recording (projection none) stores float32 features (dtype f32)");
    for (const auto& l : m.layers)
      ATTRACE_CHECK(!l.conv, InputError,
                    dir + ": exact recording (projection none) takes Linear layers only; '" + l.name +
                        "' is a Conv2d layer: record with projection kronecker");
  }
  m.width = width_of(m.layers, settings);
  m.sizes = sizes_of(m.layers, settings);
  m.n_params = total_params(m.params);
  std::error_code ec;
  fs::create_directories(dir, ec);
  ATTRACE_CHECK(fs::is_directory(dir, ec), InputError, dir + ": cannot create the recording directory");
  const std::string lock = (fs::path(dir) / ".lock").string();
  m.lock_fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  ATTRACE_CHECK(m.lock_fd >= 0, RuntimeFailure, lock + ": cannot open: " + std::strerror(errno));
  if (::flock(m.lock_fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(m.lock_fd);
    throw InputError(dir + ": another recorder is writing this recording");
  }
  try {
    open_locked(dir, settings);
  } catch (...) {
    ::close(m.lock_fd);  // the destructor does not run for a constructor that throws
    throw;
  }
  // queue_steps = 0: the pool's size is chosen at the first recorded step, from its bytes.
  m.pool_cap = settings.queue_steps;
  m.wake_at = std::max<int64_t>(1, settings.queue_steps / 2);
  m.syncer = std::thread([&m] { m.run_sync(); });
  m.worker = std::thread([&m, first = m.submitted] { m.run(first); });
}

void RecordingWriter::open_locked(const std::string& dir, const RecorderSettings& settings) {
  auto& m = *impl_;
  std::error_code ec;
  // Left-over temporary files of a killed writer hold no committed step.
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp-") != std::string::npos) fs::remove(e.path(), ec);
  const std::string json_path = (fs::path(dir) / "recording.json").string();
  const nlohmann::json want = recording_json(settings, m.layers, m.params, m.width);
  if (fs::exists(json_path)) {
    const Parsed have = parse_recording_json(json_path);
    const nlohmann::json stored = recording_json(have.settings, have.layers, have.params, have.width);
    for (const auto& [key, value] : want.items())
      ATTRACE_CHECK(stored.at(key) == value, InputError,
                    json_path + ": the recording's '" + key + "' (" + stored.at(key).dump() + ") differs from this recorder's (" +
                        value.dump() + "); record into another directory");
    const auto idx = index_segments(dir, m.layers, m.sizes, m.width, m.n_params, settings.window);
    m.durable = static_cast<int64_t>(idx.size());
    m.submitted = m.durable;
    m.last_step = idx.empty() ? -1 : idx.back().step;
    while (fs::exists(fs::path(dir) / segment_name(m.segments))) ++m.segments;
    spdlog::info("recording '{}': resuming after {} recorded steps (last step {})", dir, m.durable, m.last_step);
  } else {
    connectors::write_file_atomic((fs::path(dir) / "template.pt").string(), read_file(m.template_file));
    connectors::write_file_atomic(json_path, want.dump(2) + "\n");
    connectors::fsync_path(dir);
  }
}

void RecordingWriter::close() {
  auto& m = *impl_;
  if (m.closed) return;
  m.closed = true;
  m.barrier(Job::Kind::stop);  // the open segment is made durable first
  m.worker.join();
  m.syncer.join();
  {
    std::lock_guard<std::mutex> lk(m.mu);
    // A stop marker finishes the segment like a flush; its error (if any) is the last word.
    if (m.error) {
      if (m.lock_fd >= 0) ::close(m.lock_fd);
      m.lock_fd = -1;
      std::rethrow_exception(m.error);
    }
  }
  if (m.lock_fd >= 0) ::close(m.lock_fd);
  m.lock_fd = -1;
}

RecordingWriter::~RecordingWriter() {
  try {
    close();
  } catch (const std::exception& e) {
    spdlog::error("recording '{}': {} recorded steps are durable; the background writer failed: {}", impl_->dir, durable(),
                  e.what());
  }
}

bool RecordingWriter::wants(int64_t step) const {
  const auto& s = impl_->settings;
  if (step <= impl_->last_step || step < 0) return false;
  if (!s.steps.empty()) return std::binary_search(s.steps.begin(), s.steps.end(), step);
  return step % s.every == 0;
}

void RecordingWriter::record(int64_t step, double lr, const int64_t* ids, int64_t batch, const std::vector<LayerBatch>& layers,
                             const std::vector<const float*>& parameters) {
  auto& m = *impl_;
  const auto t0 = Clock::now();
  // Messages are built only when a check fails (record() runs on the training thread).
  const auto what = [&] { return m.dir + ": step " + std::to_string(step); };
  ATTRACE_CHECK(!m.closed, InputError, what() + ": the recording is closed");
  {
    std::lock_guard<std::mutex> lk(m.mu);
    m.rethrow_locked();
  }
  ATTRACE_CHECK(step > m.last_step, InputError,
                what() + ": steps must increase (last recorded step " + std::to_string(m.last_step) + ")");
  ATTRACE_CHECK(std::isfinite(lr) && lr >= 0, InputError, what() + ": lr " + std::to_string(lr) + " is not finite and >= 0");
  ATTRACE_CHECK(batch > 0, InputError, what() + ": empty batch");
  ATTRACE_CHECK(layers.size() == m.layers.size(), InputError,
                what() + ": " + std::to_string(layers.size()) + " layers captured, " + std::to_string(m.layers.size()) + " recorded");
  ATTRACE_CHECK(parameters.size() == m.params.size(), InputError,
                what() + ": " + std::to_string(parameters.size()) + " parameter tensors given, " + std::to_string(m.params.size()) +
                    " recorded");
  m.sorted.assign(ids, ids + batch);
  std::sort(m.sorted.begin(), m.sorted.end());
  for (int64_t i = 0; i < batch; ++i) {
    const int64_t id = m.sorted[static_cast<size_t>(i)];
    ATTRACE_CHECK(id >= 0, InputError, what() + ": example id " + std::to_string(id) + " < 0");
    ATTRACE_CHECK(i == 0 || id != m.sorted[static_cast<size_t>(i - 1)], InputError,
                  what() + ": example id " + std::to_string(id) + " appears twice in the batch");
  }
  std::vector<std::pair<int64_t, int64_t>> sizes;
  for (size_t l = 0; l < m.layers.size(); ++l) sizes.push_back(capture_sizes(m.layers[l], layers[l], batch, what, m.settings));
  for (size_t p = 0; p < parameters.size(); ++p)
    ATTRACE_CHECK(parameters[p] != nullptr, InputError, what() + ": parameter '" + m.params[p].name + "' not given");

  // A job from the pool: waits while queue_steps recorded steps are still being written.
  std::unique_ptr<Job> j;
  double waited = 0;
  {
    const auto w0 = Clock::now();
    std::unique_lock<std::mutex> lk(m.mu);
    if (m.pool_cap == 0) {
      // Automatic: as many queued steps as kQueueBytes of this step's size hold, 4 to 64; the
      // writer is woken at half of them, so a cross-core wake-up is paid every few dozen small
      // steps instead of every step or two (bench_recorder: the wake-up was most of the
      // training thread's cost of recording the demo MLP).
      int64_t bytes = batch * 8 + (m.submitted % m.settings.window == 0 ? m.n_params * 4 : 0);
      for (const auto& sz : sizes) bytes += 4 * (sz.first + sz.second);
      m.pool_cap = std::clamp<int64_t>(kQueueBytes / std::max<int64_t>(bytes, 1), 4, 64);
      m.wake_at = m.pool_cap / 2;
    }
    m.cv_done.wait(lk, [&] { return !m.free_jobs.empty() || m.jobs_made < m.pool_cap || m.error; });
    m.rethrow_locked();
    if (!m.free_jobs.empty()) {
      j = std::move(m.free_jobs.back());
      m.free_jobs.pop_back();
    } else {
      j = std::make_unique<Job>();
      ++m.jobs_made;
    }
    waited = seconds(w0, Clock::now());
  }
  j->kind = Job::Kind::step;
  j->index = m.submitted / m.settings.window;
  j->seq = m.submitted;
  j->step = step;
  j->lr = lr;
  j->batch = batch;
  j->ids.assign(ids, ids + batch);
  j->x.resize(m.layers.size());
  j->d.resize(m.layers.size());
  j->captured = layers;
  for (size_t l = 0; l < m.layers.size(); ++l) {
    j->x[l].assign(layers[l].x, layers[l].x + sizes[l].first);
    j->d[l].assign(layers[l].delta, layers[l].delta + sizes[l].second);
    j->captured[l].x = j->x[l].data();
    j->captured[l].delta = j->d[l].data();
  }
  // The parameters only at a window's first step (its checkpoint); the other steps use those.
  j->params.resize(m.submitted % m.settings.window == 0 ? static_cast<size_t>(m.n_params) : 0);
  int64_t at = 0;
  for (size_t p = 0; p < parameters.size() && !j->params.empty(); ++p) {
    const int64_t n = m.params[p].numel();
    std::memcpy(j->params.data() + at, parameters[p], static_cast<size_t>(n) * 4);
    at += n;
  }
  ++m.submitted;
  m.last_step = step;
  bool wake;
  {
    std::lock_guard<std::mutex> lk(m.mu);
    m.queue.push_back(std::move(j));
    wake = m.idle && static_cast<int64_t>(m.queue.size()) >= m.wake_at;
    m.timings.wait += waited;
    m.timings.capture += seconds(t0, Clock::now()) - waited;
  }
  if (wake) m.cv_work.notify_one();
}

void RecordingWriter::flush() {
  auto& m = *impl_;
  ATTRACE_CHECK(!m.closed, InputError, m.dir + ": the recording is closed");
  m.barrier(Job::Kind::flush);
  std::lock_guard<std::mutex> lk(m.mu);
  m.rethrow_locked();
}

int64_t RecordingWriter::recorded() const { return impl_->submitted; }
int64_t RecordingWriter::durable() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  return impl_->durable;
}
int64_t RecordingWriter::last_step() const { return impl_->last_step; }
int64_t RecordingWriter::width() const { return impl_->width; }
const std::string& RecordingWriter::dir() const { return impl_->dir; }
RecorderTimings RecordingWriter::timings() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  return impl_->timings;
}

struct RecordingReader::Impl {
  std::string dir;
  Parsed p;
  Sizes sizes;
  int64_t n_params = 0;
  std::vector<StepIndex> idx;
};

RecordingReader::RecordingReader(const std::string& dir) : impl_(std::make_unique<Impl>()) {
  impl_->dir = dir;
  impl_->p = parse_recording_json((fs::path(dir) / "recording.json").string());
  impl_->n_params = total_params(impl_->p.params);
  impl_->sizes = sizes_of(impl_->p.layers, impl_->p.settings);
  const int64_t w = width_of(impl_->p.layers, impl_->p.settings);
  ATTRACE_CHECK(w == impl_->p.width, InputError,
                dir + "/recording.json: width " + std::to_string(impl_->p.width) + " but the layers make " + std::to_string(w));
  impl_->idx = index_segments(dir, impl_->p.layers, impl_->sizes, impl_->p.width, impl_->n_params, impl_->p.settings.window);
}

RecordingReader::~RecordingReader() = default;
size_t RecordingReader::steps() const { return impl_->idx.size(); }
const std::vector<RecordedLayer>& RecordingReader::layers() const { return impl_->p.layers; }
const std::vector<RecordedParameter>& RecordingReader::parameters() const { return impl_->p.params; }
const RecorderSettings& RecordingReader::settings() const { return impl_->p.settings; }
int64_t RecordingReader::width() const { return impl_->p.width; }
std::string RecordingReader::template_file() const { return (fs::path(impl_->dir) / "template.pt").string(); }

RecordedStep RecordingReader::step(size_t c, bool rows) const {
  const auto& e = impl_->idx.at(c);
  const int64_t width = impl_->p.width, b = e.batch;
  RecordedStep s;
  s.step = e.step;
  s.lr = e.lr;
  s.ids.resize(static_cast<size_t>(b));
  const int64_t n_params = e.has_params ? impl_->n_params : 0;  // only a window's first step holds them
  s.parameters.resize(static_cast<size_t>(n_params));
  std::ifstream in(e.file, std::ios::binary);
  in.seekg(e.offset + 24);
  in.read(reinterpret_cast<char*>(s.ids.data()), static_cast<std::streamsize>(s.ids.size() * 8));
  if (!rows) {
    // The parameters end the step: its last n_params floats before the next step (or end magic).
    const int64_t end = e.offset + (e.modes.empty() ? 24 + b * 8 + b * width * 4 + n_params * 4
                                                    : step_bytes(b, impl_->sizes, e.modes, n_params, e.raw_floats));
    in.seekg(static_cast<std::streamoff>(end - n_params * 4));
    in.read(reinterpret_cast<char*>(s.parameters.data()), static_cast<std::streamsize>(s.parameters.size() * 4));
    ATTRACE_CHECK(in.good(), InputError, e.file + ": cannot read step " + std::to_string(e.step));
    return s;
  }
  s.rows.resize(static_cast<size_t>(b * width));
  if (e.modes.empty()) {  // format 1: full rows
    in.read(reinterpret_cast<char*>(s.rows.data()), static_cast<std::streamsize>(s.rows.size() * 4));
  } else if (!e.raw.empty()) {
    // Deferred projection: the captured tensors, projected now as the writer would have (the
    // same function, the checkpoint's matrices), on every core (threads change no bit).
    in.seekg(static_cast<std::streamoff>(e.offset + 24 + b * 8 + static_cast<int64_t>(e.modes.size()) * 8));
    const auto& layers = impl_->p.layers;
    std::vector<std::vector<float>> x(layers.size()), d(layers.size());
    std::vector<LayerBatch> captured = e.raw;
    for (size_t l = 0; l < layers.size(); ++l) {
      const auto [nx, nd] = capture_floats(layers[l], captured[l], b);
      x[l].resize(static_cast<size_t>(nx));
      d[l].resize(static_cast<size_t>(nd));
      in.seekg(kRawHead * 8, std::ios::cur);
      in.read(reinterpret_cast<char*>(x[l].data()), static_cast<std::streamsize>(nx * 4));
      in.read(reinterpret_cast<char*>(d[l].data()), static_cast<std::streamsize>(nd * 4));
      captured[l].x = x[l].data();
      captured[l].delta = d[l].data();
    }
    ATTRACE_CHECK(in.good(), InputError, e.file + ": cannot read step " + std::to_string(e.step));
    RecorderSettings rs = impl_->p.settings;
    rs.threads = std::max(rs.threads, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
    recorded_rows(layers, rs, c / static_cast<size_t>(rs.window), e.lr, b, captured, s.rows.data());
    const int64_t bad = first_non_finite(s.rows.data(), b * width);
    if (bad < b * width) {
      const auto plan = plan_recorded_projection(layers, rs.k, c / static_cast<size_t>(rs.window));
      int64_t col = bad % width, l = 0;
      while (col >= plan[static_cast<size_t>(l)].k_in * plan[static_cast<size_t>(l)].k_out) {
        col -= plan[static_cast<size_t>(l)].k_in * plan[static_cast<size_t>(l)].k_out;
        ++l;
      }
      throw NumericError(e.file + ": step " + std::to_string(e.step) + ": non-finite feature for example id " +
                         std::to_string(s.ids[static_cast<size_t>(bad / width)]) + " in layer '" + layers[static_cast<size_t>(l)].name +
                         "' (deferred projection)");
    }
  } else if (impl_->p.settings.projection == Projection::none) {
    // Exact: the factors of every layer, laid out as the featurizer lays out exact rows.
    in.seekg(static_cast<std::streamoff>(e.offset + 24 + b * 8 + static_cast<int64_t>(e.modes.size()) * 8));
    const auto& layers = impl_->p.layers;
    std::vector<std::vector<float>> blocks(layers.size());
    std::vector<const float*> xs, ds;
    std::vector<int64_t> lx, ld;
    for (size_t l = 0; l < layers.size(); ++l) {
      blocks[l].resize(static_cast<size_t>(b * (layers[l].d_in + layers[l].d_out)));
      in.read(reinterpret_cast<char*>(blocks[l].data()), static_cast<std::streamsize>(blocks[l].size() * 4));
      xs.push_back(blocks[l].data());
      ds.push_back(blocks[l].data() + b * layers[l].d_in);
      lx.push_back(layers[l].d_in);
      ld.push_back(layers[l].d_out);
    }
    if (in.good()) exact_rows(layers, recorded_exact_layout(layers, impl_->p.settings.factored), b, xs, lx, ds, ld, s.rows.data());
  } else {
    in.seekg(static_cast<std::streamoff>(e.offset + 24 + b * 8 + static_cast<int64_t>(e.modes.size()) * 8));
    const auto root_lr = static_cast<float>(std::sqrt(e.lr));
    std::vector<float> block;
    int64_t at = 0;
    for (size_t l = 0; l < impl_->sizes.size(); ++l) {
      const auto [ki, ko] = impl_->sizes[l];
      if (e.modes[l] == 1) {
        // The row is the outer product of the stored factors, times float(sqrt(lr)), rounded:
        // the arithmetic the projection thread would have done (one position, from 0.0f).
        block.resize(static_cast<size_t>(b * (ki + ko)));
        in.read(reinterpret_cast<char*>(block.data()), static_cast<std::streamsize>(block.size() * 4));
        for (int64_t r = 0; r < b; ++r) {
          const float* xp = block.data() + r * ki;
          const float* dp = block.data() + b * ki + r * ko;
          float* o = s.rows.data() + r * width + at;
          for (int64_t a = 0; a < ko; ++a)
            for (int64_t cc = 0; cc < ki; ++cc) o[a * ki + cc] = (0.0f + dp[a] * xp[cc]) * root_lr;
          round_rows(o, ki * ko, impl_->p.settings.dtype);
        }
      } else {
        block.resize(static_cast<size_t>(b * ki * ko));
        in.read(reinterpret_cast<char*>(block.data()), static_cast<std::streamsize>(block.size() * 4));
        for (int64_t r = 0; r < b; ++r)
          std::memcpy(s.rows.data() + r * width + at, block.data() + r * ki * ko, static_cast<size_t>(ki * ko) * 4);
      }
      at += ki * ko;
    }
  }
  in.read(reinterpret_cast<char*>(s.parameters.data()), static_cast<std::streamsize>(s.parameters.size() * 4));
  ATTRACE_CHECK(in.good(), InputError, e.file + ": cannot read step " + std::to_string(e.step));
  return s;
}

}  // namespace attrace::engine
