// _attrace: the C++ half of the `attrace` Python module (docs/recorder.md). The whole capture
// runs here, on the training thread, without Python code: the forward of each recorded nn.Linear
// (one ATen call, the op F.linear makes), the forward hooks of other recorded layers, the model's
// forward pre-hook, the output-gradient hooks (C++ autograd hooks: no GIL in backward) and
// step(), which copies the captured tensors into the writer's queue. attrace/__init__.py only
// finds the layers and installs these callables. Tensors cross as the tensors Python holds
// (libtorch_python's THPVariable); the test helper recorded_rows takes numpy buffers.
#include <attrace/connectors/feature_store.hpp>
#include <attrace/engine/recorder.hpp>
#include <attrace/error.hpp>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/python_variable.h>

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

// A float32 row-major buffer with its shape: a numpy array's or a CPU tensor's.
struct View {
  const float* data = nullptr;
  std::vector<int64_t> shape;
  int64_t ndim() const { return static_cast<int64_t>(shape.size()); }
  int64_t size() const {
    int64_t n = 1;
    for (const auto s : shape) n *= s;
    return n;
  }
  static View of(const F32& a) { return {a.data(), std::vector<int64_t>(a.shape(), a.shape() + a.ndim())}; }
  // t: float32, contiguous, on the CPU (step() makes it so).
  static View of(const at::Tensor& t) { return {t.data_ptr<float>(), t.sizes().vec()}; }
};

// One layer's capture. x: Linear inputs ((B T) x n_in, or with the bias column when
// `bias_column`), Conv2d inputs B x C x H x W (4-D) or patches; delta: the output gradients as
// torch holds them. Sizes are checked by the writer against the layer.
eng::LayerBatch layer_batch(const eng::RecordedLayer& l, const View& x, const View& d, int64_t batch, bool bias_column, float scale) {
  eng::LayerBatch c;
  c.x = x.data;
  c.delta = d.data;
  c.delta_scale = scale;
  c.x_bias_column = bias_column;
  const std::string what = "layer '" + l.name + "'";
  ATTRACE_CHECK(x.ndim() >= 1 && x.shape[0] > 0 && d.ndim() >= 1, attrace::InputError, what + ": empty inputs or gradients");
  if (l.conv && x.ndim() == 4) {
    ATTRACE_CHECK(x.shape[0] == batch && x.shape[1] == l.geometry.c_in, attrace::InputError,
                  what + ": inputs must be (" + std::to_string(batch) + ", " + std::to_string(l.geometry.c_in) + ", H, W)");
    c.height = x.shape[2];
    c.width = x.shape[3];
    const int64_t ho = eng::ConvGeometry::out_size(c.height, l.geometry.ph, l.geometry.dh, l.geometry.kh, l.geometry.sh);
    const int64_t wo = eng::ConvGeometry::out_size(c.width, l.geometry.pw, l.geometry.dw, l.geometry.kw, l.geometry.sw);
    ATTRACE_CHECK(d.ndim() == 4 && d.shape[0] == batch && d.shape[1] == l.d_out && d.shape[2] == ho && d.shape[3] == wo,
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

// A tensor as step() hands it to the writer: of `type`, contiguous, on the CPU (a copy only when
// it is not one already; only its data is read, so no detach).
at::Tensor host(const at::Tensor& t, at::ScalarType type = at::kFloat) {
  if (t.scalar_type() == type && t.device().is_cpu() && t.is_contiguous()) return t;
  at::NoGradGuard no_grad;
  return t.to(at::kCPU, type).contiguous();
}

// The tensor behind a Python object, or nullptr when it is not a torch.Tensor.
const at::Tensor* tensor_of(py::handle o) { return THPVariable_Check(o.ptr()) ? &THPVariable_Unpack(o.ptr()) : nullptr; }

// What the training thread captures between the model's forward pre-hook and step(): per
// recorded layer its input and its output gradient. Shared with the autograd hooks (which run
// in backward, without the GIL, on the thread autograd picks), so held by shared_ptr.
struct Capture {
  struct Slot {
    at::Tensor x, g;
    int forwards = 0;  // forwards of this layer since the pre-hook (more than one: not recorded)
  };
  std::vector<Slot> slots;
  bool capturing = false;         // the coming step is recorded and the forward runs with grad
  PyObject* root = nullptr;       // the attached model and layers (borrowed: identity only; a
  std::vector<PyObject*> layers;  // deep copy of the model shares these callables and is ignored)
  std::vector<at::Tensor> parameters;  // the model's parameters, the tensors Python holds
  std::weak_ptr<eng::RecordingWriter> writer;  // expired once the recording is closed
  int64_t step = 0;                            // the training step the next step() ends
  uint64_t generation = 0;  // counts reset()s: a hook from an older forward's graph keeps nothing

  void reset() {
    for (auto& s : slots) s = Slot{};
    ++generation;
  }
  // A recorded layer ran: keep its input and hook its output's gradient.
  static void keep(const std::shared_ptr<Capture>& c, size_t index, py::handle module, const at::Tensor& x, const at::Tensor& y) {
    if (!c->capturing || index >= c->layers.size() || module.ptr() != c->layers[index]) return;
    auto& s = c->slots[index];
    if (s.forwards++ > 0) return;  // reported by step()
    s.x = x;
    if (y.requires_grad()) {
      std::weak_ptr<Capture> w = c;
      const uint64_t generation = c->generation;
      y.register_hook([w, index, generation](const at::Tensor& g) {
        const auto cap = w.lock();
        if (cap && cap->generation == generation) cap->slots[index].g = g;
      });
    }
  }
};

// A recording writer owned by Python; close() drains the queue, makes every step durable and
// releases the directory lock.
class PyWriter {
 public:
  PyWriter(const std::string& dir, const std::vector<LayerSpec>& layers,
           const std::vector<std::pair<std::string, std::vector<int64_t>>>& params, const std::string& template_file, int64_t k,
           uint64_t seed, const std::string& distribution, const std::string& dtype, int64_t every,
           const std::vector<int64_t>& steps, int64_t flush_steps, int threads, int64_t queue_steps, const std::string& projection,
           const std::string& factored, const std::string& defer, int64_t window)
      : layers_(layers_of(layers)), cap_(std::make_shared<Capture>()) {
    std::vector<eng::RecordedParameter> ps;
    for (const auto& [name, shape] : params) ps.push_back({name, shape});
    params_ = ps;
    const auto s = settings_of(k, seed, distribution, dtype, every, steps, flush_steps, threads, queue_steps, projection, factored, defer,
                               window);
    py::gil_scoped_release release;
    w_ = std::make_shared<eng::RecordingWriter>(dir, s, layers_, ps, template_file);
    cap_->writer = w_;
    cap_->step = w_->last_step() + 1;
  }
  eng::RecordingWriter& w() {
    ATTRACE_CHECK(w_ != nullptr, attrace::InputError, "the recording is closed");
    return *w_;
  }
  // Binds the capture to a model: its root module, its recorded layers (in layer order) and
  // its parameters (in RecordedParameter order).
  void bind(py::handle root, const std::vector<py::handle>& layers, const std::vector<at::Tensor>& parameters) {
    ATTRACE_CHECK(layers.size() == layers_.size(), attrace::InputError, "one module per recorded layer expected");
    ATTRACE_CHECK(parameters.size() == params_.size(), attrace::InputError, "one tensor per parameter expected");
    cap_->root = root.ptr();
    cap_->layers.clear();
    for (const auto& l : layers) cap_->layers.push_back(l.ptr());
    cap_->slots.assign(layers_.size(), {});
    cap_->parameters = parameters;
  }
  // The model's forward pre-hook: decides once per forward whether to capture (the coming step
  // is recorded and grad mode is on).
  py::cpp_function pre_hook() {
    auto cap = cap_;
    return py::cpp_function([cap](py::handle module, py::handle) {
      if (module.ptr() != cap->root) return;
      const auto w = cap->writer.lock();
      cap->capturing = w != nullptr && at::GradMode::is_enabled() && w->wants(cap->step);
      if (cap->capturing) cap->reset();
    });
  }
  // nn.Linear's forward as one ATen call (the op F.linear makes: the same bits), reading the
  // module's weight and bias at each call, with the capture. Installed as the module's
  // `forward` (bound to it), so the module's call stays on PyTorch's fast path (no hook).
  // Another module type or a tensor subclass runs nn.Linear.forward in Python.
  py::cpp_function linear_forward(size_t index) {
    auto cap = cap_;
    py::object python_forward = py::module_::import("torch.nn").attr("Linear").attr("forward");
    // Interned names: no string made per call.
    py::object params_key = py::reinterpret_steal<py::object>(PyUnicode_InternFromString("_parameters"));
    py::object weight_key = py::reinterpret_steal<py::object>(PyUnicode_InternFromString("weight"));
    py::object bias_key = py::reinterpret_steal<py::object>(PyUnicode_InternFromString("bias"));
    return py::cpp_function([cap, index, python_forward, params_key, weight_key, bias_key](py::handle module,
                                                                                          py::handle x) -> py::object {
      py::object params = py::reinterpret_steal<py::object>(PyObject_GetAttr(module.ptr(), params_key.ptr()));
      PyObject* w = params && PyDict_Check(params.ptr()) ? PyDict_GetItem(params.ptr(), weight_key.ptr()) : nullptr;
      PyObject* b = params && PyDict_Check(params.ptr()) ? PyDict_GetItem(params.ptr(), bias_key.ptr()) : nullptr;
      if (!params) PyErr_Clear();
      const auto plain = [](PyObject* o) {
        return THPVariable_CheckExact(o) || (THPVariable_Check(o) && Py_TYPE(o) == reinterpret_cast<PyTypeObject*>(ParameterClass));
      };
      if (!THPVariable_CheckExact(x.ptr()) || w == nullptr || !plain(w) || (b != nullptr && b != Py_None && !plain(b))) {
        py::object y = python_forward(module, x);
        if (const auto* xt = tensor_of(x)) {
          if (const auto* yt = tensor_of(y)) Capture::keep(cap, index, module, *xt, *yt);
        }
        return y;
      }
      const at::Tensor& xt = THPVariable_Unpack(x.ptr());
      const at::Tensor& wt = THPVariable_Unpack(w);
      c10::optional<at::Tensor> bt;
      if (b != nullptr && b != Py_None) bt = THPVariable_Unpack(b);
      at::Tensor y;
      {
        py::gil_scoped_release release;
        y = at::linear(xt, wt, bt);
      }
      Capture::keep(cap, index, module, xt, y);
      return py::reinterpret_steal<py::object>(THPVariable_Wrap(std::move(y)));
    });
  }
  // A forward hook that captures any other recorded layer (Conv2d, a Linear subclass).
  py::cpp_function forward_hook(size_t index) {
    auto cap = cap_;
    return py::cpp_function([cap, index](py::handle module, py::tuple inputs, py::handle output) {
      const at::Tensor* x = inputs.size() > 0 ? tensor_of(inputs[0]) : nullptr;
      const at::Tensor* y = tensor_of(output);
      if (x != nullptr && y != nullptr) Capture::keep(cap, index, module, *x, *y);
    });
  }
  // Ends training step cap_->step: when it was captured, copies the layers' inputs, output gradients
  // and the parameters into the writer's queue (the GIL released meanwhile; projection and
  // writing run on the writer's thread). Returns whether the step was recorded.
  bool step(py::handle ids, double lr, py::object loss_scale) {
    const int64_t t = cap_->step++;
    if (!cap_->capturing) return false;
    cap_->capturing = false;
    struct Clear {
      Capture& c;
      ~Clear() { c.reset(); }
    } clear{*cap_};
    const std::string at_step = "attrace.Recorder: step " + std::to_string(t) + ": ";
    for (size_t l = 0; l < layers_.size(); ++l) {
      ATTRACE_CHECK(cap_->slots[l].forwards <= 1, attrace::InputError,
                    at_step + "layer '" + layers_[l].name + "' ran more than once in one forward (a layer applied twice is not recorded)");
      ATTRACE_CHECK(cap_->slots[l].x.defined() && cap_->slots[l].g.defined(), attrace::InputError,
                    at_step + "no gradient reached layer '" + layers_[l].name +
                        "' (call step() after loss.backward() of this step's forward)");
    }
    at::Tensor id_tensor;
    I64 id_array;
    const int64_t* id_data = nullptr;
    int64_t batch = 0;
    if (const auto* it = tensor_of(ids)) {
      id_tensor = host(*it, at::kLong);
      id_data = id_tensor.data_ptr<int64_t>();
      batch = id_tensor.numel();
    } else {
      id_array = I64::ensure(ids);
      ATTRACE_CHECK(id_array, attrace::InputError, at_step + "ids must be a sequence of integers");
      id_data = id_array.data();
      batch = id_array.size();
    }
    ATTRACE_CHECK(batch > 0, attrace::InputError, at_step + "ids must not be empty");
    const float scale = static_cast<float>(loss_scale.is_none() ? static_cast<double>(batch) : loss_scale.cast<double>());
    std::vector<at::Tensor> keep;  // alive until the writer has copied them
    keep.reserve(2 * layers_.size() + params_.size());
    std::vector<eng::LayerBatch> lb;
    lb.reserve(layers_.size());
    for (size_t l = 0; l < layers_.size(); ++l) {
      keep.push_back(host(cap_->slots[l].x));
      keep.push_back(host(cap_->slots[l].g));
      lb.push_back(layer_batch(layers_[l], View::of(keep[keep.size() - 2]), View::of(keep.back()), batch, false, scale));
    }
    std::vector<const float*> pp;
    pp.reserve(params_.size());
    for (size_t p = 0; p < params_.size(); ++p) {
      keep.push_back(host(cap_->parameters[p]));
      ATTRACE_CHECK(keep.back().numel() == params_[p].numel(), attrace::InputError,
                    "parameter '" + params_[p].name + "' has another size than when the recorder attached");
      pp.push_back(keep.back().data_ptr<float>());
    }
    {
      py::gil_scoped_release release;
      w().record(t, lr, id_data, batch, lb, pp);
    }
    return true;
  }
  int64_t current_step() const { return cap_->step; }
  void set_current_step(int64_t s) { cap_->step = s; }
  void flush() {
    auto& w_ref = w();
    py::gil_scoped_release release;
    w_ref.flush();
  }
  void close() {
    if (!w_) return;
    std::shared_ptr<eng::RecordingWriter> w = std::move(w_);
    py::gil_scoped_release release;
    w->close();
  }

 private:
  std::vector<eng::RecordedLayer> layers_;
  std::vector<eng::RecordedParameter> params_;
  std::shared_ptr<eng::RecordingWriter> w_;
  std::shared_ptr<Capture> cap_;
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
      .def("bind", &PyWriter::bind, py::arg("root"), py::arg("layers"), py::arg("parameters"))
      .def("pre_hook", &PyWriter::pre_hook)
      .def("linear_forward", &PyWriter::linear_forward, py::arg("index"))
      .def("forward_hook", &PyWriter::forward_hook, py::arg("index"))
      .def("step", &PyWriter::step, py::arg("ids"), py::arg("lr"), py::arg("loss_scale") = py::none())
      .def_property("current_step", &PyWriter::current_step, &PyWriter::set_current_step)
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
          lb.push_back(layer_batch(ls[l], View::of(xs[l]), View::of(ds[l]), batch, bias_columns.empty() ? true : bias_columns.at(l), scale));
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
