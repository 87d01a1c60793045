"""From a method config to torch.ao QConfigs: observers, bit ranges, granularity and backend defaults."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from torch.ao.quantization import (
    FakeQuantize,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
    QConfig,
    QConfigMapping,
)
from torch.ao.quantization.observer import UniformQuantizationObserverBase

from farm.errors import ConfigError
from farm.quant.config import OBSERVERS
from farm.quant.layers import LayerSetting

# Backends whose default int8 activation range is 7 bits. x86 / fbgemm / onednn multiply u8 x s8 pairs with
# VPMADDUBSW on CPUs without VNNI, which saturates int16 sums when activations use all 8 bits: measured on an
# AVX2 EPYC, a toy MLP fell from 30.6 dB to 15.2 dB SQNR. torch.ao's own onednn default is 8 bits (it only
# warns); ours is 7 everywhere but qnnpack, so a config means the same model on every machine, and a job that
# asks for 8 bits on a CPU without VNNI gets a warning beside its numbers (see saturation_warning).
_REDUCE_RANGE_DEFAULT = {"x86": True, "fbgemm": True, "qnnpack": False, "onednn": True}
# Engines whose int8 kernels use VPMADDUBSW on CPUs without VNNI.
_SATURATING_ENGINES = ("x86", "fbgemm", "onednn")


class BitsHistogramObserver(HistogramObserver):
    """HistogramObserver whose range search targets the real number of levels.

    torch's HistogramObserver always searches for the range that is best for 256 levels; with
    quant_min/quant_max narrowed to 4 bits that range is far from the best one for 16 levels.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dst_nbins = int(self.quant_max - self.quant_min + 1)


class PercentileObserver(UniformQuantizationObserverBase):
    """Activation range from a percentile of the observed values, averaged over calibration batches.

    ``symmetric`` ranges use the percentile of ``|x|``; affine ranges clip both tails, at ``100 - p`` and
    ``p``. Large batches are subsampled deterministically (every k-th value) to bound the cost.
    """

    min_val: torch.Tensor
    max_val: torch.Tensor
    batches: torch.Tensor
    _MAX_SAMPLES = 1 << 20

    def __init__(self, percentile: float = 99.99, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.percentile = float(percentile)
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        self.register_buffer("batches", torch.tensor(0, dtype=torch.int64))

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach().float().flatten()
        if x.numel() > self._MAX_SAMPLES:
            x = x[:: x.numel() // self._MAX_SAMPLES + 1]
        q = self.percentile / 100.0
        if self.qscheme == torch.per_tensor_symmetric:
            hi = torch.quantile(x.abs(), q)
            lo = -hi
        else:
            lo = torch.quantile(x, 1.0 - q)
            hi = torch.quantile(x, q)
        n = int(self.batches)
        if n == 0:
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
        else:  # running mean over batches
            self.min_val.copy_((self.min_val * n + lo) / (n + 1))
            self.max_val.copy_((self.max_val * n + hi) / (n + 1))
        self.batches.add_(1)
        return x_orig

    @torch.jit.export
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self._calculate_qparams(self.min_val, self.max_val)

    def extra_repr(self) -> str:
        return f"percentile={self.percentile}, min_val={self.min_val}, max_val={self.max_val}"


#: The activation observer class of each name in :data:`farm.quant.config.OBSERVERS` (the names config
#: validation accepts); a test checks that the two agree.
ACTIVATION_OBSERVERS: dict[str, type[UniformQuantizationObserverBase]] = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageMinMaxObserver,
    "histogram": BitsHistogramObserver,
    "percentile": PercentileObserver,
}


def activation_observer(name: str) -> type[UniformQuantizationObserverBase]:
    """The observer class for an activation observer name.

    Raises:
        ConfigError: the name is not one of :data:`farm.quant.config.OBSERVERS`.
    """
    try:
        return ACTIVATION_OBSERVERS[name]
    except KeyError:
        raise ConfigError(f"unknown activation observer {name!r}; expected one of: {', '.join(OBSERVERS)}") from None


def activation_range(bits: int, backend: str, reduce_range: bool | None) -> tuple[int, int]:
    """quint8 (quant_min, quant_max) for activations of ``bits`` bits on ``backend``."""
    if bits == 8:
        reduce = _REDUCE_RANGE_DEFAULT[backend] if reduce_range is None else reduce_range
        return (0, 127) if reduce else (0, 255)
    return 0, (1 << bits) - 1


def cpu_has_vnni() -> bool:
    """Whether this CPU has an int8 dot-product instruction (AVX512-VNNI, AVX-VNNI or AMX)."""
    probe = getattr(torch.cpu, "_is_vnni_supported", None)
    if probe is not None:
        with contextlib.suppress(Exception):
            if probe():
                return True
    from farm.quant.fingerprint import cpu_info

    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(cpu_info()[1]))


def saturation_warning(cfg: Any) -> str | None:
    """A warning for 8-bit activations on an engine whose kernels saturate on this CPU, else None."""
    if cfg.bits != 8 or cfg.backend not in _SATURATING_ENGINES:
        return None
    low, high = activation_range(cfg.bits, cfg.backend, cfg.reduce_range)
    if high - low < 255 or cpu_has_vnni():
        return None
    return (
        f"reduce_range is off on {cfg.backend}, and this CPU has no VNNI: its int8 kernels can saturate on "
        "8-bit activations and lose accuracy; leave reduce_range at its default (7-bit activations) here"
    )


def weight_range(bits: int) -> tuple[int, int]:
    """qint8 (quant_min, quant_max) for symmetric weights of ``bits`` bits."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def build_qconfig(cfg: Any, *, fake_quant: bool, setting: LayerSetting | None = None) -> QConfig:
    """The QConfig for a static or QAT config, or for one layer a rule overrides.

    Args:
        cfg: a StaticConfig or QATConfig (bits, observer, percentile, granularity, activation, backend,
            reduce_range).
        fake_quant: wrap the observers in FakeQuantize (QAT, and simulated bit-widths below 8).
        setting: a layer's rule overrides (bits, granularity, observer); None: the method's own values.
    """
    bits = setting.bits if setting is not None and setting.bits is not None else cfg.bits
    observer = setting.observer if setting is not None and setting.observer is not None else cfg.observer
    granularity = setting.granularity if setting is not None and setting.granularity is not None else cfg.granularity
    a_min, a_max = activation_range(bits, cfg.backend, cfg.reduce_range)
    a_scheme = torch.per_tensor_symmetric if cfg.activation == "symmetric" else torch.per_tensor_affine
    act_kwargs: dict[str, Any] = {"dtype": torch.quint8, "qscheme": a_scheme, "quant_min": a_min, "quant_max": a_max}
    act_observer = activation_observer(observer)
    if act_observer is PercentileObserver:
        act_kwargs["percentile"] = cfg.percentile

    w_min, w_max = weight_range(bits)
    moving = observer == "moving_average"
    w_kwargs: dict[str, Any] = {"dtype": torch.qint8, "quant_min": w_min, "quant_max": w_max}
    if granularity == "per_channel":
        w_observer: Any = MovingAveragePerChannelMinMaxObserver if moving else PerChannelMinMaxObserver
        w_kwargs.update(qscheme=torch.per_channel_symmetric, ch_axis=0)
    else:
        w_observer = MovingAverageMinMaxObserver if moving else MinMaxObserver
        w_kwargs.update(qscheme=torch.per_tensor_symmetric)

    if fake_quant:
        return QConfig(
            activation=FakeQuantize.with_args(observer=act_observer, **act_kwargs),
            weight=FakeQuantize.with_args(observer=w_observer, **w_kwargs),
        )
    return QConfig(activation=act_observer.with_args(**act_kwargs), weight=w_observer.with_args(**w_kwargs))


def qconfig_mapping(
    cfg: Any, *, fake_quant: bool, settings: Mapping[str, LayerSetting] | None = None
) -> QConfigMapping:
    """A QConfigMapping applying :func:`build_qconfig` globally, keeping the backend's fixed-qparams ops.

    Args:
        cfg: a StaticConfig or QATConfig.
        fake_quant: FakeQuantize modules rather than observers.
        settings: the per-layer rules resolved on the model (:func:`farm.quant.layer_list.layer_settings`): a
            skipped layer gets no qconfig (it stays a float module), an overridden one its own.
    """
    from torch.ao.quantization import get_default_qat_qconfig_mapping, get_default_qconfig_mapping

    base = get_default_qat_qconfig_mapping(cfg.backend) if fake_quant else get_default_qconfig_mapping(cfg.backend)
    qconfig = build_qconfig(cfg, fake_quant=fake_quant)
    mapping = QConfigMapping().set_global(qconfig)
    # Ops with fixed output ranges (sigmoid, tanh, hardsigmoid, softmax) keep the qconfig torch requires.
    for op, fixed in base.object_type_qconfigs.items():
        if fixed is not None and fixed != base.global_qconfig:
            mapping.set_object_type(op, fixed)
    for name, setting in (settings or {}).items():
        mapping.set_module_name(
            name, None if setting.skip else build_qconfig(cfg, fake_quant=fake_quant, setting=setting)
        )
    return mapping


def lower_bits(settings: Mapping[str, LayerSetting]) -> bool:
    """Whether a rule gives a quantized layer fewer than 8 bits: no int8 kernel runs it, so an 8-bit method is
    simulated (fake quantization) as a whole."""
    return any(not s.skip and s.bits is not None and s.bits < 8 for s in settings.values())


def backend_config(backend: str) -> Any:
    """torch.ao's BackendConfig for an engine name."""
    from torch.ao.quantization import backend_config as bc
    from torch.ao.quantization.backend_config.x86 import get_x86_backend_config

    return {
        "x86": get_x86_backend_config,
        "fbgemm": bc.get_fbgemm_backend_config,
        "qnnpack": bc.get_qnnpack_backend_config,
        "onednn": bc.get_onednn_backend_config,
    }[backend]()
