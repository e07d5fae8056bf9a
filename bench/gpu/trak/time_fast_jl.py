#!/usr/bin/env python3
"""Builds TRAK's fast_jl CUDA extension (a benchmark peer, never an attrace dependency) and times
it on the dense-projection cells of bench/bench_gpu.cu (issue 10). See bench/gpu/trak/README.md.

  time_fast_jl.py check --src DIR                 # source present? which functions does it bind?
  time_fast_jl.py build --src DIR --build-dir D   # compile fast_jl.cu for this GPU (ninja)
  time_fast_jl.py bench --build-dir D --json F    # time the cells, print the table, write JSON
  time_fast_jl.py bench --dry-run --sms 132       # list the cells and memory estimates, no GPU

torch is imported only by build and bench, so check, --help and --dry-run run without it.
"""
import argparse
import json
import math
import os
import re
import statistics
import sys
import time

# fast_jl.cu's sources as exported from MadryLab/trak (fast_jl/); all must be present.
FAST_JL_FILES = ["fast_jl.cu", "fast_jl_kernel.cuh", "random.cuh", "data_loading.cuh",
                 "error_handling.cuh", "types.cuh"]
# project_kernel's launch needs k % (WARP_SIZE * CHUNKS_PER_TILE) == 0 (fast_jl_kernel.cuh).
K_MULTIPLE = 512
# The batch variants fast_jl binds: project_rademacher_{8,16,32} handle 8 * NUM_BATCHES rows per
# kernel launch and loop over larger batches on the host.
VARIANTS = (8, 16, 32)


def pretty(v):
    """Same spelling as bench_gpu.cu's pretty(): 100000 -> 1e5, 4096 -> 4096."""
    if v >= 1000 and v % 1000 == 0:
        e = 0
        while v % 10 == 0:
            v //= 10
            e += 1
        return f"{v}e{e}"
    return str(v)


def int_list(text, what):
    """Parses '8,256' or '1e5,1e6' into positive ints; names the option on bad input."""
    out = []
    for tok in text.split(","):
        tok = tok.strip()
        try:
            f = float(tok)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}: '{tok}' is not a number (example: 1e5,1e6)")
        if f <= 0 or f != int(f):
            raise argparse.ArgumentTypeError(f"{what}: '{tok}' must be a positive integer")
        out.append(int(f))
    return out


def variant_for(batch, max_batch):
    """TRAK's CudaProjector.project choice: 8 rows if B <= 8, 16 if B <= 16, else 32, capped by
    proj_max_batch_size."""
    v = 32
    if batch <= 8:
        v = 8
    elif batch <= 16:
        v = 16
    return min(v, max_batch)


def cell_bytes(batch, p, k, esize, tiles, variant):
    """Device memory one call needs: the input, fast_jl's [B padded, tiles, k] float32 partial sums
    (summed over tiles afterwards) and the [B, k] result."""
    padded = -(-batch // variant) * variant
    return batch * p * esize + padded * min(tiles, p) * k * 4 + batch * k * 4


def plan(args, sms):
    """The cells in bench_gpu's order (dtype, B, p, k) with the reason each one is skipped, if any."""
    cells = []
    for dtype in args.dtypes:
        esize = {"f32": 4, "f16": 2}[dtype]
        for b in args.batches:
            v = variant_for(b, args.max_batch)
            for p in args.ps:
                for k in args.ks:
                    tiles = sms if args.tiles == "sms" else args.tiles
                    c = dict(name=f"fast_jl/{dtype}/B:{pretty(b)}/p:{pretty(p)}/k:{pretty(k)}",
                             dtype=dtype, B=b, p=p, k=k, fn=f"project_rademacher_{v}", variant=v,
                             num_feature_tiles=min(tiles, p),
                             bytes=cell_bytes(b, p, k, esize, tiles, v), skip=None)
                    if k % K_MULTIPLE:
                        c["skip"] = f"fast_jl needs k to be a multiple of {K_MULTIPLE}"
                    elif c["bytes"] > args.max_gb * 1e9:
                        c["skip"] = f"needs {c['bytes'] / 1e9:.1f} GB > --max-gb {args.max_gb:g}"
                    cells.append(c)
    return cells


def check_src(src):
    """Returns the functions fast_jl.cu binds; raises SystemExit naming the missing file."""
    missing = [f for f in FAST_JL_FILES if not os.path.isfile(os.path.join(src, f))]
    if missing:
        raise SystemExit(f"fast_jl source not found: {src} lacks {', '.join(missing)} (export "
                         "MadryLab/trak's fast_jl/ there; on the device tool pass carry [\".trak-src\"])")
    text = open(os.path.join(src, "fast_jl.cu")).read()
    names = re.findall(r'm\.def\(\s*"(\w+)"', text)
    for v in VARIANTS:
        if f"project_rademacher_{v}" not in names:
            raise SystemExit(f"{src}/fast_jl.cu does not bind project_rademacher_{v} (found: {names}); "
                             "this script was written against MadryLab/trak 35f8446")
    return names


# A translation unit that includes fast_jl.cu unchanged, after torch, with a definition of the
# deprecated AT_ASSERTM should a newer torch have dropped it. Used only by --compat.
COMPAT_TU = """#include <torch/extension.h>
#ifndef AT_ASSERTM
#define AT_ASSERTM(cond, ...) TORCH_CHECK(cond, __VA_ARGS__)
#endif
#include "{src}/fast_jl.cu"
"""


def build(args):
    names = check_src(args.src)
    print(f"fast_jl source: {args.src} (binds {', '.join(names)})", flush=True)
    import torch
    from torch.utils import cpp_extension
    # TRAK's setup.py forces TORCH_CUDA_ARCH_LIST="7.0+PTX", which CUDA 13's nvcc refuses
    # ("Unsupported gpu architecture 'compute_70'"), so the extension is built here with
    # cpp_extension.load and the arch of this GPU; the sources are used unchanged.
    if "TORCH_CUDA_ARCH_LIST" not in os.environ and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), CUDA_HOME {cpp_extension.CUDA_HOME}, "
          f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')}, MAX_JOBS={os.environ.get('MAX_JOBS')}",
          flush=True)
    os.makedirs(args.build_dir, exist_ok=True)
    source = os.path.join(os.path.abspath(args.src), "fast_jl.cu")
    if args.compat:
        source = os.path.join(args.build_dir, "fast_jl_compat.cu")
        with open(source, "w") as f:
            f.write(COMPAT_TU.format(src=os.path.abspath(args.src)))
    t0 = time.time()
    if cpp_extension.is_ninja_available():
        cpp_extension.load(name="fast_jl", sources=[source], build_directory=args.build_dir,
                           verbose=True, with_cuda=True)
    else:
        # Without ninja, cpp_extension.load refuses; setuptools' build_ext compiles serially.
        print("ninja not found: building with setuptools build_ext (no ninja)", flush=True)
        from setuptools import setup
        setup(name="fast_jl", ext_modules=[cpp_extension.CUDAExtension("fast_jl", [source])],
              cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=False)},
              script_args=["build_ext", "--build-lib", args.build_dir,
                           "--build-temp", os.path.join(args.build_dir, "tmp")])
    print(f"fast_jl built in {time.time() - t0:.1f} s into {args.build_dir}", flush=True)


def attrace_rates(path):
    """attrace's project/<cell> TFLOP/s from bench_gpu's Google Benchmark JSON or from table.py's
    text table; {} if the file has none."""
    rates = {}
    text = open(path).read()
    try:
        doc = json.loads(text)
        for b in doc.get("benchmarks", []):
            name = b["name"].split("/manual_time")[0].split("/iterations")[0]
            if name.startswith("project/") and not b.get("error_occurred") and "TFLOP/s" in b:
                rates[name[len("project/"):]] = b["TFLOP/s"]
    except json.JSONDecodeError:
        for line in text.splitlines():
            m = re.match(r"^((?:f32|bf16|f16)/B:\S+/p:\S+/k:\S+)\s+([0-9.]+)\s", line)
            if m:
                rates[m.group(1)] = float(m.group(2))
    return rates


def load_fast_jl(build_dir):
    import torch  # noqa: F401  (fast_jl.so links against torch's libraries)
    sys.path.insert(0, build_dir)
    try:
        import fast_jl
    except ImportError as e:
        raise SystemExit(f"cannot import fast_jl from {build_dir}: {e} (run the build step first)")
    return fast_jl


def sanity(fast_jl, sms):
    """Checks on small shapes that the built extension computes a Rademacher projection, before
    any timing: one-hot rows give entries of exactly +-1; the same seed gives the same output;
    the 32-row variant on 256 rows gives, for rows 0..7, what the 8-row variant gives for them."""
    import torch
    res = {}
    p, k = 4096, 1024
    x = torch.zeros(8, p, device="cuda")
    for i in range(8):
        x[i, 37 + 500 * i] = 1.0
    y = fast_jl.project_rademacher_8(x, k, 0, sms)
    torch.cuda.synchronize()
    res["one_hot_all_pm1"] = bool(((y == 1) | (y == -1)).all().item())
    res["one_hot_mean"] = float(y.mean().item())  # ~0 for balanced signs (sd 1/sqrt(8192) ~ 0.011)
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(256, 20000, device="cuda", generator=g)
    a = fast_jl.project_rademacher_32(x, k, 5, sms)
    b = fast_jl.project_rademacher_32(x, k, 5, sms)
    c = fast_jl.project_rademacher_8(x[:8].contiguous(), k, 5, sms)
    torch.cuda.synchronize()
    res["same_seed_identical"] = bool(torch.equal(a, b))
    res["variant32_rows0_7_equal_variant8"] = bool(torch.equal(a[:8], c))
    res["shape_ok"] = list(a.shape) == [256, k]
    res["passed"] = res["one_hot_all_pm1"] and res["same_seed_identical"] and res["shape_ok"] \
        and abs(res["one_hot_mean"]) < 0.06
    return res


def time_cell(fast_jl, c, x, args, remaining):
    """Median over repeats of one fast_jl call as TRAK makes it (allocation of the partial-sum
    tensor and the sum over feature tiles included), timed with CUDA events."""
    import torch
    fn = getattr(fast_jl, c["fn"])
    tiles = c["num_feature_tiles"]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def once():
        start.record()
        out = fn(x, c["k"], args.seed, tiles)
        end.record()
        end.synchronize()
        return out, start.elapsed_time(end) / 1e3

    for _ in range(args.warmup):
        out, warm = once()
    # Every cell is checked, not only timed: the squared norm of P x over k ||x||^2 is 1 in
    # expectation for +-1 entries (inputs are rounded to fp16 inside fast_jl; per-row sd sqrt(2/k)).
    xn = x.float().pow(2).sum(1)
    ratio = float((out.pow(2).sum(1) / (c["k"] * xn)).mean().item())
    finite = bool(torch.isfinite(out).all().item())
    shape_ok = list(out.shape) == [c["B"], c["k"]]
    del out
    reps = max(args.min_reps, min(args.max_reps, int(args.target_s / max(warm, 1e-6))))
    if math.isfinite(remaining):
        reps = max(1, min(reps, int(remaining / max(warm, 1e-6)) - 1))
    times = []
    for _ in range(reps):
        out, t = once()
        del out
        times.append(t)
    med = statistics.median(times)
    flop = 2.0 * c["B"] * c["p"] * c["k"]
    return dict(median_ms=med * 1e3, min_ms=min(times) * 1e3, max_ms=max(times) * 1e3, reps=reps,
                warmup_ms=warm * 1e3, tflops=flop / med / 1e12, norm_ratio=ratio, finite=finite,
                shape_ok=shape_ok,
                check_ok=finite and shape_ok and abs(ratio - 1) < 0.1,
                peak_gb=torch.cuda.max_memory_allocated() / 1e9)


def bench(args):
    cells = plan(args, args.sms or 132)
    if args.dry_run:
        for c in cells:
            print(f"{c['name']:34} {c['fn']:22} tiles {c['num_feature_tiles']:>4} "
                  f"{c['bytes'] / 1e9:7.2f} GB  {c['skip'] or 'run'}")
        return 0
    import torch
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch: fast_jl runs only on a GPU")
    fast_jl = load_fast_jl(args.build_dir)
    props = torch.cuda.get_device_properties(0)
    sms = args.sms or props.multi_processor_count
    cells = plan(args, sms)  # again, with this GPU's SM count (TRAK's num_feature_tiles)
    doc = dict(tool="fast_jl (MadryLab/trak)", trak_commit=args.trak_commit, device=props.name,
               sms=props.multi_processor_count, torch=torch.__version__, torch_cuda=torch.version.cuda,
               tiles=args.tiles, seed=args.seed, timing="CUDA events around each call; "
               f"{args.warmup} warm-up, median of repeats (>= {args.min_reps}, ~{args.target_s:g} s per cell)",
               flop="2*B*p*k per call", date=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    print(f"device: {props.name} ({props.multi_processor_count} SMs), torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}), num_feature_tiles {args.tiles} -> {sms}", flush=True)
    doc["sanity"] = sanity(fast_jl, sms)
    print(f"sanity: {doc['sanity']}", flush=True)
    if not doc["sanity"]["passed"]:
        print("SANITY FAILED: fast_jl does not behave as a Rademacher projection here; timings below "
              "are recorded but must not be reported as a comparison", flush=True)

    # Entries generated per second (launches * p * k / s), the slowest seen so far, predicts the
    # next cell's time so the loop stops before the deadline instead of being killed mid-cell.
    slowest_rate = None
    g = torch.Generator(device="cuda").manual_seed(args.seed)
    x, x_key = None, None
    for c in cells:
        if c["skip"]:
            continue
        remaining = args.deadline - time.time() if args.deadline else math.inf
        work = -(-c["B"] // c["variant"]) * c["p"] * c["k"]
        predicted = (args.warmup + args.min_reps) * work / slowest_rate if slowest_rate else 0.0
        if remaining < args.margin_s or predicted > remaining - args.margin_s:
            c["skip"] = f"time box: {remaining:.0f} s left, cell needs ~{predicted:.1f} s"
            print(f"{c['name']}: skipped ({c['skip']})", flush=True)
            continue
        key = (c["dtype"], c["B"], c["p"])
        if key != x_key:
            x = None
            torch.cuda.empty_cache()
            x = torch.randn(c["B"], c["p"], device="cuda", generator=g)
            if c["dtype"] == "f16":
                x = x.half()
            x_key = key
        torch.cuda.reset_peak_memory_stats()
        try:
            c.update(time_cell(fast_jl, c, x, args, remaining - args.margin_s))
        except (RuntimeError, ValueError) as e:
            c["skip"] = f"error: {str(e).splitlines()[0][:200]}"
            print(f"{c['name']}: {c['skip']}", flush=True)
            continue
        rate = work / (c["median_ms"] / 1e3)
        slowest_rate = rate if slowest_rate is None else min(slowest_rate, rate)
        print(f"{c['name']:34} {c['median_ms']:10.3f} ms {c['tflops']:8.2f} TFLOP/s  reps {c['reps']:>3}  "
              f"norm ratio {c['norm_ratio']:.3f}{'' if c['check_ok'] else '  CHECK FAILED'}", flush=True)
    x = None

    ours = attrace_rates(args.attrace) if args.attrace else {}
    print(f"\n{'cell':34} {'fn':22} {'tiles':>5} {'ms':>10} {'TFLOP/s':>8} {'attrace':>8} {'ratio':>6}  check")
    for c in cells:
        base = c["name"].split("/", 1)[1]
        a = ours.get(base)
        if c["skip"]:
            print(f"{c['name']:34} {c['fn']:22} {c['num_feature_tiles']:>5} {'skipped: ' + c['skip']}")
            continue
        ratio = f"{c['tflops'] / a:.2f}" if a else "-"
        print(f"{c['name']:34} {c['fn']:22} {c['num_feature_tiles']:>5} {c['median_ms']:10.3f} "
              f"{c['tflops']:8.2f} {a if a else '-':>8} {ratio:>6}  "
              f"{'ok' if c['check_ok'] else 'FAILED'} ({c['norm_ratio']:.3f})")
        if a:
            c["attrace_tflops"] = a
    if ours:
        print(f"attrace column: project/<cell> TFLOP/s from {args.attrace} (ratio = fast_jl / attrace)")
    doc["cells"] = cells
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"wrote {args.json}")
    failed = [c["name"] for c in cells if not c["skip"] and not c["check_ok"]]
    if failed:
        print(f"{len(failed)} cell(s) failed the norm check: {', '.join(failed)}")
    return 1 if failed or not doc["sanity"]["passed"] else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    here = os.path.dirname(os.path.abspath(__file__))
    default_src = os.path.join(here, "..", "..", "..", ".trak-src", "fast_jl")

    a = sub.add_parser("check", help="verify the fast_jl source and list what it binds")
    a.add_argument("--src", default=default_src)

    a = sub.add_parser("build", help="compile fast_jl for this GPU")
    a.add_argument("--src", default=default_src)
    a.add_argument("--build-dir", required=True)
    a.add_argument("--compat", action="store_true",
                   help="compile through a wrapper that defines AT_ASSERTM if torch lacks it")

    a = sub.add_parser("bench", help="time fast_jl on bench_gpu's projection cells")
    a.add_argument("--build-dir", default="/tmp/attrace-fast-jl")
    a.add_argument("--json", help="write the results here")
    a.add_argument("--attrace", help="bench_gpu JSON or table.py text with attrace's project/ cells")
    a.add_argument("--batches", type=lambda s: int_list(s, "--batches"), default=[8, 256])
    a.add_argument("--ps", type=lambda s: int_list(s, "--ps"), default=[100000, 1000000, 10000000])
    a.add_argument("--ks", type=lambda s: int_list(s, "--ks"), default=[512, 4096, 16384])
    a.add_argument("--dtypes", type=lambda s: s.split(","), default=["f32", "f16"],
                   help="f32 and/or f16 (fast_jl accepts only these two; f16 cells run after all f32)")
    a.add_argument("--tiles", default="sms",
                   help="num_feature_tiles: 'sms' (TRAK's choice: the GPU's SM count) or an integer")
    a.add_argument("--max-batch", type=int, default=32, choices=VARIANTS,
                   help="TRAK's proj_max_batch_size (rows per kernel launch)")
    a.add_argument("--seed", type=int, default=7)
    a.add_argument("--max-gb", type=float, default=40.0, help="skip cells needing more device memory")
    a.add_argument("--warmup", type=int, default=1)
    a.add_argument("--min-reps", type=int, default=3)
    a.add_argument("--max-reps", type=int, default=20)
    a.add_argument("--target-s", type=float, default=1.0, help="timed seconds aimed at per cell")
    a.add_argument("--deadline", type=float, default=0.0,
                   help="epoch seconds; cells predicted to end after it (minus --margin-s) are skipped")
    a.add_argument("--margin-s", type=float, default=8.0)
    a.add_argument("--sms", type=int, default=0, help="override the SM count (--dry-run assumes 132)")
    a.add_argument("--trak-commit", default="")
    a.add_argument("--dry-run", action="store_true", help="list the cells without a GPU")
    args = ap.parse_args(argv)

    if args.cmd == "check":
        print(f"fast_jl source: {os.path.abspath(args.src)}; binds {', '.join(check_src(args.src))}")
        return 0
    if args.cmd == "build":
        build(args)
        return 0
    bad = [d for d in args.dtypes if d not in ("f32", "f16")]
    if bad:
        ap.error(f"--dtypes: {bad} not supported; fast_jl takes float32 or float16 input (bf16 is refused)")
    if args.tiles != "sms":
        try:
            args.tiles = int(args.tiles)
            assert args.tiles > 0
        except (ValueError, AssertionError):
            ap.error(f"--tiles: '{args.tiles}' must be 'sms' or a positive integer")
    for name in ("warmup", "min_reps", "max_reps"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            ap.error(f"--{name.replace('_', '-')} must be >= {0 if name == 'warmup' else 1}")
    if args.warmup < 1 and not args.dry_run:
        ap.error("--warmup must be >= 1 (the warm-up call also feeds the per-cell norm check)")
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
