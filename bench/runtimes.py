"""farm's ONNX Runtime engine (farm/runtimes) vs onnxruntime's own recipe scripted by hand, side by side in one run.

Run:  python bench/runtimes.py [--quick] [--threads 2] [--batch 8] [--weights resnet18.pt] [--json out.json]

- (1) ResNet-18 (torchvision, random init seeded, or a state dict from --weights), batch 8, 2 threads: farm's
  static int8 (export_onnx + quantize_static_onnx: QDQ, per-channel, MinMax, u8 activations / s8 weights) vs
  onnxruntime's quantize_static written out here (quant_pre_process, QDQ, per_channel=True, the same
  calibration batches). Targets: latency ours/peer within 10 %; size int8/fp32 .onnx <= 0.26; logit cosine vs
  the fp32 ORT session >= 0.999 on synthetic inputs.
- (2) a token-id model (farm:tiny-encoder; a small Embedding+Linear encoder here if it is missing), batch 8:
  farm's dynamic per-channel (quantize_dynamic_onnx) vs quantize_dynamic(per_channel=True) by hand. Targets:
  latency within 10 %, cosine (vs the fp32 ORT session) within 10 % of the peer's.
Latency: both sessions alternate in ABAB blocks of ``--block`` calls (one untimed call first, the side that goes
first swapping each pair), the median per side over all timed calls, ratio ours / peer. The CPU model and its
ISA flags are printed beside every figure. It is a report, not a test: it exits 0 and prints PASS / MISS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

SEED = 0
LATENCY_TOL, SIZE_TARGET, COSINE_TARGET, COSINE_TOL = 0.10, 0.26, 0.999, 0.10


class Report:
    """Prints one figure per line with the machine beside it, and keeps the targets."""

    def __init__(self, threads: int) -> None:
        from farm.quant.fingerprint import fingerprint, hardware_label

        self.fp = fingerprint("cpu")
        self.hw = hardware_label(self.fp)  # the CPU model and its key ISA flags; every flag is printed once
        self.threads = threads
        self.targets: list[dict[str, Any]] = []

    def say(self, text: str) -> None:
        print(f"{text}  [{self.hw}, threads={self.threads}]", flush=True)

    def target(self, name: str, ok: bool, figure: str) -> None:
        self.targets.append({"name": name, "pass": ok, "figure": figure})
        self.say(f"{'PASS' if ok else 'MISS'}  {name}: {figure}")


def session(path: Path, threads: int) -> Any:
    """The peer's session, written out: intra-op threads, all graph optimizations, CPU provider."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def peer_static(fp32: Path, out: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    """onnxruntime's static recipe by hand: pre-process, QDQ, per-channel, u8/s8, MinMax."""
    import onnxruntime.quantization as ortq
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre))

    class Reader(ortq.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    ortq.quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=ortq.QuantFormat.QDQ,
        per_channel=True,
        activation_type=ortq.QuantType.QUInt8,
        weight_type=ortq.QuantType.QInt8,
        calibrate_method=ortq.CalibrationMethod.MinMax,
    )


def peer_dynamic(fp32: Path, out: Path) -> None:
    """onnxruntime's dynamic recipe by hand: pre-process, quantize_dynamic(per_channel=True), QInt8 weights."""
    import onnxruntime.quantization as ortq
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    ortq.quantize_dynamic(str(pre), str(out), per_channel=True, weight_type=ortq.QuantType.QInt8)


def abab(ours: Callable[[], object], peer: Callable[[], object], pairs: int, block: int) -> dict[str, float]:
    """Alternate blocks of ``block`` calls (one untimed first), swapping which side leads each pair."""
    times: dict[str, list[float]] = {"ours": [], "peer": []}
    sides = {"ours": ours, "peer": peer}
    for fn in (ours, peer):  # warm both
        for _ in range(3):
            fn()
    for p in range(pairs):
        for name in ("ours", "peer") if p % 2 == 0 else ("peer", "ours"):
            fn = sides[name]
            fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    ours_ms, peer_ms = (statistics.median(times[k]) * 1000 for k in ("ours", "peer"))
    return {"ours_p50_ms": ours_ms, "peer_p50_ms": peer_ms, "ratio": ours_ms / peer_ms, "calls": len(times["ours"])}


def cosine(a: Any, b: Any) -> float:
    a, b = torch.as_tensor(np.asarray(a)).flatten().double(), torch.as_tensor(np.asarray(b)).flatten().double()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def resnet(args: argparse.Namespace, rep: Report, work: Path) -> dict[str, Any]:
    """Section (1): static int8 ResNet-18, ours vs the peer's hand-written recipe."""
    import torchvision

    from farm.runtimes.onnx_export import export_onnx
    from farm.runtimes.ort import OrtModel
    from farm.runtimes.ort_quantize import quantize_static_onnx

    torch.manual_seed(SEED)
    model = torchvision.models.resnet18(weights=None).eval()
    if args.weights:
        model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    g = torch.Generator().manual_seed(SEED)
    calib = [torch.randn(args.batch, 3, 224, 224, generator=g) for _ in range(args.calibration_batches)]
    x = torch.randn(args.batch, 3, 224, 224, generator=g)
    info = export_onnx(model, x[:1], work / "rn18.onnx")
    began = time.perf_counter()
    ours_info = quantize_static_onnx(info.path, work / "rn18.ours.onnx", calib, per_channel=True)
    ours_s = time.perf_counter() - began
    began = time.perf_counter()
    peer_static(Path(info.path), work / "rn18.peer.onnx", [{"input": b.numpy()} for b in calib])
    peer_s = time.perf_counter() - began
    rep.say(f"resnet18 exported opset {info.opset} ({info.exporter}); quantize ours {ours_s:.1f}s, peer {peer_s:.1f}s")
    rep.say(f"resnet18 ours coverage {ours_info.coverage.by_op}, preprocessed={ours_info.preprocessed}")

    ours = OrtModel.load(ours_info.path, threads=args.threads)
    peer, fp32 = session(work / "rn18.peer.onnx", args.threads), session(Path(info.path), args.threads)
    feeds = ours.prepare_input(x)
    ref = fp32.run(None, {"input": x.numpy()})[0]
    cos_ours, cos_peer = cosine(ref, ours.forward(feeds)), cosine(ref, peer.run(None, {"input": x.numpy()})[0])
    lat = abab(lambda: ours.forward(feeds), lambda: peer.run(None, feeds), args.pairs, args.block)
    size = ours_info.size_ratio
    peer_size = (work / "rn18.peer.onnx").stat().st_size / info.size_bytes
    rep.say(f"resnet18 p50 ours {lat['ours_p50_ms']:.2f} ms, peer {lat['peer_p50_ms']:.2f} ms ({lat['calls']} each)")
    rep.say(
        f"resnet18 size int8/fp32 ours {size:.3f}, peer {peer_size:.3f}; cosine ours {cos_ours:.5f} peer {cos_peer:.5f}"
    )
    rep.target(
        f"resnet18 static: latency ours/peer within {LATENCY_TOL:.0%}",
        abs(lat["ratio"] - 1) <= LATENCY_TOL,
        f"{lat['ratio']:.3f}",
    )
    rep.target(f"resnet18 static: size int8/fp32 <= {SIZE_TARGET}", size <= SIZE_TARGET, f"{size:.3f}")
    rep.target(
        f"resnet18 static: logit cosine vs fp32 ORT >= {COSINE_TARGET}", cos_ours >= COSINE_TARGET, f"{cos_ours:.5f}"
    )
    return {**lat, "size_ratio": size, "peer_size_ratio": peer_size, "cosine": cos_ours, "peer_cosine": cos_peer}


def token_model() -> tuple[torch.nn.Module, str]:
    """farm:tiny-encoder, or a small Embedding+Linear encoder when that module is missing."""
    try:
        from farm.zoo.encoder import build_tiny_encoder
    except ImportError:
        torch.manual_seed(SEED)
        emb, lin, head = torch.nn.Embedding(1000, 64), torch.nn.Linear(64, 64), torch.nn.Linear(64, 4)

        class Small(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.emb, self.lin, self.head = emb, lin, head

            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
                m = attention_mask.unsqueeze(-1).float()
                pooled = (torch.relu(self.lin(self.emb(input_ids))) * m).sum(1) / m.sum(1).clamp(min=1)
                return {"embedding": pooled, "logits": self.head(pooled)}

        return Small().eval(), "bench Embedding+Linear encoder"
    return build_tiny_encoder().eval(), "farm:tiny-encoder"


def tokens(n: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 1000, (n, length), generator=g)
    mask = (torch.arange(length)[None, :] < torch.randint(8, length + 1, (n, 1), generator=g)).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def encoder(args: argparse.Namespace, rep: Report, work: Path) -> dict[str, Any]:
    """Section (2): dynamic per-channel on a token-id model, ours vs quantize_dynamic by hand."""
    from farm.runtimes.onnx_export import export_onnx
    from farm.runtimes.ort import OrtModel
    from farm.runtimes.ort_quantize import quantize_dynamic_onnx

    model, name = token_model()
    batch = tokens(args.batch, 32, SEED)
    info = export_onnx(model, batch, work / "enc.onnx")
    ours_info = quantize_dynamic_onnx(info.path, work / "enc.ours.onnx", per_channel=True)
    peer_dynamic(Path(info.path), work / "enc.peer.onnx")
    rep.say(f"{name}: inputs {info.input_names} {info.input_dtypes}, coverage ours {ours_info.coverage.by_op}")
    ours = OrtModel.load(ours_info.path, threads=args.threads)
    peer, fp32 = session(work / "enc.peer.onnx", args.threads), session(Path(info.path), args.threads)
    feeds = ours.prepare_input(batch)
    logits = info.output_names.index("logits") if "logits" in info.output_names else 0
    ref = fp32.run(None, feeds)[logits]
    cos_ours = cosine(ref, ours.forward(feeds)["logits"] if ours.outputs == "dict" else ours.forward(feeds))
    cos_peer = cosine(ref, peer.run(None, feeds)[logits])
    # calls take well under a millisecond: longer blocks, so that each side's median rests on many calls
    lat = abab(lambda: ours.forward(feeds), lambda: peer.run(None, feeds), args.pairs, args.block * 10)
    size = ours_info.size_ratio
    rep.say(f"{name} p50 ours {lat['ours_p50_ms']:.3f} ms, peer {lat['peer_p50_ms']:.3f} ms ({lat['calls']} each)")
    rep.say(f"{name} size int8/fp32 ours {size:.3f}; logit cosine ours {cos_ours:.5f} peer {cos_peer:.5f}")
    rep.target(
        f"{name} dynamic: latency ours/peer within {LATENCY_TOL:.0%}",
        abs(lat["ratio"] - 1) <= LATENCY_TOL,
        f"{lat['ratio']:.3f}",
    )
    ratio = cos_ours / cos_peer if cos_peer else float("nan")
    rep.target(
        f"{name} dynamic: cosine ours/peer within {COSINE_TOL:.0%}", abs(ratio - 1) <= COSINE_TOL, f"{ratio:.4f}"
    )
    return {**lat, "size_ratio": size, "cosine": cos_ours, "peer_cosine": cos_peer, "model": name}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer calibration batches and blocks (figures are rough)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--weights", type=Path, help="a ResNet-18 state dict (default: random init, seeded)")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    args.calibration_batches, args.pairs, args.block = (2, 6, 3) if args.quick else (8, 20, 5)
    try:
        import onnxruntime
    except ImportError as e:
        print(f"SKIPPED: onnxruntime is not importable ({e}); pip install 'quantfarm[onnx]'")
        return 0
    torch.set_num_threads(args.threads)
    rep = Report(args.threads)
    rep.say(f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, batch {args.batch}")
    rep.say(f"cpu isa flags: {' '.join(rep.fp['isa'])}; cpus {rep.fp['cpus']}")
    figures: dict[str, Any] = {"hardware": rep.hw, "fingerprint": rep.fp}
    with tempfile.TemporaryDirectory(prefix="bench-runtimes-") as tmp:
        figures["resnet18"] = resnet(args, rep, Path(tmp))
        figures["encoder"] = encoder(args, rep, Path(tmp))
    figures["targets"] = rep.targets
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
