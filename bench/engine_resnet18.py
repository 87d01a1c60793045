"""ResNet-18 static int8 from QuantFarm's engine vs fp32 eager and vs onnxruntime's own static int8 recipe.

Run:  python bench/engine_resnet18.py [--json figures.json] [--quick] [--graphmodule] [--backends x86,onednn]

What it measures, side by side in one run on one machine (one harness: farm.quant.latency.measure_latency):
- torchvision ResNet-18 (random init, seeded; nothing is downloaded) at batch 1 and 8, with 1 thread and with
  torch's default thread count;
- fp32 eager vs static int8 from farm.quant.registry.apply_method (StaticConfig minmax / per_channel) on each
  engine backend asked for (default: x86, the default of a spec, and onednn), in the form the engine evaluates,
  times and ships (farm.quant.artifact.deployable: frozen TorchScript), calibrated on random crops of
  scikit-learn's bundled sample photos (china.jpg, flower.jpg), ImageNet-normalised;
- when onnxruntime imports: the same fp32 model exported to ONNX and quantized by onnxruntime's quantize_static
  (QDQ, per-channel, u8 activations / s8 weights, MinMax) on the SAME calibration crops, run by an
  InferenceSession with matching thread counts and its default settings;
- artifact size ratios: int8 / fp32 frozen TorchScript (farm.quant.artifact.model_size_bytes) and ORT int8 / fp32;
- with --graphmodule, also the x86 int8 FX GraphModule before scripting (~1 ms of Python per call more).
Contenders are interleaved per (threads, batch) cell, in alternating order over rounds, so drift hits all alike.
Each runtime keeps its default thread-pool behaviour (OpenMP's and onnxruntime's brief spin, then sleep), as a
user deploying one model gets it; OMP_WAIT_POLICY=PASSIVE (what farm workers set so that parallel jobs don't
spin against each other) costs torch about 2x at 2 threads, batch 1, here, and ACTIVE starves the peer.
It is a report, not a test: it always exits 0. Targets are printed with PASS / MISS and the measured figure, for
each backend of ours.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from farm.quant.artifact import deployable, model_size_bytes
from farm.quant.config import StaticConfig
from farm.quant.fingerprint import fingerprint, hardware_label
from farm.quant.latency import LatencySettings, measure_latency, torch_threads
from farm.quant.registry import QuantContext, apply_method
from farm.zoo.data import TensorSplit

SEED = 0
BATCHES = (1, 8)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SPEEDUP_TARGET, PEER_TARGET, SIZE_TARGET = 2.0, 1.0, 0.26


def photo_crops(n: int, seed: int) -> torch.Tensor:
    """``n`` random 224x224 crops (scales 0.3-1.0 of the short side, random flips) of sklearn's sample photos."""
    from sklearn.datasets import load_sample_images

    photos = [torch.tensor(im).permute(2, 0, 1).float() / 255.0 for im in load_sample_images().images]
    g = torch.Generator().manual_seed(seed)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    crops = []
    for i in range(n):
        img = photos[i % len(photos)]
        _, h, w = img.shape
        side = int(min(h, w) * (0.3 + 0.7 * torch.rand(1, generator=g).item()))
        top = int(torch.randint(0, h - side + 1, (1,), generator=g))
        left = int(torch.randint(0, w - side + 1, (1,), generator=g))
        crop = img[None, :, top : top + side, left : left + side]
        crop = torch.nn.functional.interpolate(crop, size=(224, 224), mode="bilinear", antialias=True)[0]
        if torch.rand(1, generator=g).item() < 0.5:
            crop = crop.flip(-1)
        crops.append((crop.clamp(0, 1) - mean) / std)
    return torch.stack(crops).contiguous()


def build_ort(model: torch.nn.Module, calib: torch.Tensor, workdir: Path) -> tuple[Path, Path]:
    """Export ``model`` to ONNX and quantize it with onnxruntime's static int8 recipe; (fp32 path, int8 path)."""
    import onnxruntime.quantization as ortq
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, pre, int8 = workdir / "fp32.onnx", workdir / "fp32.pre.onnx", workdir / "int8.onnx"
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated but is the one asked for
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (calib[:1],),
            str(fp32),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    quant_pre_process(str(fp32), str(pre))

    class Reader(ortq.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calib.split(8))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch.numpy()}

    recipe: dict[str, Any] = {"quant_format": ortq.QuantFormat.QDQ, "per_channel": True}
    recipe.update(activation_type=ortq.QuantType.QUInt8, weight_type=ortq.QuantType.QInt8)
    ortq.quantize_static(str(pre), str(int8), Reader(), calibrate_method=ortq.CalibrationMethod.MinMax, **recipe)
    return fp32, int8


def ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def cosine(a: Any, b: Any) -> float:
    a, b = torch.as_tensor(np.asarray(a)).flatten().double(), torch.as_tensor(np.asarray(b)).flatten().double()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def measure_cell(fns: dict[str, Callable[[], object]], batch: int, s: LatencySettings, rounds: int) -> dict:
    """Time every contender ``rounds`` times, reversing the order each round; median p50 and p90 over rounds."""
    runs: dict[str, list[Any]] = {name: [] for name in fns}
    for r in range(rounds):
        for name in list(fns)[:: 1 if r % 2 == 0 else -1]:
            runs[name].append(measure_latency(fns[name], batch, settings=s))
    return {
        name: {
            "p50_ms": statistics.median(x.latency_p50_ms for x in lats),
            "p90_ms": statistics.median(x.latency_p90_ms for x in lats),
            "p50_rounds_ms": [x.latency_p50_ms for x in lats],
            "reps": sum(x.reps for x in lats),
        }
        for name, lats in runs.items()
    }


def ratios(res: dict, backends: list[str]) -> dict[str, float | None]:
    """Speed ratios of one cell (each > 1 means the second-named contender is faster), and round-to-round noise."""
    out: dict[str, float | None] = {}
    for b in backends:
        out[f"speedup_{b}"] = res["fp32"]["p50_ms"] / res[f"int8_{b}"]["p50_ms"]
        if "ort_int8" in res:
            out[f"ort_over_{b}"] = res["ort_int8"]["p50_ms"] / res[f"int8_{b}"]["p50_ms"]
    if "ort_int8" in res and "int8_fx" in res:
        out["ort_over_fx"] = res["ort_int8"]["p50_ms"] / res["int8_fx"]["p50_ms"]
    single = all(len(r["p50_rounds_ms"]) < 2 for r in res.values())
    out["noise"] = None if single else max(max(r["p50_rounds_ms"]) / min(r["p50_rounds_ms"]) - 1 for r in res.values())
    return out


def columns(backends: list[str]) -> list[tuple[str, str, bool]]:
    """(key, header, is a ratio) of the table."""
    cols = [("fp32", "fp32", False)]
    cols += [(f"int8_{b}", f"int8 {b}", False) for b in backends]
    cols += [(f"speedup_{b}", f"fp32/{b}"[:9], True) for b in backends]
    cols += [("ort_fp32", "ORT fp32", False), ("ort_int8", "ORT int8", False)]
    cols += [(f"ort_over_{b}", f"ORT/{b}"[:9], True) for b in backends]
    return cols + [("int8_fx", "int8 FX module", False), ("ort_over_fx", "ORT/FX", True)]


def print_table(cells: list[dict], backends: list[str]) -> None:
    cols = [c for c in columns(backends) if c[0] in cells[0]]
    print("\nlatency ms: p50 (p90), median over rounds; X/Y = p50 of X / p50 of Y (> 1: Y is faster)")
    print("noise: worst round-to-round p50 change in the row; int8 = ours, frozen TorchScript, what the engine ships")
    head = f"{'thr':>3} {'bat':>3} |" + "".join(f" {h:>9}" if r else f" {h:>18}" for _, h, r in cols) + "  noise"
    print(head + "\n" + "-" * len(head))
    for c in cells:
        row = "".join(f" {c[k]:8.2f}x" if r else f" {c[k]['p50_ms']:8.2f} ({c[k]['p90_ms']:7.2f})" for k, _, r in cols)
        noise = "    -" if c["noise"] is None else f"{c['noise']:5.0%}"
        print(f"{c['threads']:>3} {c['batch']:>3} |{row} {noise}")


def check_targets(
    cells: list[dict], size: dict, skipped: str | None, backends: list[str]
) -> list[tuple[str, bool | None, str]]:
    out: list[tuple[str, bool | None, str]] = []
    for b in backends:
        for c in cells:
            if c["batch"] == max(BATCHES):
                name = (
                    f"{b}: int8 >= {SPEEDUP_TARGET:.1f}x faster than fp32, batch {c['batch']}, {c['threads']} thread(s)"
                )
                out.append((name, c[f"speedup_{b}"] >= SPEEDUP_TARGET, f"{c[f'speedup_{b}']:.2f}x"))
        if skipped is None:
            for c in cells:
                name = (
                    f"{b}: int8 no slower than ORT int8 (ORT/ours >= 1.0), {c['threads']} thread(s), batch {c['batch']}"
                )
                out.append((name, c[f"ort_over_{b}"] >= PEER_TARGET, f"{c[f'ort_over_{b}']:.3f}x"))
        else:
            out.append((f"{b}: int8 no slower than ORT int8", None, f"skipped: {skipped}"))
        ratio = size[f"ratio_{b}"]
        out.append((f"{b}: size ratio int8/fp32 <= {SIZE_TARGET}", ratio <= SIZE_TARGET, f"{ratio:.3f}"))
    return out


def _on_engine(outcome: Any, x: torch.Tensor) -> object:
    """Run one of our int8 models on the engine it was converted for (each contender sets its own)."""
    torch.backends.quantized.engine = outcome.engine
    return outcome.forward(x)


def _on_engine_fx(graph: tuple[Any, str], x: torch.Tensor) -> object:
    torch.backends.quantized.engine = graph[1]
    return graph[0](x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    ap.add_argument("--quick", action="store_true", help="shortened run (smoke test); figures are rough")
    ap.add_argument("--graphmodule", action="store_true", help="also time the int8 FX GraphModule before scripting")
    ap.add_argument("--calibration-size", type=int, default=48, help="calibration crops (default 48)")
    ap.add_argument("--backends", default="x86,onednn", help="engine backends of ours to time (default x86,onednn)")
    args = ap.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]

    torch.manual_seed(SEED)
    all_threads = torch.get_num_threads()
    thread_counts = sorted({1, all_threads})
    rounds = 1 if args.quick else 5
    settings = (
        LatencySettings(warmup_s=0.05, warmup_reps=1, min_reps=5, max_time_s=0.3, block=5)
        if args.quick
        else LatencySettings(warmup_s=0.5, warmup_reps=2, min_reps=30, max_time_s=5.0, block=5, rel_tol=0.02)
    )
    n_calib = 8 if args.quick else args.calibration_size

    fp = fingerprint()
    print(f"machine   {hardware_label(fp)}")
    print(f"          isa={' '.join(fp['isa'])} cpu_capability={fp['torch_cpu_capability']} cpus={fp['cpus']}")
    print(f"          torch {fp['torch']}  torchvision {fp['torchvision']}  python {fp['python']}  {fp['os']}")
    omp = os.environ.get("OMP_WAIT_POLICY", "<unset>")
    print(f"threads   1 and {all_threads} (torch default; os.cpu_count()={os.cpu_count()}), OMP_WAIT_POLICY={omp}")
    load = {"start": os.getloadavg()[0]}
    print(f"load      1-min load average {load['start']:.2f} at start (above ~0.5: other work shares the CPUs)")
    print(f"timing    {settings}, {rounds} round(s) per cell, order alternating")

    calib, inputs = photo_crops(n_calib, SEED), photo_crops(max(BATCHES), SEED + 1)
    model = torchvision.models.resnet18(weights=None).eval()
    with torch.inference_mode():
        ref = model(inputs)
    ours, fidelity, graph = {}, {}, None
    size: dict[str, Any] = {"fp32_bytes": model_size_bytes(model, calib[:1])}
    for b in backends:
        cfg = StaticConfig(backend=b, observer="minmax", granularity="per_channel", calibration_size=n_calib)
        ctx = QuantContext(model_ref="torchvision:resnet18", example_input=calib[:1], calibration=TensorSplit(calib))
        outcome = apply_method(model, cfg, ctx)
        print(f"ours      {b}: {cfg.label()}: calibrate {outcome.timings_s.get('calibrate', 0):.1f}s")
        with torch.inference_mode(), outcome.active():
            fidelity[f"{b}_int8_cosine"] = cosine(ref, outcome.forward(outcome.prepare_input(inputs)))
        with outcome.active():
            size[f"int8_{b}_bytes"] = model_size_bytes(outcome.model, calib[:1])
            if args.graphmodule and graph is None:
                graph = (outcome.model, b)
            outcome.model, _ = deployable(outcome.model, calib[:1])
        size[f"ratio_{b}"] = size[f"int8_{b}_bytes"] / size["fp32_bytes"]
        ours[b] = outcome

    ort_paths: tuple[Path, Path] | None = None
    skipped = None
    workdir = tempfile.TemporaryDirectory(prefix="bench-rn18-")
    try:
        import onnxruntime
    except ImportError as e:
        skipped = f"onnxruntime is not importable ({e})"
        print(f"peer      SKIPPED: {skipped}")
    else:
        ort_paths = build_ort(model, calib, Path(workdir.name))
        size.update(ort_fp32_bytes=ort_paths[0].stat().st_size, ort_int8_bytes=ort_paths[1].stat().st_size)
        size["ort_ratio"] = size["ort_int8_bytes"] / size["ort_fp32_bytes"]
        ort_out = ort_session(ort_paths[1], 1).run(None, {"input": inputs.numpy()})[0]
        fidelity["ort_int8_cosine"] = cosine(ref, ort_out)
        print(f"peer      onnxruntime {onnxruntime.__version__} quantize_static QDQ per-channel u8/s8 MinMax")
    cos = "  ".join(f"{k}={v:.4f}" for k, v in fidelity.items())
    print(f"fidelity  logit cosine vs fp32 on the bench crops: {cos}")

    cells = []
    for threads in thread_counts:
        sessions = [ort_session(p, threads) for p in ort_paths] if ort_paths else []
        for batch in BATCHES:
            x = inputs[:batch].contiguous()
            feed = {"input": x.numpy()}
            fns: dict[str, Callable[[], object]] = {"fp32": lambda x=x: model(x)}
            for b, outcome in ours.items():
                xq = outcome.prepare_input(x)
                fns[f"int8_{b}"] = lambda o=outcome, x=xq: _on_engine(o, x)
            if sessions:
                fns["ort_fp32"] = lambda s=sessions[0], f=feed: s.run(None, f)
                fns["ort_int8"] = lambda s=sessions[1], f=feed: s.run(None, f)
            if graph is not None:
                fns["int8_fx"] = lambda g=graph, x=x: _on_engine_fx(g, x)
            with torch_threads(threads):
                res = measure_cell(fns, batch, settings, rounds)
            cells.append({"threads": threads, "batch": batch, **res, **ratios(res, backends)})
            print(f"  measured threads={threads} batch={batch}", file=sys.stderr, flush=True)
        del sessions
    workdir.cleanup()

    load["end"] = os.getloadavg()[0]
    print_table(cells, backends)
    for b in backends:
        print(
            f"\nsize      ours {b}: int8 {size[f'int8_{b}_bytes'] / 1e6:.2f} MB"
            f" / fp32 {size['fp32_bytes'] / 1e6:.2f} MB"
            f" = {size[f'ratio_{b}']:.3f} (frozen TorchScript)"
        )
    if ort_paths:
        print(
            f"          ORT:  int8 {size['ort_int8_bytes'] / 1e6:.2f} MB / fp32 {size['ort_fp32_bytes'] / 1e6:.2f} MB"
            f" = {size['ort_ratio']:.3f} (.onnx files)"
        )

    print(f"load      1-min load average {load['end']:.2f} at end")
    by = {(c["threads"], c["batch"]): c for c in cells}
    for (threads, batch), c in by.items():
        names = [k for k, v in c.items() if isinstance(v, dict)]
        slower = [k for k in names if threads > 1 and c[k]["p50_ms"] > by[1, batch][k]["p50_ms"]]
        if slower:  # more threads yet slower: the CPUs are shared, throttled or spin-waiting against each other
            print(f"note      {threads} threads slower than 1 at batch {batch} for: {', '.join(slower)}")

    targets = check_targets(cells, size, skipped, backends)
    print("\ntargets" + (" (--quick: rough figures)" if args.quick else ""))
    for name, ok, figure in targets:
        verdict = "SKIP" if ok is None else ("PASS" if ok else "MISS")
        print(f"  {verdict}  {name:<72} {figure}")

    if args.json:
        configs = {b: StaticConfig(backend=b, calibration_size=n_calib).to_dict() for b in backends}
        doc = dict(fingerprint=fp, hardware=hardware_label(fp), configs=configs, settings=settings.__dict__)
        doc.update(rounds=rounds, quick=args.quick, cells=cells, size=size, fidelity=fidelity, load=load)
        doc["peer_skipped"] = skipped
        doc["targets"] = [{"name": n, "pass": ok, "figure": f} for n, ok, f in targets]
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
