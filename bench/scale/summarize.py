#!/usr/bin/python3
"""Table of a bench/scale/run.sh run, from its logs (time -v output, attrace's progress lines,
/proc/loadavg before and after each command), as Markdown on stdout, plus the least-squares
exponent of time against n_train on log-log axes."""
import argparse
import re
import sys

import numpy as np

GIB = 1 << 30


def parse_time(path):
    """Wall, user, sys seconds and peak RSS bytes from /usr/bin/time -v output."""
    text = open(path).read()

    def field(label):
        for line in text.splitlines():
            if line.strip().startswith(label):
                return line.rsplit(": ", 1)[1].strip()
        sys.exit(f"summarize: '{label}' not found in {path}")

    parts = [float(p) for p in field("Elapsed (wall clock) time").split(":")]
    wall = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    return {"wall": wall, "user": float(field("User time (seconds)")), "sys": float(field("System time (seconds)")),
            "rss": int(field("Maximum resident set size (kbytes)")) * 1024}


def final_line_ms(path, label_regex):
    """(milliseconds, label match) of the last final progress line whose label matches."""
    found = None
    for line in open(path, errors="replace"):
        m = re.match(r"(?:.*\r\x1b\[K)?(" + label_regex + r"): (\d+)/(\d+) \(.* (\d+) ms\)", line.rstrip("\n"))
        if m:
            found = (int(m.group(m.lastindex)), m)
    return found


def load(prefix):
    """'before -> after (mean of the 1-min load sampled every 15 s during the command)'."""
    ends = [" ".join(l.split()[:3]) for l in open(prefix + ".load").read().split("\n") if l.strip()]
    try:
        during = [float(l.split()[0]) for l in open(prefix + ".loadtrace") if l.strip()]
    except FileNotFoundError:
        during = []
    mean = f" (mean {sum(during) / len(during):.2f} over {len(during)} samples)" if during else ""
    return " -> ".join(ends) + mean


def plan_train_tile(budget, n, m, width, checkpoints, tranches, top_k):
    """plan_scoring's train tile (engine/src/score.cpp, float32 features, equal widths), recomputed
    here because attrace does not print its plan."""
    eb, block = 4, 4096
    fixed = 8.0 * n + 16.0 * tranches * m + 2.0 * 16.0 * top_k * m
    free = budget - fixed
    per_query = width * checkpoints * eb + 16.0 * tranches + 64.0 * max(top_k, 1)
    qt = max(1, min(m, int(0.5 * free / per_query)))
    need = lambda q, t: per_query * q + t * (width * eb + 8.0 * q)
    while qt > 1 and need(qt, min(n, block)) > free:
        qt //= 2
    tt = min(int((free - per_query * qt) / (width * eb + 8.0 * qt)), n)
    if tt < n:
        tt = max(block, tt // block * block)
    return qt, tt


def parse_size(text):
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40, "K": 1e3, "M": 1e6, "G": 1e9, "KB": 1e3,
             "MB": 1e6, "GB": 1e9}
    m = re.fullmatch(r"([0-9.]+)\s*([A-Za-z]*)", text)
    return int(float(m.group(1)) * units.get(m.group(2), 1))


def slope(xs, ys):
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0]) if len(xs) >= 2 else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--sizes", required=True)
    ap.add_argument("--n-query", type=int, required=True)
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--checkpoints", type=int, required=True)
    ap.add_argument("--memory-limit", required=True)
    ap.add_argument("--tranches", type=int, required=True)
    a = ap.parse_args()
    logs = f"{a.work}/logs"
    sizes = sorted(int(s) for s in a.sizes.split())
    m, k, c = a.n_query, a.k, a.checkpoints
    budget = parse_size(a.memory_limit)

    q = parse_time(f"{logs}/featurize_query_{m}.time")
    print(f"n_query = {m}, k = {k}, checkpoints = {c}, dense Rademacher projection, scoring = blas (ieee), "
          f"memory limit {a.memory_limit}, {a.tranches} tranches, top_k = 10, output.scores = never\n")
    print(f"Query featurization ({m} rows): wall {q['wall']:.1f} s, user+sys {q['user'] + q['sys']:.1f} s, "
          f"peak RSS {q['rss'] / GIB:.2f} GiB, load {load(f'{logs}/featurize_query_{m}')}\n")
    print("| n_train | featurize wall (s) | featurize user+sys (s) | featurize peak RSS (GiB) | score wall (s) "
          "| score user+sys (s) | scoring kernel (s) | GFLOP/s (kernel) | GFLOP/s (score wall) | score peak RSS (GiB) "
          "| query tiles | train tile (plan) | featurize load avg | score load avg |")
    print("|" + "---|" * 14)
    rows = []
    over = []
    for n in sizes:
        f = parse_time(f"{logs}/featurize_train_{n}.time")
        s = parse_time(f"{logs}/score_{n}.time")
        hit = final_line_ms(f"{logs}/score_{n}.err", r"scoring \((\d+) query tiles?\)")
        if not hit:
            sys.exit(f"summarize: no final 'scoring' progress line in {logs}/score_{n}.err")
        kernel = hit[0] / 1000.0
        tiles = int(hit[1].group(2))
        flop = 2.0 * n * m * k * c
        _, tt = plan_train_tile(budget, n, m, k, c, a.tranches, 10)
        rows.append((n, f["wall"], kernel, s["wall"]))
        for what, t in (("featurize", f), ("score", s)):
            if t["rss"] > 8 * GIB:
                over.append(f"{what} at n_train = {n}: {t['rss'] / GIB:.2f} GiB")
        print(f"| {n} | {f['wall']:.1f} | {f['user'] + f['sys']:.1f} | {f['rss'] / GIB:.2f} | {s['wall']:.1f} "
              f"| {s['user'] + s['sys']:.1f} | {kernel:.1f} | {flop / kernel / 1e9:.1f} | {flop / s['wall'] / 1e9:.1f} "
              f"| {s['rss'] / GIB:.2f} | {tiles} | {tt} | {load(f'{logs}/featurize_train_{n}')} | {load(f'{logs}/score_{n}')} |")
    ns = [r[0] for r in rows]
    steps = [f"featurize_query_{m}"] + [f"{w}_{n}" for n in sizes for w in ("featurize_train", "score")]
    builds = {}
    for step in steps:
        try:
            builds.setdefault(open(f"{logs}/{step}.version").read().strip(), []).append(step)
        except FileNotFoundError:
            builds.setdefault("(not recorded)", []).append(step)
    print()
    for version, which in builds.items():
        print(f"Binary {version}: {', '.join(which)}")
    print()
    print(f"Fitted exponent (least squares, log time vs log n_train over {ns}):")
    print(f"- scoring kernel time: {slope(ns, [r[2] for r in rows]):.3f}")
    print(f"- score command wall time: {slope(ns, [r[3] for r in rows]):.3f}")
    print(f"- featurize (train) wall time: {slope(ns, [r[1] for r in rows]):.3f}")
    print()
    print("Scoring kernel = the time on attrace's final 'scoring (...)' progress line (every tile: GEMMs, "
          "finiteness check, tranche sums, top-k merge); score wall = the whole `attrace score` command "
          "(opening stores, scoring, quality signals, writing the report). GFLOP/s = 2 n_train n_query k "
          "checkpoints / time. 'train tile (plan)' is recomputed from plan_scoring's formula: attrace does "
          "not print its plan.")
    print("Peak RSS over 8 GiB: " + ("; ".join(over) if over else "none"))


if __name__ == "__main__":
    main()
