"""How farm drives an OpenVINO model per call, against OpenVINO's own way, side by side in one process.

Run:  python bench/openvino_call.py [--json out.json]

farm's ``OvModel.forward`` (farm/runtimes/openvino.py) on a prepared batch — the call every latency figure of an
OpenVINO job times — beside (a) the peer: the same compiled model's own infer request with its input tensors set
once and run with no arguments, as OpenVINO's benchmark_app runs it, its outputs read as numpy views (farm copies
them out and hands them over as torch tensors: 3-5 us a call), and (b) the call farm made before:
``request.infer(arrays)``, which dispatches its inputs through Python and pybind11 on every call, a path that throws
and catches C++ exceptions whose unwinding grows with every shared library in the process. Each model is timed in
two fresh processes: one that has imported only torch and OpenVINO, and one that has imported onnxruntime too, as a
farm worker has once it ran an ONNX Runtime job. One thread, pinned to one core; farm's own side-by-side harness
(farm.quant.side_by_side.measure_group, settled at 2 %) gives each ratio with its 95 % interval.

Models: farm:digits-cnn static int8 per channel (NNCF, 256 calibration samples), batch 8; farm:tiny-encoder
(token ids) OpenVINO dynamic (int8 weights), batch 8. Target: in both processes farm's call costs what the peer's
does, within 5 % (the interval of peer / farm reaches 0.95) or within the fixed cost of handing the outputs over
(copied out, wrapped as torch tensors, a Python call: at most 10 us a call, 5-6 % of the CNN's 0.1 ms). It is a
report, not a test: exit 0, PASS / MISS per line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

TOL = 0.05
HANDOVER_MS = 0.010
CASES = {
    "cnn": ("farm:digits-cnn", "sklearn:digits", "static", {"calibration_size": 256, "granularity": "per_channel"}),
    "encoder": ("farm:tiny-encoder", "tokens:16", "dynamic", {}),
}


def child(case: str, with_ort: bool) -> dict[str, Any]:
    """In this process: build ``case`` for OpenVINO and time farm's call beside the peer's and the old one."""
    if with_ort:
        import onnxruntime  # noqa: F401  (what a worker has loaded once it ran an ONNX Runtime job)
    import torch

    from farm.quant.config import parse_method
    from farm.quant.context import QuantContext
    from farm.quant.latency import LatencySettings
    from farm.quant.side_by_side import measure_group
    from farm.runtimes import openvino as ov_runtime
    from farm.zoo.data import calibration_subset, first_batch, load_dataset
    from farm.zoo.models import load_model

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    torch.set_num_threads(1)
    model_ref, data_ref, method, params = CASES[case]
    splits = load_dataset(data_ref)
    calibration = calibration_subset(splits, params["calibration_size"], 0) if "calibration_size" in params else None
    ctx = QuantContext(model_ref, example_input=first_batch(splits.test, 2), calibration=calibration, batch_size=32)
    with tempfile.TemporaryDirectory(prefix="bench-ov-call-") as tmp:
        built = ov_runtime.build(load_model(model_ref).module, parse_method(method, params), ctx, tmp, threads=1)
    ours = built.outcome
    prepared = ours.prepare_input(first_batch(splits.test, 8))
    peer = ours.model.create_infer_request()  # OpenVINO's own way: tensors set once, run with no arguments
    import openvino as ov

    for i, array in enumerate(prepared):
        peer.set_input_tensor(i, ov.Tensor(array, shared_memory=True))
    outputs = range(len(ours.model.outputs))

    def peer_call() -> list[Any]:  # and its outputs read, as numpy views of the request's buffers (no copy)
        peer.infer()
        return [peer.get_output_tensor(i).data for i in outputs]

    old = ours.model.create_infer_request()
    settings = LatencySettings(warmup_s=0.1, max_time_s=3.0, min_reps=50, rel_tol=0.02)
    pairs = measure_group(
        lambda: ours.forward(prepared), [peer_call, lambda: old.infer(prepared)], 8, settings=settings
    )
    out: dict[str, Any] = {"farm_p50_ms": pairs[0].trial.latency_p50_ms}
    for name, pair in zip(("peer", "old"), pairs, strict=True):
        out[f"{name}_p50_ms"] = pair.baseline.latency_p50_ms
        out[f"{name}_over_farm"] = [pair.speedup, pair.speedup_ci_low, pair.speedup_ci_high]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        case, _, state = args.child.partition(":")
        print(json.dumps(child(case, state == "ort")))
        return 0
    try:
        import openvino  # noqa: F401
    except ImportError as e:
        print(f"SKIPPED: openvino is not importable ({e}); pip install 'quantfarm[openvino]'")
        return 0
    from farm.quant.fingerprint import fingerprint, hardware_label

    hw = hardware_label(fingerprint("cpu"))
    figures: dict[str, Any] = {"hardware": hw}
    met = total = 0
    for case in CASES:
        for state in ("bare", "ort"):
            proc = subprocess.run(
                [sys.executable, __file__, "--child", f"{case}:{state}"], capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                print(f"MISS  ({case}, {state}) the child failed: {proc.stderr.strip().splitlines()[-1:]}  [{hw}]")
                total += 1
                continue
            f = json.loads(proc.stdout.strip().splitlines()[-1])
            figures[f"{case}:{state}"] = f
            loaded = "torch + openvino" if state == "bare" else "torch + openvino + onnxruntime"
            p, plo, phi = f["peer_over_farm"]
            o, olo, ohi = f["old_over_farm"]
            extra_ms = f["farm_p50_ms"] - f["peer_p50_ms"]
            ok = (phi >= 1 - TOL or extra_ms <= HANDOVER_MS) and plo <= 1 + TOL
            met, total = met + ok, total + 1
            print(
                f"{'PASS' if ok else 'MISS'}  ({case}, {loaded}) farm {f['farm_p50_ms']:.4f} ms, peer (tensors set "
                f"once) {f['peer_p50_ms']:.4f} ms: peer / farm {p:.3f} [{plo:.3f}, {phi:.3f}], "
                f"{extra_ms * 1000:+.1f} us a call (within {TOL:.0%} or {HANDOVER_MS * 1000:.0f} us); "
                f"the old call request.infer(arrays) {f['old_p50_ms']:.4f} ms: {o:.3f}x farm [{olo:.3f}, {ohi:.3f}]"
                f"  [{hw}]",
                flush=True,
            )
    print(f"{met}/{total} targets met  [{hw}]")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
