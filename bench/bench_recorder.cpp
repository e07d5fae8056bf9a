// Training-step time with and without the live recorder (docs/recorder.md), in the same process:
// plain and recorded blocks of steps alternate (P L P D P W P L ..., every model training on), and
// a recorded block's overhead is its time over the mean of the plain blocks just before and after
// it (the VM's speed drifts from minute to minute; adjacent blocks see the same machine); the
// median over rounds is reported, with the range. A recorded block ends with flush() (queue
// drained, segment durable), so the writer's work stays inside it: one fsync per block beyond the
// recorder's own (one per 64 steps). close ms: closing the recording at the end, once per
// training run. SGD, cross-entropy, LibTorch TorchScript models through engine::Recorder, every
// step recorded with k = 4096 per layer, recordings on the local disk.
//
//   bench_recorder [rounds] [torch threads] [model name filter]
//
// Models: the demo MLP 64-32-10 (batch 32; every layer within k: exact features), an MLP
// 784-512-512-10 (batch 64; every layer projected) and the project's benchmark CNN on 8x8
// images, Conv2d(1,16,3,p1) ReLU Conv2d(16,32,3,p1) ReLU MaxPool2 Flatten Linear(512,10) (batch
// 64; the second conv and the linear layer projected). Columns: per step, the training thread's
// capture (checks and copies into the queue) and wait (queue full, flush) on the training thread,
// the writer thread's projection and write and the sync thread's fsyncs; thr.: the training
// thread's CPU seconds per step; cpu: the process's (all threads). Each model is recorded live
// (the writer projects) and deferred (RecorderSettings::defer: the writer stores the captured
// tensors, finalize projects them); a * marks the one the default setting (automatic) picks for
// that model; a third row records with that default and windows of 16 recorded steps per
// checkpoint (RecorderSettings::window). A second table times a plain and a recorded model
// taking turns step by step (the cost inside the step, the writer's interference split between
// both).
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

// One model training on its data, plain or through a Recorder; block(n) times n steps.
struct Block {
  double wall = 0, cpu = 0, thread_cpu = 0;  // per step
  eng::RecorderTimings t;                    // per step
};

// mode 0: plain; 1: recorded, live projection; 2: recorded, deferred projection; 3: recorded,
// the default (automatic) choice; 4: the default with windows of 16 steps (parameters kept once
// per 16 recorded steps).
struct Trainer {
  Setup s;
  std::unique_ptr<eng::Recorder> rec;
  fs::path dir;
  int64_t b = 0;

  Trainer(const Model& md, int mode) : s(make(md)) {
    if (mode > 0) {
      dir = fs::temp_directory_path() / ("attrace-bench-rec-" + std::to_string(::getpid()) + "-" + std::to_string(mode));
      fs::remove_all(dir);
      eng::RecorderSettings settings;
      settings.defer = mode == 2 ? eng::Deferral::always : mode == 1 ? eng::Deferral::never : eng::Deferral::automatic;
      if (mode == 4) settings.window = 16;
      rec = std::make_unique<eng::Recorder>(s.model, dir.string(), settings);
    }
    block(8);  // warm-up (and the recorder's one forward check)
  }
  ~Trainer() {
    rec.reset();
    if (!dir.empty()) fs::remove_all(dir);
  }
  // A recorded block ends with flush() (the writer's queue drained, the segment made durable),
  // so all of its work is inside the block's time.
  Block block(int64_t steps) {
    const eng::RecorderTimings t0 = rec ? rec->writer().timings() : eng::RecorderTimings{};
    const double c0 = cpu_seconds(), tc0 = thread_cpu_seconds();
    const auto w0 = Clock::now();
    for (int64_t i = 0; i < steps; ++i) train_step(s, rec.get(), b++);
    if (rec) rec->flush();
    const auto n = static_cast<double>(steps);
    Block r;
    r.wall = std::chrono::duration<double>(Clock::now() - w0).count() / n;
    r.cpu = (cpu_seconds() - c0) / n;
    r.thread_cpu = (thread_cpu_seconds() - tc0) / n;
    if (rec) {
      const auto t1 = rec->writer().timings();
      r.t = {(t1.capture - t0.capture) / n, (t1.wait - t0.wait) / n, (t1.project - t0.project) / n, (t1.write - t0.write) / n,
             (t1.sync - t0.sync) / n, t1.steps - t0.steps, t1.deferred - t0.deferred};
    }
    return r;
  }
  // Seconds to close the recording (drain, last fsync, join the threads): once per training run.
  double close() {
    const auto w0 = Clock::now();
    rec->close();
    return std::chrono::duration<double>(Clock::now() - w0).count();
  }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 5;
  const int threads = argc > 2 ? std::atoi(argv[2]) : 1;
  const std::string only = argc > 3 ? argv[3] : "";
  torch::set_num_threads(threads);
  std::printf("bench_recorder: %d rounds, %d torch thread(s), recorder writer thread with 1 projection thread\n", rounds, threads);
  std::printf("%-28s %5s %6s | %9s %9s %8s %9s | %8s %8s %8s %8s %8s | %8s %8s %8s %8s | %8s\n", "model", "batch", "width",
              "plain us", "rec. us", "overhead", "range", "capture", "wait", "project", "write", "sync", "thr.pl.", "thr.rec.",
              "cpu pl.", "cpu rec.", "close ms");
  const std::vector<Model> models = {
      {"demo MLP 64-32-10", {64}, 10, 32, 1000, [](const std::string& p) { eng::save_mlp_torchscript(p, {64, 32, 10}, 1); }},
      {"MLP 784-512-512-10", {784}, 10, 64, 200, [](const std::string& p) { eng::save_mlp_torchscript(p, {784, 512, 512, 10}, 1); }},
      {"CNN 8x8 (16, 32 ch.)", {1, 8, 8}, 10, 64, 200, save_cnn},
  };
  // The recorded modes (Trainer's) and their row labels.
  const int modes[3] = {1, 2, 4};
  const char* const labels[3] = {" live", " defer", " window 16"};
  for (const auto& md : models) {
    if (!only.empty() && md.name.find(only) == std::string::npos) continue;
    // Plain and recorded blocks alternate, P L P D P W P L ...: each recorded block is compared
    // with the mean of the plain blocks just before and after it (the VM's speed drifts from
    // minute to minute; adjacent blocks see the same machine).
    Trainer plain(md, 0);
    std::vector<std::unique_ptr<Trainer>> rec;
    for (const int m : modes) rec.push_back(std::make_unique<Trainer>(md, m));
    std::vector<Block> plains = {plain.block(md.steps)};
    std::vector<std::vector<Block>> blocks(3);
    for (int r = 0; r < rounds; ++r) {
      for (size_t m = 0; m < 3; ++m) {
        blocks[m].push_back(rec[m]->block(md.steps));
        plains.push_back(plain.block(md.steps));
      }
    }
    int64_t deferred = 0;  // what the default setting (automatic) does with this model
    for (const auto& b : blocks[2]) deferred += b.t.deferred;
    for (size_t m = 0; m < 3; ++m) {
      const double close = rec[m]->close();
      std::vector<double> ratio, pw, pt, pc, w, t, c, cap, wait, proj, wr, sy;
      for (size_t r = 0; r < blocks[m].size(); ++r) {
        const Block& before = plains[r * 3 + m];
        const Block& after = plains[r * 3 + m + 1];
        const Block& x = blocks[m][r];
        const double base = (before.wall + after.wall) / 2;
        ratio.push_back(x.wall / base - 1);
        pw.push_back(base);
        pt.push_back((before.thread_cpu + after.thread_cpu) / 2);
        pc.push_back((before.cpu + after.cpu) / 2);
        w.push_back(x.wall);
        t.push_back(x.thread_cpu);
        c.push_back(x.cpu);
        cap.push_back(x.t.capture);
        wait.push_back(x.t.wait);
        proj.push_back(x.t.project);
        wr.push_back(x.t.write);
        sy.push_back(x.t.sync);
      }
      const bool is_default = m < 2 && (deferred > 0) == (m == 1);
      const std::string name = md.name + labels[m] + (is_default ? "*" : "");
      char range[32];
      std::snprintf(range, sizeof range, "%+.0f..%+.0f", 100 * *std::min_element(ratio.begin(), ratio.end()),
                    100 * *std::max_element(ratio.begin(), ratio.end()));
      std::printf("%-28s %5lld %6lld | %9.1f %9.1f %+7.1f%% %9s | %8.1f %8.1f %8.1f %8.1f %8.1f | %8.1f %8.1f %8.1f %8.1f | %8.2f\n",
                  name.c_str(), static_cast<long long>(md.batch), static_cast<long long>(rec[m]->rec->writer().width()),
                  1e6 * median(pw), 1e6 * median(w), 100 * median(ratio), range, 1e6 * median(cap), 1e6 * median(wait),
                  1e6 * median(proj), 1e6 * median(wr), 1e6 * median(sy), 1e6 * median(pt), 1e6 * median(t), 1e6 * median(pc),
                  1e6 * median(c), 1e3 * close);
    }
    std::fflush(stdout);
  }
  // Second measure: a plain and a recorded model take turns step by step, each step timed
  // alone. The drift cancels almost entirely, which isolates the cost inside the step (the
  // training thread's capture, copies and waits); the writer threads' interference falls on both
  // models alike, so it counts half. The blocks above count it in full.
  std::printf("\nsteps interleaved one by one (%d x the block's steps per mode)\n", rounds);
  std::printf("%-28s | %9s %9s %9s %8s\n", "model", "plain us", "rec. us", "diff us", "overhead");
  for (const auto& md : models) {
    if (!only.empty() && md.name.find(only) == std::string::npos) continue;
    for (size_t m = 0; m < 3; ++m) {
      Trainer plain(md, 0), rec(md, modes[m]);
      double tp = 0, tr = 0;
      const int64_t n = rounds * md.steps;
      for (int64_t i = 0; i < n; ++i) {
        const auto t0 = Clock::now();
        train_step(plain.s, nullptr, plain.b++);
        const auto t1 = Clock::now();
        train_step(rec.s, rec.rec.get(), rec.b++);
        const auto t2 = Clock::now();
        tp += std::chrono::duration<double>(t1 - t0).count();
        tr += std::chrono::duration<double>(t2 - t1).count();
      }
      rec.close();
      const std::string name = md.name + labels[m];
      std::printf("%-28s | %9.1f %9.1f %+9.1f %+7.1f%%\n", name.c_str(), 1e6 * tp / n, 1e6 * tr / n, 1e6 * (tr - tp) / n,
                  100 * (tr / tp - 1));
    }
    std::fflush(stdout);
  }
  return 0;
}
