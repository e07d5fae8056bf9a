// _attrace: the C++ half of the `attrace` Python module (docs/recorder.md). It takes numpy
// buffers only (layer inputs, output gradients, parameters), so no torch object crosses the
// boundary; the hooks on nn.Linear live in attrace/__init__.py.
#include <attrace/connectors/feature_store.hpp>
#include <attrace/engine/recorder.hpp>
#include <attrace/error.hpp>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <tuple>
#include <vector>

namespace py = pybind11;
namespace eng = attrace::engine;

namespace {

using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
using I64 = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

attrace::kernels::ProjectionKind distribution_of(const std::string& s) {
  if (s == "rademacher") return attrace::kernels::ProjectionKind::rademacher;
  if (s == "gaussian") return attrace::kernels::ProjectionKind::gaussian;
  throw attrace::InputError("distribution '" + s + "' is not rademacher or gaussian");
}

eng::RecorderSettings settings_of(int64_t k, uint64_t seed, const std::string& distribution, const std::string& dtype,
                                  int64_t every, const std::vector<int64_t>& steps, int64_t flush_steps, int threads = 1,
                                  int64_t queue_steps = 0, const std::string& projection = "kronecker",
                                  const std::string& factored = "auto", const std::string& defer = "auto",
                                  int64_t window = 1) {
  eng::RecorderSettings s;
  s.window = window;
  ATTRACE_CHECK(defer == "auto" || defer == "always" || defer == "never", attrace::InputError,
                "defer '" + defer + "' is not auto, always or never");
  s.defer = defer == "always" ? eng::Deferral::always : defer == "never" ? eng::Deferral::never : eng::Deferral::automatic;
  ATTRACE_CHECK(projection == "kronecker" || projection == "none", attrace::InputError,
                "projection '" + projection + "' is not kronecker or none");
  ATTRACE_CHECK(factored == "auto" || factored == "never" || factored == "always", attrace::InputError,
                "factored '" + factored + "' is not auto, never or always");
  s.projection = projection == "none" ? eng::Projection::none : eng::Projection::kronecker;
  s.factored = factored == "never" ? eng::Factoring::never : factored == "always" ? eng::Factoring::always : eng::Factoring::automatic;
  s.threads = threads;
  s.k = k;
  s.seed = seed;
  s.distribution = distribution_of(distribution);
  s.dtype = attrace::connectors::parse_feature_dtype(dtype, "dtype");
  s.every = every;
  s.steps = steps;
  s.flush_steps = flush_steps;
  s.queue_steps = queue_steps;
  return s;
}

// A layer from Python: (name, d_in, d_out, bias) for nn.Linear, plus a dict of the geometry
// (c_in, kernel, stride, padding, dilation pairs) for nn.Conv2d.
using LayerSpec = std::tuple<std::string, int64_t, int64_t, bool, py::object>;

std::vector<eng::RecordedLayer> layers_of(const std::vector<LayerSpec>& layers) {
  std::vector<eng::RecordedLayer> out;
  for (const auto& [name, d_in, d_out, bias, conv] : layers) {
    eng::RecordedLayer l{name, d_in, d_out, bias};
    if (!conv.is_none()) {
      const auto d = conv.cast<py::dict>();
      const auto pair = [&](const char* key, int64_t& a, int64_t& b) {
        const auto v = d[key].cast<std::pair<int64_t, int64_t>>();
        a = v.first;
        b = v.second;
      };
      l.conv = true;
      l.geometry.c_in = d["c_in"].cast<int64_t>();
      pair("kernel", l.geometry.kh, l.geometry.kw);
      pair("stride", l.geometry.sh, l.geometry.sw);
      pair("padding", l.geometry.ph, l.geometry.pw);
      pair("dilation", l.geometry.dh, l.geometry.dw);
    }
    out.push_back(l);
  }
  return out;
}

// One layer's capture from numpy arrays. x: Linear inputs ((B T) x n_in, or with the bias
// column when `bias_column`), Conv2d inputs B x C x H x W (4-D) or patches; delta: the output
// gradients as torch holds them. Sizes are checked by the writer against the layer.
eng::LayerBatch layer_batch(const eng::RecordedLayer& l, const F32& x, const F32& d, int64_t batch, bool bias_column, float scale) {
  eng::LayerBatch c;
  c.x = x.data();
  c.delta = d.data();
  c.delta_scale = scale;
  c.x_bias_column = bias_column;
  const std::string what = "layer '" + l.name + "'";
  ATTRACE_CHECK(x.ndim() >= 1 && x.shape(0) > 0 && d.ndim() >= 1, attrace::InputError, what + ": empty inputs or gradients");
  if (l.conv && x.ndim() == 4) {
    ATTRACE_CHECK(x.shape(0) == batch && x.shape(1) == l.geometry.c_in, attrace::InputError,
                  what + ": inputs must be (" + std::to_string(batch) + ", " + std::to_string(l.geometry.c_in) + ", H, W)");
    c.height = x.shape(2);
    c.width = x.shape(3);
    const int64_t ho = eng::ConvGeometry::out_size(c.height, l.geometry.ph, l.geometry.dh, l.geometry.kh, l.geometry.sh);
    const int64_t wo = eng::ConvGeometry::out_size(c.width, l.geometry.pw, l.geometry.dw, l.geometry.kw, l.geometry.sw);
    ATTRACE_CHECK(d.ndim() == 4 && d.shape(0) == batch && d.shape(1) == l.d_out && d.shape(2) == ho && d.shape(3) == wo,
                  attrace::InputError,
                  what + ": output gradients must be (" + std::to_string(batch) + ", " + std::to_string(l.d_out) + ", " +
                      std::to_string(ho) + ", " + std::to_string(wo) + ")");
    return c;
  }
  const int64_t n_in = bias_column ? l.d_in : l.d_in - (l.bias ? 1 : 0);
  const auto xs = x.size();
  ATTRACE_CHECK(xs % (batch * n_in) == 0, attrace::InputError,
                what + ": " + std::to_string(xs) + " input values are not " + std::to_string(batch) + " examples of rows of " +
                    std::to_string(n_in));
  c.positions = xs / (batch * n_in);
  ATTRACE_CHECK(d.size() == batch * c.positions * l.d_out, attrace::InputError,
                what + ": output gradients must hold " + std::to_string(batch * c.positions * l.d_out) + " values, not " +
                    std::to_string(d.size()));
  return c;
}

// A recording writer owned by Python; close() drains the queue, makes every step durable and
// releases the directory lock.
class PyWriter {
 public:
  PyWriter(const std::string& dir, const std::vector<LayerSpec>& layers,
           const std::vector<std::pair<std::string, std::vector<int64_t>>>& params, const std::string& template_file, int64_t k,
           uint64_t seed, const std::string& distribution, const std::string& dtype, int64_t every,
           const std::vector<int64_t>& steps, int64_t flush_steps, int threads, int64_t queue_steps, const std::string& projection,
           const std::string& factored, const std::string& defer, int64_t window)
      : layers_(layers_of(layers)) {
    std::vector<eng::RecordedParameter> ps;
    for (const auto& [name, shape] : params) ps.push_back({name, shape});
    params_ = ps;
    const auto s = settings_of(k, seed, distribution, dtype, every, steps, flush_steps, threads, queue_steps, projection, factored, defer,
                               window);
    py::gil_scoped_release release;
    w_ = std::make_unique<eng::RecordingWriter>(dir, s, layers_, ps, template_file);
  }
  eng::RecordingWriter& w() {
    ATTRACE_CHECK(w_ != nullptr, attrace::InputError, "the recording is closed");
    return *w_;
  }
  // One recorded step: the arrays are copied into the writer's queue before this returns (the
  // GIL is released meanwhile); projection and writing happen on the writer's thread.
  void record(int64_t step, double lr, const I64& ids, const std::vector<F32>& xs, const std::vector<F32>& ds,
              const std::vector<bool>& bias_columns, float scale, const std::vector<F32>& params) {
    const int64_t batch = ids.ndim() == 1 ? ids.shape(0) : -1;
    ATTRACE_CHECK(batch > 0, attrace::InputError, "step " + std::to_string(step) + ": ids must be a non-empty 1-d array");
    ATTRACE_CHECK(xs.size() == layers_.size() && ds.size() == layers_.size() && bias_columns.size() == layers_.size(),
                  attrace::InputError, "step " + std::to_string(step) + ": one input and gradient array per layer expected");
    ATTRACE_CHECK(params.size() == params_.size(), attrace::InputError, "one array per parameter expected");
    std::vector<eng::LayerBatch> lb;
    for (size_t l = 0; l < layers_.size(); ++l) lb.push_back(layer_batch(layers_[l], xs[l], ds[l], batch, bias_columns[l], scale));
    std::vector<const float*> pp;
    for (size_t p = 0; p < params.size(); ++p) {
      ATTRACE_CHECK(params[p].size() == params_[p].numel(), attrace::InputError, "parameter '" + params_[p].name + "' has another size");
      pp.push_back(params[p].data());
    }
    py::gil_scoped_release release;
    w().record(step, lr, ids.data(), batch, lb, pp);
  }
  void flush() {
    auto& w_ref = w();
    py::gil_scoped_release release;
    w_ref.flush();
  }
  void close() {
    if (!w_) return;
    std::unique_ptr<eng::RecordingWriter> w = std::move(w_);
    py::gil_scoped_release release;
    w->close();
  }

 private:
  std::vector<eng::RecordedLayer> layers_;
  std::vector<eng::RecordedParameter> params_;
  std::unique_ptr<eng::RecordingWriter> w_;
};

}  // namespace

PYBIND11_MODULE(_attrace, m) {
  m.doc() = "attrace's recorder and store writer (C++); use the `attrace` package";
  py::register_exception<attrace::InputError>(m, "InputError", PyExc_ValueError);
  py::register_exception<attrace::NumericError>(m, "NumericError", PyExc_ArithmeticError);

  py::class_<PyWriter>(m, "RecordingWriter")
      .def(py::init<const std::string&, const std::vector<LayerSpec>&, const std::vector<std::pair<std::string, std::vector<int64_t>>>&,
                    const std::string&, int64_t, uint64_t, const std::string&, const std::string&, int64_t,
                    const std::vector<int64_t>&, int64_t, int, int64_t, const std::string&, const std::string&, const std::string&, int64_t>(),
           py::arg("dir"), py::arg("layers"), py::arg("parameters"), py::arg("template"), py::arg("k") = 4096,
           py::arg("seed") = 0, py::arg("distribution") = "rademacher", py::arg("dtype") = "f32", py::arg("every") = 1,
           py::arg("steps") = std::vector<int64_t>{}, py::arg("flush_steps") = 64, py::arg("threads") = 1,
           py::arg("queue_steps") = 0, py::arg("projection") = "kronecker", py::arg("factored") = "auto",
           py::arg("defer") = "auto", py::arg("window") = 1)
      .def("wants", [](PyWriter& p, int64_t step) { return p.w().wants(step); })
      .def("record", &PyWriter::record, py::arg("step"), py::arg("lr"), py::arg("ids"), py::arg("inputs"),
           py::arg("output_grads"), py::arg("bias_columns"), py::arg("scale"), py::arg("parameters"))
      .def("flush", &PyWriter::flush)
      .def("close", &PyWriter::close)
      .def_property_readonly("recorded", [](PyWriter& p) { return p.w().recorded(); })
      .def_property_readonly("durable", [](PyWriter& p) { return p.w().durable(); })
      .def_property_readonly("last_step", [](PyWriter& p) { return p.w().last_step(); })
      .def_property_readonly("width", [](PyWriter& p) { return p.w().width(); })
      .def_property_readonly("timings", [](PyWriter& p) {
        const auto t = p.w().timings();
        return py::dict(py::arg("capture") = t.capture, py::arg("wait") = t.wait, py::arg("project") = t.project,
                        py::arg("write") = t.write, py::arg("sync") = t.sync, py::arg("steps") = t.steps);
      });

  m.def(
      "recorded_rows",
      [](const std::vector<LayerSpec>& layers, int64_t k, uint64_t seed, const std::string& distribution, const std::string& dtype,
         int64_t checkpoint, double lr, const std::vector<F32>& xs, const std::vector<F32>& ds, int64_t batch,
         const std::vector<bool>& bias_columns, float scale, const std::string& projection, const std::string& factored) {
        const auto ls = layers_of(layers);
        const auto s = settings_of(k, seed, distribution, dtype, 1, {}, 1, 1, 4, projection, factored);
        ATTRACE_CHECK(xs.size() == ls.size() && ds.size() == ls.size(), attrace::InputError,
                      "one input and gradient array per layer expected");
        std::vector<eng::LayerBatch> lb;
        for (size_t l = 0; l < ls.size(); ++l)
          lb.push_back(layer_batch(ls[l], xs[l], ds[l], batch, bias_columns.empty() ? true : bias_columns.at(l), scale));
        const auto width = s.projection == eng::Projection::none
                               ? eng::recorded_exact_layout(ls, s.factored).width()
                               : eng::recorded_width(eng::plan_recorded_projection(ls, k, static_cast<size_t>(checkpoint)));
        py::array_t<float> out({batch, width});
        float* o = out.mutable_data();
        {
          py::gil_scoped_release release;
          eng::recorded_rows(ls, s, static_cast<size_t>(checkpoint), lr, batch, lb, o);
        }
        return out;
      },
      py::arg("layers"), py::arg("k"), py::arg("seed"), py::arg("distribution"), py::arg("dtype"), py::arg("checkpoint"),
      py::arg("lr"), py::arg("inputs"), py::arg("output_grads"), py::arg("batch"), py::arg("bias_columns") = std::vector<bool>{},
      py::arg("scale") = 1.0f, py::arg("projection") = "kronecker", py::arg("factored") = "auto",
      "Features of one batch at recorded step `checkpoint` (the recorder's computation, for tests)");

  m.def(
      "read_recording",
      [](const std::string& dir) {
        const eng::RecordingReader r(dir);
        py::list steps;
        for (size_t c = 0; c < r.steps(); ++c) {
          auto s = r.step(c);
          const auto b = static_cast<int64_t>(s.ids.size());
          py::array_t<int64_t> ids(b, s.ids.data());
          py::array_t<float> rows({b, r.width()}, s.rows.data());
          py::array_t<float> params(static_cast<int64_t>(s.parameters.size()), s.parameters.data());
          steps.append(py::dict(py::arg("step") = s.step, py::arg("lr") = s.lr, py::arg("ids") = ids, py::arg("rows") = rows,
                                py::arg("parameters") = params));
        }
        py::list layers;
        for (const auto& l : r.layers()) layers.append(py::make_tuple(l.name, l.d_in, l.d_out, l.bias));
        return py::dict(py::arg("layers") = layers, py::arg("width") = r.width(), py::arg("steps") = steps);
      },
      py::arg("dir"), "The durable steps of a recording (ids, rows, parameters per step)");

  m.def(
      "finalize",
      [](const std::string& recording, const std::string& train, const std::string& query, const std::string& store,
         const std::string& loss, bool replace, const std::string& recorded_train, const std::string& config) {
        eng::FinalizeOptions o{recording, train, query, store, loss, replace, recorded_train, config};
        eng::FinalizeSummary s;
        {
          py::gil_scoped_release release;
          s = eng::finalize_recording(o);
        }
        return py::dict(py::arg("config") = s.config_file, py::arg("run") = s.run_file, py::arg("steps") = s.steps,
                        py::arg("rows") = s.rows, py::arg("checkpoints") = s.checkpoints, py::arg("store") = store);
      },
      py::arg("recording"), py::arg("train"), py::arg("query"), py::arg("store"), py::arg("loss") = "cross_entropy",
      py::arg("replace") = false, py::arg("recorded_train") = "", py::arg("config") = "",
      "Checkpoints, run.toml, attrace.toml and a feature store from a recording (engine::finalize_recording)");
}
