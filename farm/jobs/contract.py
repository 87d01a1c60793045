"""The job contract: what one job is (:class:`JobSpec`), what it yields (:class:`JobResult`), and the engine version
that keys its results. It imports no torch: the producer, the planner (farm/spec/) and the store import it
downward; the engine (farm/quant) fills it in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from farm.quant.bench_config import BenchmarkConfig
from farm.quant.config import MethodConfig, config_from_dict

#: Bumped when the engine changes what a job measures: results keyed by an older version are not reused.
ENGINE_VERSION = "7"  # 2: speedup side by side, CIs, health; 3: intervals allow for drift between blocks;
# 4: p50 intervals also hold the host's run-to-run drift (farm.quant.drift): results key anew, on purpose;
# 5: that allowance is widened for the few runs it comes from, and before 3 runs is the host's or an assumed one;
# 6: speedup = the ratio of the pair's pooled medians, the faster side's blocks as long as the slower's (up to
# 10 calls), TorchScript timed as reloaded from its bytes, glibc thresholds fixed; 7: OpenVINO runs its request
# with the inputs bound once (farm/runtimes/openvino.py: the per-call dispatch cost 1.4-2.1x on a small model)


@dataclass(frozen=True)
class JobSpec:
    """Everything one trial needs.

    Attributes:
        model: model reference.
        dataset: dataset reference.
        method: the method config (bits, calibration size, observer ... live in it).
        weights: a local state-dict file for the model, if any.
        seed: drives calibration sampling and fine-tuning.
        benchmark: batch sizes, threads, device and timing rules.
        pool: the named worker pool that measures the job (e.g. "cpu-avx512"); None for the default pools and
            local runs. Timings belong to the hardware, so the same recipe on two pools is two jobs.
        output: which of the model's outputs every metric is computed on: a dict key or attribute name, or a tuple
            index (:func:`farm.quant.inputs.select_output`); None picks the logits as before. Part of the key only
            when set, so a job that picks none keys as before.
        split: the split every metric is computed on: "test", or "validation" (a tune's sensitivity stage, which
            must never choose on the test split; farm.zoo.data). Part of the key only when not "test".
    """

    model: str
    dataset: str
    method: MethodConfig
    weights: str | None = None
    seed: int = 0
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    pool: str | None = None
    output: str | int | None = None
    split: str = "test"
    #: The user's metric function (``entrypoint:pkg.module:function``, allowlisted like model entrypoints), called on
    #: the selected outputs of the whole split; None: none. Left out of to_dict (and the key) while None.
    metric: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {
            "model": self.model,
            "dataset": self.dataset,
            "method": self.method.to_dict(),
            "weights": self.weights,
            "seed": self.seed,
            "benchmark": self.benchmark.to_dict(),
        }
        if self.pool is not None:
            data["pool"] = self.pool
        if self.output is not None:
            data["output"] = self.output
        if self.split != "test":
            data["split"] = self.split
        if self.metric is not None:
            data["metric"] = self.metric
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        return cls(
            model=data["model"],
            dataset=data["dataset"],
            method=config_from_dict(data["method"]),
            weights=data.get("weights"),
            seed=int(data.get("seed", 0)),
            benchmark=BenchmarkConfig.from_dict(data.get("benchmark", {})),
            pool=data.get("pool"),
            output=data.get("output"),
            split=str(data.get("split", "test")),
            metric=data.get("metric"),
        )


@dataclass
class JobResult:
    """A trial's figures, named as in the results view (docs/schema.md)."""

    model: str
    dataset: str
    method: str
    config: dict[str, Any]
    bits: int | None
    calibration_size: int | None
    backend: str | None
    observer: str | None
    granularity: str | None
    device: str
    seed: int
    threads: int
    accuracy: float | None = None
    accuracy_fp32: float | None = None
    accuracy_drop: float | None = None
    accuracy_kind: str = "labels"
    top5: float | None = None
    top5_fp32: float | None = None
    agreement: float | None = None
    sqnr_db: float | None = None
    cosine: float | None = None
    size_bytes: int | None = None
    size_fp32_bytes: int | None = None
    size_ratio: float | None = None
    size_kind: str = "artifact"
    coverage: float | None = None
    coverage_macs: float | None = None
    coverage_layers: int | None = None
    coverage_layers_total: int | None = None
    simulated: bool = False
    #: One dict per batch size (docs/schema.md): p50 .. IQR in ms with the p50's 95 % interval
    #: (``latency_p50_ci_low_ms``, ``latency_p50_ci_high_ms``), throughput, reps, ``stable`` and
    #: ``unstable_reason``. A trial also carries what it measured side by side with its own fp32 baseline in the
    #: same process: ``baseline_p50_ms``, ``speedup`` (``baseline_p50_ms`` / p50) with ``speedup_ci_low`` ..
    #: ``_high`` (bootstrap, 95 %), ``blocks``, ``fp32_deployed_as`` and ``fp32_eager_p50_ms`` (None: the fp32 job
    #: times the eager form, where the deployed fp32 is TorchScript). The fp32 job's ``speedup`` is 1.0, a simulated
    #: model's None.
    latency: list[dict[str, Any]] = field(default_factory=list)
    peak_memory_bytes: int | None = None
    peak_gpu_memory_bytes: int | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    duration_s: float | None = None
    hardware: str | None = None
    hardware_id: str | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    quantized_engine: str | None = None
    #: "torchscript": the frozen TorchScript artifact is what was evaluated and timed; "eager": the module itself.
    deployed_as: str | None = None
    #: Whether the figures mean anything: "ok", "degenerate_reference" (the fp32 outputs carry no class signal),
    #: "collapsed" (the outputs no longer follow fp32's) or "nan"; None when nothing was evaluated.
    health: str | None = None
    #: A short label naming the method and every non-default parameter (``qat int4 mavg pc n=32 e3``).
    recipe: str | None = None
    warnings: list[str] = field(default_factory=list)
    artifact: dict[str, Any] | None = None
    artifact_uri: str | None = None
    engine_version: str = ENGINE_VERSION
    #: The deploy runtime of a job that did not run in torch (``onnxruntime``, ``openvino``, ``tensorrt``), the
    #: runtime's package version, the ONNX Runtime execution provider and the ONNX opset of the exported graph.
    #: None for torch jobs: then left out of :meth:`to_dict`, so a torch job's result reads as it always did.
    runtime: str | None = None
    runtime_version: str | None = None
    execution_provider: str | None = None
    opset: int | None = None
    #: The job's own metric function (JobSpec.metric) and its value on the job's split; left out while None.
    metric_name: str | None = None
    metric: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: infinities and NaNs become null; the runtime fields are left out while None."""
        data: dict[str, Any] = jsonable(asdict(self))
        for name in (*RUNTIME_FIELDS, *METRIC_FIELDS):
            if data.get(name) is None:
                data.pop(name, None)
        return data


#: JobResult fields that only a job on a runtime other than torch fills.
RUNTIME_FIELDS = ("runtime", "runtime_version", "execution_provider", "opset")
#: JobResult fields that only a job with a metric function fills.
METRIC_FIELDS = ("metric_name", "metric")


def jsonable(obj: Any) -> Any:
    """A copy of ``obj`` where non-finite floats are None (JSON has no Infinity or NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj
