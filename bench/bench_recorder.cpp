// Training-step time with and without the live recorder (docs/recorder.md), in the same process:
// plain and recorded runs alternate in rounds (a shared machine's load drifts), and the median
// of each is reported: per step with closing the recording spread over the round's steps (rec.
// us, overhead), per step without it (steps us, ovh.steps), and the close itself (close ms: once
// per training run, however long). SGD, cross-entropy, LibTorch TorchScript models through engine::Recorder,
// every step recorded with k = 4096 per layer, recordings on the local disk (a durable segment
// every 64 steps). A recorded run's time includes closing the recording (draining the queue and
// the last fsync).
//
//   bench_recorder [rounds] [torch threads] [model name filter]
//
// Models: the demo MLP 64-32-10 (batch 32; every layer within k: exact features), an MLP
// 784-512-512-10 (batch 64; every layer projected) and the project's benchmark CNN on 8x8
// images, Conv2d(1,16,3,p1) ReLU Conv2d(16,32,3,p1) ReLU MaxPool2 Flatten Linear(512,10) (batch
// 64; the second conv and the linear layer projected). Columns: per step, the training thread's
// capture (checks and copies into the queue) and wait (queue full, final drain), the writer
// thread's projection and write and the sync thread's fsyncs; thr.: the training thread's CPU
// seconds per step; cpu: the process's (all threads). Each model is recorded twice per round,
// live (the writer projects) and deferred (RecorderSettings::defer: the writer stores the
// captured tensors, finalize projects them), beside the same plain runs; a * marks the one the
// default setting (automatic) picks for that model; a third row records with that default and
// windows of 16 recorded steps per checkpoint (RecorderSettings::window).
#include <attrace/engine/model_builder.hpp>
#include <attrace/engine/recorder.hpp>

#include <torch/script.h>
#include <torch/torch.h>

#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <numeric>
#include <random>
#include <string>

namespace {

namespace fs = std::filesystem;
namespace eng = attrace::engine;
using Clock = std::chrono::steady_clock;

// CPU seconds of the calling (training) thread.
double thread_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + 1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// The benchmark CNN as torch.jit.script saves it (Conv2d children carry their geometry).
void save_cnn(const std::string& path) {
  torch::manual_seed(1);
  auto cu = std::make_shared<torch::jit::CompilationUnit>();
  torch::jit::Module seq(c10::QualifiedName("__torch__.bench.Sequential"), cu, true);
  const auto conv = [&](const std::string& name, int64_t cin, int64_t cout) {
    torch::jit::Module c(c10::QualifiedName("__torch__.bench." + name + ".Conv2d"), cu, true);
    const double bound = 1.0 / std::sqrt(static_cast<double>(cin * 9));
    c.register_parameter("weight", torch::empty({cout, cin, 3, 3}).uniform_(-bound, bound), false);
    c.register_parameter("bias", torch::empty({cout}).uniform_(-bound, bound), false);
    const auto ints = c10::ListType::ofInts();
    c.register_attribute("stride", ints, c10::List<int64_t>({1, 1}));
    c.register_attribute("padding", ints, c10::List<int64_t>({1, 1}));
    c.register_attribute("dilation", ints, c10::List<int64_t>({1, 1}));
    c.register_attribute("groups", c10::IntType::get(), int64_t{1});
    c.register_attribute("padding_mode", c10::StringType::get(), std::string("zeros"));
    c.define("def forward(self, x):\n    return torch.conv2d(x, self.weight, self.bias, self.stride, self.padding, "
             "self.dilation, self.groups)\n");
    seq.register_module(name, c);
  };
  const auto fn = [&](const std::string& name, const std::string& expr) {
    torch::jit::Module m(c10::QualifiedName("__torch__.bench." + name + ".Function"), cu, true);
    m.define("def forward(self, x):\n    return " + expr + "\n");
    seq.register_module(name, m);
  };
  conv("c1", 1, 16);
  fn("r1", "torch.relu(x)");
  conv("c2", 16, 32);
  fn("r2", "torch.relu(x)");
  fn("pool", "torch.max_pool2d(x, [2, 2])");
  fn("flat", "torch.flatten(x, 1)");
  torch::jit::Module lin(c10::QualifiedName("__torch__.bench.Linear"), cu, true);
  lin.register_parameter("weight", torch::empty({10, 512}).uniform_(-0.044, 0.044), false);
  lin.register_parameter("bias", torch::empty({10}).uniform_(-0.044, 0.044), false);
  lin.define("def forward(self, x):\n    return torch.addmm(self.bias, x, self.weight.t())\n");
  seq.register_module("fc", lin);
  seq.define("def forward(self, x):\n    return self.fc.forward(self.flat.forward(self.pool.forward(self.r2.forward(self.c2.forward(self.r1.forward(self.c1.forward(x)))))))\n");
  seq.save(path);
}

struct Model {
  std::string name;
  std::vector<int64_t> input;  // one example's shape
  int64_t classes = 10, batch = 32, steps = 100;
  std::function<void(const std::string&)> save;
};

struct Setup {
  torch::jit::Module model;
  std::vector<torch::Tensor> params;
  torch::Tensor x, y;
  std::vector<std::vector<int64_t>> batches;
};

// A fresh model (same initial weights every time) and a synthetic training set of 64 batches.
Setup make(const Model& md) {
  const fs::path p = fs::temp_directory_path() / ("attrace-bench-rec-" + std::to_string(::getpid()) + ".pt");
  md.save(p.string());
  Setup s;
  s.model = torch::jit::load(p.string());
  fs::remove(p);
  for (const auto& t : s.model.parameters()) {
    torch::Tensor q = t;
    q.requires_grad_(true);
    s.params.push_back(q);
  }
  const int64_t n = 64 * md.batch;
  torch::manual_seed(2);
  std::vector<int64_t> shape = {n};
  shape.insert(shape.end(), md.input.begin(), md.input.end());
  s.x = torch::rand(shape);
  s.y = torch::randint(md.classes, {n}, torch::kLong);
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(3));
  for (int64_t b = 0; b < 64; ++b) s.batches.emplace_back(perm.begin() + b * md.batch, perm.begin() + (b + 1) * md.batch);
  return s;
}

// One SGD step; `rec` null: the plain loop.
void train_step(Setup& s, eng::Recorder* rec, int64_t b) {
  const auto& ids = s.batches[static_cast<size_t>(b % 64)];
  const auto idx = torch::tensor(ids, torch::kLong);
  const auto xb = s.x.index_select(0, idx);
  const auto out = rec ? rec->forward(xb) : s.model.forward({xb}).toTensor();
  const auto loss = torch::nn::functional::cross_entropy(out, s.y.index_select(0, idx));
  const auto grads = torch::autograd::grad({loss}, s.params);
  if (rec) rec->step(ids, 0.01);
  torch::NoGradGuard ng;
  for (size_t k = 0; k < s.params.size(); ++k) s.params[k].sub_(grads[k], 0.01);
}

struct Round {
  double wall = 0, cpu = 0, thread_cpu = 0;
  double steps_wall = 0;  // per step, the steps alone (without closing the recording)
  double close = 0;       // closing the recording: draining the queue, the last fsyncs (once per run)
  eng::RecorderTimings t;
  int64_t width = 0;
  int64_t deferred = 0;  // steps the writer stored deferred
};

// mode 0: plain; 1: recorded, live projection; 2: recorded, deferred projection; 3: recorded,
// the default (automatic) choice; 4: the default with windows of 16 steps (parameters kept once
// per 16 recorded steps). steps < 0: the model's.
Round run(const Model& md, int mode, int64_t steps = -1) {
  const bool record = mode > 0;
  if (steps < 0) steps = md.steps;
  Setup s = make(md);
  const fs::path dir = fs::temp_directory_path() / ("attrace-bench-rec-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  std::unique_ptr<eng::Recorder> rec;
  eng::RecorderSettings settings;
  settings.defer = mode == 2 ? eng::Deferral::always : mode == 1 ? eng::Deferral::never : eng::Deferral::automatic;
  if (mode == 4) settings.window = 16;
  if (record) rec = std::make_unique<eng::Recorder>(s.model, dir.string(), settings);
  for (int64_t b = 0; b < 8; ++b) train_step(s, rec.get(), b);  // warm-up (and the recorder's one forward check)
  if (rec) rec->flush();
  const eng::RecorderTimings t0 = rec ? rec->writer().timings() : eng::RecorderTimings{};
  const double c0 = cpu_seconds(), tc0 = thread_cpu_seconds();
  const auto w0 = Clock::now();
  for (int64_t b = 0; b < steps; ++b) train_step(s, rec.get(), b);
  const auto w1 = Clock::now();
  if (rec) rec->close();  // drains the queue and makes the last segment durable: part of the cost
  Round r;
  r.steps_wall = std::chrono::duration<double>(w1 - w0).count() / static_cast<double>(steps);
  r.close = std::chrono::duration<double>(Clock::now() - w1).count();
  r.deferred = rec ? rec->writer().timings().deferred : 0;
  r.wall = std::chrono::duration<double>(Clock::now() - w0).count() / static_cast<double>(steps);
  r.cpu = (cpu_seconds() - c0) / static_cast<double>(steps);
  r.thread_cpu = (thread_cpu_seconds() - tc0) / static_cast<double>(steps);
  if (rec) {
    const auto t1 = rec->writer().timings();
    const auto n = static_cast<double>(steps);
    r.t = {(t1.capture - t0.capture) / n, (t1.wait - t0.wait) / n, (t1.project - t0.project) / n, (t1.write - t0.write) / n,
           (t1.sync - t0.sync) / n, t1.steps - t0.steps};
    r.width = rec->writer().width();
  }
  rec.reset();
  fs::remove_all(dir);
  return r;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 3;
  const int threads = argc > 2 ? std::atoi(argv[2]) : 1;
  const std::string only = argc > 3 ? argv[3] : "";
  torch::set_num_threads(threads);
  std::printf("bench_recorder: %d rounds, %d torch thread(s), recorder writer thread with 1 projection thread\n", rounds, threads);
  std::printf("%-28s %5s %6s | %9s %9s %8s | %9s %8s %8s | %8s %8s %8s %8s %8s | %8s %8s %8s %8s\n", "model", "batch", "width",
              "plain us", "rec. us", "overhead", "steps us", "ovh.steps", "close ms", "capture", "wait", "project", "write", "sync",
              "thr.pl.", "thr.rec.", "cpu pl.", "cpu rec.");
  const std::vector<Model> models = {
      {"demo MLP 64-32-10", {64}, 10, 32, 1000, [](const std::string& p) { eng::save_mlp_torchscript(p, {64, 32, 10}, 1); }},
      {"MLP 784-512-512-10", {784}, 10, 64, 200, [](const std::string& p) { eng::save_mlp_torchscript(p, {784, 512, 512, 10}, 1); }},
      {"CNN 8x8 (16, 32 ch.)", {1, 8, 8}, 10, 64, 200, save_cnn},
  };
  for (const auto& md : models) {
    if (!only.empty() && md.name.find(only) == std::string::npos) continue;
    std::vector<double> plain, cpl, tpl;
    struct Col {
      std::vector<double> wall, cpu, thr, cap, wait, proj, wr, sy, steps_wall, close;
      int64_t width = 0;
    } col[3];
    for (int r = 0; r < rounds; ++r) {
      const Round a = run(md, 0);
      plain.push_back(a.wall);
      cpl.push_back(a.cpu);
      tpl.push_back(a.thread_cpu);
      for (int mode = 1; mode <= 3; ++mode) {
        const Round b = run(md, mode == 3 ? 4 : mode);
        auto& c = col[mode - 1];
        c.wall.push_back(b.wall);
        c.steps_wall.push_back(b.steps_wall);
        c.close.push_back(b.close);
        c.cpu.push_back(b.cpu);
        c.thr.push_back(b.thread_cpu);
        c.cap.push_back(b.t.capture);
        c.wait.push_back(b.t.wait);
        c.proj.push_back(b.t.project);
        c.wr.push_back(b.t.write);
        c.sy.push_back(b.t.sync);
        c.width = b.width;
      }
    }
    const double p = median(plain);
    const Round choice = run(md, 3, 4);  // what the default setting (automatic) does with this model
    for (int mode = 1; mode <= 3; ++mode) {
      const auto& c = col[mode - 1];
      const double q = median(c.wall);
      const bool is_default = mode < 3 && (choice.deferred > 0) == (mode == 2);
      const std::string name = md.name + (mode == 1 ? " live" : mode == 2 ? " defer" : " window 16") + (is_default ? "*" : "");
      const double qs = median(c.steps_wall);
      std::printf("%-28s %5lld %6lld | %9.1f %9.1f %+7.1f%% | %9.1f %+8.1f%% %8.2f | %8.1f %8.1f %8.1f %8.1f %8.1f | %8.1f %8.1f %8.1f %8.1f\n",
                  name.c_str(), static_cast<long long>(md.batch), static_cast<long long>(c.width), 1e6 * p, 1e6 * q,
                  100 * (q - p) / p, 1e6 * qs, 100 * (qs - p) / p, 1e3 * median(c.close), 1e6 * median(c.cap), 1e6 * median(c.wait), 1e6 * median(c.proj), 1e6 * median(c.wr),
                  1e6 * median(c.sy), 1e6 * median(tpl), 1e6 * median(c.thr), 1e6 * median(cpl), 1e6 * median(c.cpu));
    }
    std::fflush(stdout);
  }
  return 0;
}
