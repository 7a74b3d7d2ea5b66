"""Training step time and memory, edgedl against PyTorch (CPU), on the zoo's digits CNN with the same weights
and batches: full training ("all") and last-layer fine-tuning ("last:1"), Adam.

    pip install ".[test]" torch && python benchmarks/bench_train.py [--batch 32] [--steps 200] [--threads 1]

Each (framework, policy) runs in a fresh process. Time: median step (forward, backward, optimizer) after
warm-up steps. Memory: the growth of the process's peak resident set over the timed steps, with the peak
reset after the warm-up (``/proc/self/clear_refs``), i.e. what training needs beyond the loaded model and
runtime.
"""
import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, os, statistics, sys, time
import numpy as np
framework, policy = sys.argv[1], sys.argv[2]
batch, steps, threads = (int(v) for v in sys.argv[3:6])
from edgedl import zoo
from onnx import numpy_helper
proto = zoo.digits_cnn()
w = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
rng = np.random.default_rng(0)
x = rng.uniform(0, 1, (batch, 1, 8, 8)).astype(np.float32)
y = rng.integers(0, 10, batch)

def rss_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])

if framework == "edgedl":
    import edgedl
    edgedl.set_num_threads(threads)
    from edgedl.train import Adam
    tr = edgedl.Trainer(edgedl.load(proto), optimizer=Adam(lr=1e-3), trainable=policy)
    step = lambda: tr.train_step(x, y)
else:
    import torch
    torch.set_num_threads(threads)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(128, 10))
    with torch.no_grad():
        for mod, (wn, bn) in zip([net[0], net[3], net[7]], [("w1", "b1"), ("w2", "b2"), ("w3", "b3")]):
            mod.weight.copy_(torch.from_numpy(w[wn])); mod.bias.copy_(torch.from_numpy(w[bn]))
    params = list(net.parameters()) if policy == "all" else list(net[7].parameters())
    if policy != "all":
        for p in net.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    lossf = torch.nn.CrossEntropyLoss()
    def step():
        opt.zero_grad(set_to_none=True)
        loss = lossf(net(xt), yt)
        loss.backward()
        opt.step()
for _ in range(20):
    step()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak resident set
base = rss_kb("VmRSS")
times = []
for _ in range(steps):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
print(json.dumps({"ms": statistics.median(times) * 1e3, "peak_kb": rss_kb("VmHWM") - base}))
"""


def run(framework: str, policy: str, batch: int, steps: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, framework, policy, str(batch), str(steps), str(threads)],
                         capture_output=True, text=True, check=True, env=dict(os.environ))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    print(f"digits CNN, batch {args.batch}, Adam, {args.threads} thread(s), median of {args.steps} steps")
    print("| policy | edgedl step | PyTorch step | ratio | edgedl memory growth | PyTorch memory growth |")
    print("|---|---|---|---|---|---|")
    for policy in ("all", "last:1"):
        e = run("edgedl", policy, args.batch, args.steps, args.threads)
        t = run("torch", policy, args.batch, args.steps, args.threads)
        print(f"| {policy} | {e['ms']:.3f} ms | {t['ms']:.3f} ms | {e['ms'] / t['ms']:.2f} | {e['peak_kb']} kB | "
              f"{t['peak_kb']} kB |")


if __name__ == "__main__":
    main()
