// The torch-free half of the recorder (docs/recorder.md): the projection of captured factors
// into feature rows (the featurizer's computation, step by step), and the recording directory
// (recording.json, template.pt, atomically written segments of recorded steps).
#include <attrace/connectors/fs.hpp>
#include <attrace/engine/recorder.hpp>
#include <attrace/engine/report.hpp>
#include <attrace/error.hpp>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <sys/file.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace attrace::engine {
namespace {

namespace fs = std::filesystem;

constexpr char kSegmentMagic[8] = {'A', 'T', 'R', 'S', 'E', 'G', '1', '\0'};
constexpr char kSegmentEnd[8] = {'A', 'T', 'R', 'E', 'N', 'D', '1', '\0'};
constexpr const char* kFormat = "attrace.recording/1";
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

// Bytes of one recorded step in a segment.
int64_t step_bytes(int64_t batch, int64_t width, int64_t params) {
  return 8 + 8 + 8 + batch * 8 + batch * width * 4 + params * 4;
}

// Everything in recording.json that must match on resume (settings that change no feature,
// flush_steps and flush_bytes, are left out).
nlohmann::json recording_json(const RecorderSettings& s, const std::vector<RecordedLayer>& layers,
                              const std::vector<RecordedParameter>& params, int64_t width) {
  nlohmann::json jl = nlohmann::json::array(), jp = nlohmann::json::array();
  for (const auto& l : layers) jl.push_back({{"name", l.name}, {"d_in", l.d_in}, {"d_out", l.d_out}, {"bias", l.bias}});
  for (const auto& p : params) jp.push_back({{"name", p.name}, {"shape", p.shape}});
  return {{"format", kFormat},
          {"semantics",
           "recorded step c = checkpoint c of the run: for each example of that step's batch, every Linear layer's "
           "Kronecker-projected per-example gradient (P_out (x) P_in, the featurizer's plan and streams for checkpoint c) "
           "times sqrt(lr_c), rounded to dtype; the finalized store holds zero rows for examples not in the batch, "
           "weight 1, so score = sum over recorded steps that saw i of lr_t <P g_t(i), P g_t(q)>"},
          {"layout", "segment_NNNNNN.bin: magic, first index, count, width, parameter count (int64); per step: step "
                     "(int64), lr (float64), batch (int64), ids (int64 x batch), rows (float32 x batch x width), "
                     "parameters (float32); end magic; little-endian"},
          {"projection",
           {{"kind", "kronecker"}, {"k", s.k}, {"seed", std::to_string(s.seed)}, {"distribution", distribution_name(s.distribution)}}},
          {"features", {{"dtype", connectors::to_string(s.dtype)}}},
          {"schedule", {{"every", s.every}, {"steps", s.steps}}},
          {"layers", jl},
          {"parameters", jp},
          {"width", width},
          {"template", "template.pt"}};
}

struct Parsed {
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
    ATTRACE_CHECK(j.at("format").get<std::string>() == kFormat, InputError,
                  path + ": format '" + j.at("format").get<std::string>() + "' is not " + kFormat);
    Parsed p;
    p.settings.k = j.at("projection").at("k").get<int64_t>();
    p.settings.seed = std::stoull(j.at("projection").at("seed").get<std::string>());
    p.settings.distribution = parse_distribution(j.at("projection").at("distribution").get<std::string>(), path);
    p.settings.dtype = connectors::parse_feature_dtype(j.at("features").at("dtype").get<std::string>(), path);
    p.settings.every = j.at("schedule").at("every").get<int64_t>();
    p.settings.steps = j.at("schedule").at("steps").get<std::vector<int64_t>>();
    for (const auto& l : j.at("layers"))
      p.layers.push_back({l.at("name").get<std::string>(), l.at("d_in").get<int64_t>(), l.at("d_out").get<int64_t>(),
                          l.at("bias").get<bool>()});
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

// Where each durable step lies: its segment file, byte offset and batch size.
struct StepIndex {
  std::string file;
  int64_t offset = 0, batch = 0, step = 0;
  double lr = 0;
};

// Reads the segments segment_000000.bin, ... in order (stopping at the first missing one) and
// checks each one's framing and size: a segment exists only complete (rename after fsync), so
// a mismatch means damage, never a crash, and is refused.
std::vector<StepIndex> index_segments(const std::string& dir, int64_t width, int64_t params) {
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
    ATTRACE_CHECK(in.good() && std::memcmp(magic, kSegmentMagic, 8) == 0, InputError, path + ": not a recording segment");
    ATTRACE_CHECK(head[0] == static_cast<int64_t>(idx.size()), InputError,
                  path + ": first step index " + std::to_string(head[0]) + ", expected " + std::to_string(idx.size()));
    ATTRACE_CHECK(head[2] == width && head[3] == params, InputError,
                  path + ": rows of " + std::to_string(head[2]) + " columns and " + std::to_string(head[3]) +
                      " parameters, recording.json says " + std::to_string(width) + " and " + std::to_string(params));
    int64_t at = kHeaderBytes;
    for (int64_t k = 0; k < head[1]; ++k) {
      ATTRACE_CHECK(at + 24 <= size, InputError, path + ": truncated at step " + std::to_string(k));
      int64_t step = 0, batch = 0;
      double lr = 0;
      in.seekg(at);
      in.read(reinterpret_cast<char*>(&step), 8);
      in.read(reinterpret_cast<char*>(&lr), 8);
      in.read(reinterpret_cast<char*>(&batch), 8);
      ATTRACE_CHECK(in.good() && batch > 0 && batch <= (int64_t{1} << 32), InputError,
                    path + ": step " + std::to_string(k) + " has a batch of " + std::to_string(batch));
      ATTRACE_CHECK(idx.empty() || step > idx.back().step, InputError, path + ": steps do not increase");
      idx.push_back({path, at, batch, step, lr});
      at += step_bytes(batch, width, params);
    }
    char end[8] = {};
    in.seekg(at);
    in.read(end, 8);
    ATTRACE_CHECK(in.good() && std::memcmp(end, kSegmentEnd, 8) == 0 && at + 8 == size, InputError,
                  path + ": damaged segment (size " + std::to_string(size) + ", expected " + std::to_string(at + 8) + ")");
  }
  return idx;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ATTRACE_CHECK(in.good(), InputError, path + ": cannot read");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

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

void recorded_rows(kernels::Backend& backend, const std::vector<KroneckerUse>& plan, const RecorderSettings& settings,
                   double lr, int64_t batch, const std::vector<LayerBatch>& layers, float* out) {
  ATTRACE_CHECK(layers.size() == plan.size(), InputError,
                "recorder: " + std::to_string(layers.size()) + " layers captured, " + std::to_string(plan.size()) + " planned");
  const int64_t width = recorded_width(plan);
  int64_t at = 0;
  for (size_t l = 0; l < plan.size(); ++l) {
    const auto& u = plan[l];
    const auto& lb = layers[l];
    // The featurizer's projection of one layer (featurize.cpp, project_rows), column block by block.
    const auto kind_for = [&](int64_t kk, int64_t d) { return kk == d ? kernels::ProjectionKind::identity : settings.distribution; };
    const kernels::ProjectionSpec in{settings.seed, u.stream_in, u.k_in, kind_for(u.k_in, u.d_in)};
    const kernels::ProjectionSpec ou{settings.seed, u.stream_out, u.k_out, kind_for(u.k_out, u.d_out)};
    backend.project_kronecker(kernels::view(lb.x, batch * lb.positions, u.d_in), kernels::view(lb.delta, batch * lb.positions, u.d_out),
                              lb.positions, in, ou, kernels::HostMatrixMut<float>{out + at, batch, u.k_in * u.k_out, width});
    at += u.k_in * u.k_out;
  }
  const auto root_lr = static_cast<float>(std::sqrt(lr));
  for (int64_t i = 0; i < batch * width; ++i) out[i] *= root_lr;
  if (settings.dtype != connectors::FeatureDtype::f32)
    for (int64_t i = 0; i < batch * width; ++i) out[i] = connectors::round_to_dtype(out[i], settings.dtype);
}

struct RecordingWriter::Impl {
  std::string dir, template_file;
  RecorderSettings settings;
  std::vector<RecordedLayer> layers;
  std::vector<RecordedParameter> params;
  int64_t width = 0, n_params = 0;
  int lock_fd = -1;
  std::unique_ptr<kernels::Backend> backend;
  int64_t durable = 0, pending_steps = 0, last_step = -1;
  size_t segments = 0;
  std::string pending;  // recorded steps not yet written, in segment layout
  std::vector<float> rows;
  std::vector<int64_t> sorted;
  RecorderTimings timings;

  void write_segment() {
    if (pending_steps == 0) return;
    const auto t0 = std::chrono::steady_clock::now();
    std::string seg;
    seg.reserve(pending.size() + kHeaderBytes + 8);
    seg.append(kSegmentMagic, 8);
    const int64_t head[4] = {durable, pending_steps, width, n_params};
    seg.append(reinterpret_cast<const char*>(head), sizeof head);
    seg += pending;
    seg.append(kSegmentEnd, 8);
    const std::string path = (fs::path(dir) / segment_name(segments)).string();
    connectors::write_file_atomic(path, seg);
    connectors::fsync_path(dir);  // the rename itself is durable before the steps count as written
    ++segments;
    durable += pending_steps;
    pending_steps = 0;
    pending.clear();
    timings.write += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
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
  ATTRACE_CHECK(!m.layers.empty(), InputError, dir + ": the model has no Linear layer to record");
  ATTRACE_CHECK(settings.every >= 1, InputError, dir + ": record every " + std::to_string(settings.every) + " steps (must be >= 1)");
  for (size_t i = 1; i < settings.steps.size(); ++i)
    ATTRACE_CHECK(settings.steps[i] > settings.steps[i - 1], InputError, dir + ": the steps to record must increase");
  for (const auto& l : m.layers)
    ATTRACE_CHECK(l.d_in > 0 && l.d_out > 0, InputError, dir + ": layer '" + l.name + "' has a size <= 0");
  m.width = recorded_width(plan_recorded_projection(m.layers, settings.k, 0));
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
  m.backend = kernels::make_cpu_backend(std::max(1, settings.threads));
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
    const auto idx = index_segments(dir, m.width, m.n_params);
    m.durable = static_cast<int64_t>(idx.size());
    m.last_step = idx.empty() ? -1 : idx.back().step;
    while (fs::exists(fs::path(dir) / segment_name(m.segments))) ++m.segments;
    spdlog::info("recording '{}': resuming after {} recorded steps (last step {})", dir, m.durable, m.last_step);
  } else {
    connectors::write_file_atomic((fs::path(dir) / "template.pt").string(), read_file(m.template_file));
    connectors::write_file_atomic(json_path, want.dump(2) + "\n");
    connectors::fsync_path(dir);
  }
}

RecordingWriter::~RecordingWriter() {
  try {
    impl_->write_segment();
  } catch (const std::exception& e) {
    spdlog::error("recording '{}': the last {} recorded steps were not written: {}", impl_->dir, impl_->pending_steps, e.what());
  }
  if (impl_->lock_fd >= 0) ::close(impl_->lock_fd);
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
  const std::string what = m.dir + ": step " + std::to_string(step);
  ATTRACE_CHECK(step > m.last_step, InputError,
                what + ": steps must increase (last recorded step " + std::to_string(m.last_step) + ")");
  ATTRACE_CHECK(std::isfinite(lr) && lr >= 0, InputError, what + ": lr " + std::to_string(lr) + " is not finite and >= 0");
  ATTRACE_CHECK(batch > 0, InputError, what + ": empty batch");
  ATTRACE_CHECK(parameters.size() == m.params.size(), InputError,
                what + ": " + std::to_string(parameters.size()) + " parameter tensors given, " + std::to_string(m.params.size()) +
                    " recorded");
  m.sorted.assign(ids, ids + batch);
  std::sort(m.sorted.begin(), m.sorted.end());
  for (int64_t i = 0; i < batch; ++i) {
    ATTRACE_CHECK(m.sorted[static_cast<size_t>(i)] >= 0, InputError, what + ": example id " + std::to_string(m.sorted[static_cast<size_t>(i)]) + " < 0");
    ATTRACE_CHECK(i == 0 || m.sorted[static_cast<size_t>(i)] != m.sorted[static_cast<size_t>(i - 1)], InputError,
                  what + ": example id " + std::to_string(m.sorted[static_cast<size_t>(i)]) + " appears twice in the batch");
  }
  const auto t0 = std::chrono::steady_clock::now();
  const auto plan = plan_recorded_projection(m.layers, m.settings.k, static_cast<size_t>(m.durable + m.pending_steps));
  m.rows.resize(static_cast<size_t>(batch * m.width));
  recorded_rows(*m.backend, plan, m.settings, lr, batch, layers, m.rows.data());
  for (int64_t i = 0; i < batch * m.width; ++i)
    ATTRACE_CHECK(std::isfinite(m.rows[static_cast<size_t>(i)]), NumericError,
                  what + ": non-finite feature for example id " + std::to_string(ids[i / m.width]));
  const auto t1 = std::chrono::steady_clock::now();
  m.timings.project += std::chrono::duration<double>(t1 - t0).count();
  const auto put = [&](const void* p, size_t n) { m.pending.append(static_cast<const char*>(p), n); };
  put(&step, 8);
  put(&lr, 8);
  put(&batch, 8);
  put(ids, static_cast<size_t>(batch) * 8);
  put(m.rows.data(), m.rows.size() * 4);
  for (size_t p = 0; p < m.params.size(); ++p) put(parameters[p], static_cast<size_t>(m.params[p].numel()) * 4);
  ++m.pending_steps;
  m.last_step = step;
  m.timings.write += std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  if (m.pending_steps >= m.settings.flush_steps || static_cast<int64_t>(m.pending.size()) >= m.settings.flush_bytes)
    m.write_segment();
}

void RecordingWriter::flush() { impl_->write_segment(); }
int64_t RecordingWriter::recorded() const { return impl_->durable + impl_->pending_steps; }
int64_t RecordingWriter::durable() const { return impl_->durable; }
int64_t RecordingWriter::last_step() const { return impl_->last_step; }
int64_t RecordingWriter::width() const { return impl_->width; }
const std::string& RecordingWriter::dir() const { return impl_->dir; }
const RecorderTimings& RecordingWriter::timings() const { return impl_->timings; }

struct RecordingReader::Impl {
  std::string dir;
  Parsed p;
  int64_t n_params = 0;
  std::vector<StepIndex> idx;
};

RecordingReader::RecordingReader(const std::string& dir) : impl_(std::make_unique<Impl>()) {
  impl_->dir = dir;
  impl_->p = parse_recording_json((fs::path(dir) / "recording.json").string());
  impl_->n_params = total_params(impl_->p.params);
  const int64_t w = recorded_width(plan_recorded_projection(impl_->p.layers, impl_->p.settings.k, 0));
  ATTRACE_CHECK(w == impl_->p.width, InputError,
                dir + "/recording.json: width " + std::to_string(impl_->p.width) + " but the layers make " + std::to_string(w));
  impl_->idx = index_segments(dir, impl_->p.width, impl_->n_params);
}

RecordingReader::~RecordingReader() = default;
size_t RecordingReader::steps() const { return impl_->idx.size(); }
const std::vector<RecordedLayer>& RecordingReader::layers() const { return impl_->p.layers; }
const std::vector<RecordedParameter>& RecordingReader::parameters() const { return impl_->p.params; }
const RecorderSettings& RecordingReader::settings() const { return impl_->p.settings; }
int64_t RecordingReader::width() const { return impl_->p.width; }
std::string RecordingReader::template_file() const { return (fs::path(impl_->dir) / "template.pt").string(); }

RecordedStep RecordingReader::step(size_t c) const {
  const auto& e = impl_->idx.at(c);
  RecordedStep s;
  s.step = e.step;
  s.lr = e.lr;
  s.ids.resize(static_cast<size_t>(e.batch));
  s.rows.resize(static_cast<size_t>(e.batch * impl_->p.width));
  s.parameters.resize(static_cast<size_t>(impl_->n_params));
  std::ifstream in(e.file, std::ios::binary);
  in.seekg(e.offset + 24);
  in.read(reinterpret_cast<char*>(s.ids.data()), static_cast<std::streamsize>(s.ids.size() * 8));
  in.read(reinterpret_cast<char*>(s.rows.data()), static_cast<std::streamsize>(s.rows.size() * 4));
  in.read(reinterpret_cast<char*>(s.parameters.data()), static_cast<std::streamsize>(s.parameters.size() * 4));
  ATTRACE_CHECK(in.good(), InputError, e.file + ": cannot read step " + std::to_string(e.step));
  return s;
}

}  // namespace attrace::engine
