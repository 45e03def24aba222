"""Weight-sync transports on this machine, measured beside the plan's cost model (`compiler/sync_cost.py`).

    python bench/sync/bench_sync.py [--mib 256] [--bucket-mib 64] [--receivers 1 8 16]

One "model" of ``--mib`` MiB (float32 tensors of 16 MiB) streams in ``--bucket-mib`` buckets from
this process (the trainer) to receiving processes of this machine, each of which copies every
tensor into parameters of its own (the load every transport pays):

* handles: one receiver maps the sender's two shared-memory buffers (`engine.backends.handle_transport`,
  the colocated path; CUDA IPC on GPU), double-buffered;
* broadcast: 1, 8 and 16 receivers in a gloo group (`engine.backends.weight_transfer.BroadcastGroup`,
  the CPU split path and, before handles, the colocated GPU path).

Timed from the sender's first bucket to the last receiver's last copy (wall clock of this machine).
Beside each figure: the plan's estimate for the same bytes (`broadcast_seconds` at the plan's 2 GB/s
per link; `handles_seconds` at the plan's host copy bandwidth), and the per-link (broadcast) or copy
(handles) bandwidth the measurement implies. Then the 7B, 24B and 32B plans' sync estimates: with
handles (their plans: GPU copies and NVLink gathers, not measurable here) and, for comparison, the
gloo broadcast they used before, recomputed at the per-link bandwidth measured here.
Results: bench/results/sync.json and .md. Not a test. The receivers share this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

TENSOR_MIB = 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(mib: int):
    import torch

    n = TENSOR_MIB * 2**20 // 4
    return [(f"layer.{i}.weight", torch.full((n,), float(i))) for i in range(mib // TENSOR_MIB)]


def _params(mib: int):
    import torch

    n = TENSOR_MIB * 2**20 // 4
    return {f"layer.{i}.weight": torch.zeros(n) for i in range(mib // TENSOR_MIB)}


def _handle_receiver(channel, mib: int, out) -> None:
    import torch

    torch.set_num_threads(1)
    from engine.backends.handle_transport import HandleReceiver

    params = _params(mib)
    out.put("ready")
    for _ in range(2):  # an untimed sync (the segments are made), then the timed one
        rx = HandleReceiver(*channel)
        for bucket in rx.receive():
            for name, t in bucket:
                params[name].copy_(t)
        done = time.time()
        rx.close()
        out.put((done, all(float(p[0]) == float(name.split(".")[1]) for name, p in params.items())))


def _broadcast_receiver(port: int, world: int, rank: int, mib: int, out) -> None:
    import torch

    torch.set_num_threads(1)
    from engine.backends.weight_transfer import BroadcastGroup

    params = _params(mib)
    group = BroadcastGroup("127.0.0.1", port, world, rank)
    out.put("ready")
    for bucket in group.receive():
        for name, t in bucket:
            params[name].copy_(t)
    out.put((time.time(), all(float(p[0]) == float(name.split(".")[1]) for name, p in params.items())))


def _buckets(model, bucket_bytes: int):
    from engine.backends.manifest import bucketed

    return bucketed(iter(model), bucket_bytes)


def run_handles(mib: int, bucket_bytes: int) -> float:
    from engine.backends.handle_transport import HandleSender, buffer_bytes_for

    ctx = mp.get_context("spawn")
    model = _model(mib)
    sender = HandleSender("cpu", buffer_bytes_for(bucket_bytes, TENSOR_MIB * 2**20))
    out = ctx.Queue()
    p = ctx.Process(target=_handle_receiver, args=(sender.channel, mib, out))
    p.start()
    assert out.get(timeout=600) == "ready"
    sender.send(_buckets(model, bucket_bytes))  # warm-up: a run's first sync makes the segments
    out.get(timeout=600)
    t0 = time.time()
    sender.send(_buckets(model, bucket_bytes))
    done, ok = out.get(timeout=600)
    p.join()
    sender.close()
    assert ok, "handles: a receiver's parameters do not equal the model"
    return done - t0


def run_broadcast(mib: int, bucket_bytes: int, receivers: int) -> float:
    from engine.backends.weight_transfer import BroadcastGroup

    ctx = mp.get_context("spawn")
    model = _model(mib)
    port, world = _free_port(), receivers + 1
    out = ctx.Queue()
    procs = [ctx.Process(target=_broadcast_receiver, args=(port, world, r, mib, out)) for r in range(1, world)]
    for p in procs:
        p.start()
    group = BroadcastGroup("127.0.0.1", port, world, 0)
    for _ in procs:
        assert out.get(timeout=900) == "ready"
    t0 = time.time()
    group.send(_buckets(model, bucket_bytes))
    finished = [out.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
    assert all(ok for _, ok in finished), "broadcast: a receiver's parameters do not equal the model"
    return max(done for done, _ in finished) - t0


def plan_rows() -> list[dict]:
    """The 7B, 24B and 32B plans: their sync estimate (handles) and the gloo broadcast's, per step."""
    from compiler import compile_spec
    from compiler import memory as M
    from compiler.placement import HOST_BROADCAST_BW
    from compiler.sync_cost import broadcast_seconds

    rows = []
    for name in ("qwen2.5-7b", "mistral-24b", "qwen2.5-32b"):
        plan = compile_spec(str(ROOT / "specs" / f"{name}.yaml"))
        model = 2.0 * M.total_params(plan.architecture)
        receivers = len(plan.weight_sync.receivers)
        rows.append({"spec": name, "method": plan.weight_sync.method, "receivers": receivers,
                     "model_gb": model / 1e9, "sync_s": plan.estimates.sync_time_s, "step_s": plan.estimates.step_time_s,
                     "gloo_broadcast_s_plan_bw": broadcast_seconds(model, receivers, HOST_BROADCAST_BW)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--bucket-mib", type=int, default=64)
    ap.add_argument("--receivers", type=int, nargs="+", default=[1, 8, 16])
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from compiler.placement import HOST_BROADCAST_BW, HOST_COPY_BW
    from compiler.sync_cost import broadcast_seconds, handles_seconds, tree_rounds

    nbytes = args.mib * 2**20
    gb = nbytes / 1e9
    bucket = args.bucket_mib * 2**20
    rows = []
    t = run_handles(args.mib, bucket)
    est = handles_seconds(nbytes, HOST_COPY_BW)
    rows.append({"transport": "handles (shared memory)", "receivers": 1, "seconds": t, "s_per_gb": t / gb,
                 "plan_s": est, "plan_s_per_gb": est / gb, "implied_bw_gbs": 2 * gb / t})
    print(f"handles x1: {t:.2f} s ({t / gb:.2f} s/GB; plan {est:.2f} s)", flush=True)
    for n in args.receivers:
        t = run_broadcast(args.mib, bucket, n)
        est = broadcast_seconds(nbytes, n, HOST_BROADCAST_BW)
        rows.append({"transport": "gloo broadcast", "receivers": n, "seconds": t, "s_per_gb": t / gb,
                     "plan_s": est, "plan_s_per_gb": est / gb, "rounds": tree_rounds(n),
                     "implied_bw_gbs": tree_rounds(n) * gb / t})
        print(f"broadcast x{n}: {t:.2f} s ({t / gb:.2f} s/GB; plan {est:.2f} s)", flush=True)

    link = min(r["implied_bw_gbs"] for r in rows if r["transport"] == "gloo broadcast") * 1e9  # the slowest
    plans = plan_rows()
    for p in plans:
        p["gloo_broadcast_s_measured_bw"] = broadcast_seconds(p["model_gb"] * 1e9, p["receivers"], link)

    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "load_avg": os.getloadavg()},
              "model_mib": args.mib, "bucket_mib": args.bucket_mib, "tensor_mib": TENSOR_MIB,
              "plan_constants": {"HOST_BROADCAST_BW_gbs": HOST_BROADCAST_BW / 1e9, "HOST_COPY_BW_gbs": HOST_COPY_BW / 1e9},
              "transports": rows, "plans": plans, "measured_link_gbs": link / 1e9}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sync.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"Weight sync on this machine ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}): "
             f"{args.mib} MiB in {args.bucket_mib} MiB buckets", "",
             "| transport | receivers | measured s | s/GB | plan s | plan s/GB | implied GB/s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['transport']} | {r['receivers']} | {r['seconds']:.2f} | {r['s_per_gb']:.2f} | "
                     f"{r['plan_s']:.2f} | {r['plan_s_per_gb']:.2f} | {r['implied_bw_gbs']:.2f} |")
    lines += ["", f"Per-step sync of the paper plans (gloo columns: {tree_rounds(1)}..{tree_rounds(64)} tree rounds; "
              f"measured link {link / 1e9:.2f} GB/s):", "",
              "| spec | method | receivers | model GB | plan sync s (handles) | plan step s | gloo broadcast s at 2 GB/s | gloo broadcast s at measured link |",
              "|---|---|---|---|---|---|---|---|"]
    for p in plans:
        lines.append(f"| {p['spec']} | {p['method']} | {p['receivers']} | {p['model_gb']:.1f} | {p['sync_s']:.2f} | "
                     f"{p['step_s']:.1f} | {p['gloo_broadcast_s_plan_bw']:.0f} | {p['gloo_broadcast_s_measured_bw']:.0f} |")
    (out / "sync.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
