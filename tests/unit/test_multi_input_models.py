"""Models as they are, through run_job: token ids that stay int64 (fp32, dynamic, bf16), two positional inputs (an
image and an int64 class id) under static PTQ, dict outputs with ``output:`` choosing what is measured.

The models and datasets are defined here and loaded as entrypoints (this module is put on the allowlist).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from farm.errors import ConfigError
from farm.jobs.contract import JobSpec
from farm.jobs.steps import run_job
from farm.quant.config import parse_method
from farm.zoo.data import TensorSplit
from tests.conftest import fast_benchmark

HERE = "tests.unit.test_multi_input_models"
TOKEN_MODEL = f"entrypoint:{HERE}:token_model"
TWO_INPUTS = f"entrypoint:{HERE}:image_and_class"
TWO_INPUT_DATA = f"entrypoint:{HERE}:image_and_class_data"
DICT_MODEL = f"entrypoint:{HERE}:dict_model"
VOCAB = 1000


class TokenModel(nn.Module):
    """Embedding + masked mean + Linear: ids cast to a float dtype would index the wrong rows, or fail."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        self.head = nn.Linear(32, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(self.embed.weight.dtype)
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(pooled)


class ImageAndClass(nn.Module):
    """Two positional inputs: a float image and an int64 class id that selects an embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.cls = nn.Embedding(10, 4 * 8 * 8)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, image: torch.Tensor, class_id: torch.Tensor) -> torch.Tensor:
        features = torch.flatten(self.relu(self.conv(image)), 1)
        return self.fc(features + self.cls(class_id))


class DictModel(nn.Module):
    """Returns ``{"embedding", "logits"}``; the logits come from a narrow head, so the two outputs differ."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding = self.body(x)
        return {"embedding": embedding, "logits": self.head(embedding)}


def _seeded(module: type[nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return module().eval()


def token_model() -> nn.Module:
    return _seeded(TokenModel)


def image_and_class() -> nn.Module:
    return _seeded(ImageAndClass)


def dict_model() -> nn.Module:
    return _seeded(DictModel)


def image_and_class_data() -> dict[str, Any]:
    """Samples ``((image, class_id), label)``: a tuple of inputs nested as the first item of the pair."""
    gen = torch.Generator().manual_seed(0)

    def split(n: int) -> list[tuple[tuple[torch.Tensor, torch.Tensor], int]]:
        images = torch.randn(n, 1, 8, 8, generator=gen)
        classes = torch.randint(0, 10, (n,), generator=gen)
        return [((images[i], classes[i]), int(classes[i])) for i in range(n)]

    return {"calibration": split(48), "test": split(40), "train": split(16), "num_classes": 10, "labelled": True}


@pytest.fixture(autouse=True)
def allow_this_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_ALLOWED_MODULES", HERE)


def run(tmp_path: Path, model: str, dataset: str, method: str, output: str | int | None = None, **params: Any) -> Any:
    spec = JobSpec(model, dataset, parse_method(method, params), benchmark=fast_benchmark(2), output=output)
    out = tmp_path / f"{method}-{output}"
    return run_job(spec, out), out


def manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize("method", ["fp32", "dynamic", "bf16"])
def test_token_ids_stay_int64_through_every_method(tmp_path: Path, method: str) -> None:
    result, out = run(tmp_path, TOKEN_MODEL, "tokens:16?n_test=32&n_calibration=32", method)
    assert result.health == "ok"
    assert result.cosine is not None and result.cosine > (0.999 if method == "fp32" else 0.9)
    assert result.accuracy_kind == "relative_to_fp32"
    inputs = manifest(out)["inputs"]
    assert inputs == [
        {"name": "input_ids", "shape": [16], "dtype": "int64"},
        {"name": "attention_mask", "shape": [16], "dtype": "int64"},
    ]
    assert "input" not in manifest(out)  # the single-tensor form is for single-tensor models only
    assert [lat["batch_size"] for lat in result.latency] == [2]


def test_bf16_casts_the_weights_but_not_the_ids(tmp_path: Path) -> None:
    """Had the ids been cast to bf16, ids above 256 would round (990 -> 992) and index other rows."""
    from farm.quant.config import Bf16Config
    from farm.quant.fp import apply_half
    from farm.quant.registry import QuantContext

    model = token_model()
    ids = torch.tensor([[991, 993, 995, 0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    outcome = apply_half(model, Bf16Config(), QuantContext("toy", example_input={"input_ids": ids}))
    placed = outcome.prepare_input({"input_ids": ids, "attention_mask": mask})
    assert placed["input_ids"].dtype == torch.int64 and torch.equal(placed["input_ids"], ids)
    got = outcome.forward(placed).float()
    want = model(ids, mask)
    assert torch.nn.functional.cosine_similarity(got, want).item() > 0.99


def test_two_positional_inputs_with_static(tmp_path: Path) -> None:
    result, out = run(tmp_path, TWO_INPUTS, TWO_INPUT_DATA, "static", calibration_size=32)
    assert result.health == "ok"
    assert result.accuracy_kind == "labels" and result.accuracy is not None
    assert result.agreement is not None and result.agreement > 0.8
    assert result.coverage_layers is not None and result.coverage_layers >= 1  # the conv and linear quantized
    assert manifest(out)["inputs"] == [
        {"name": "0", "shape": [1, 8, 8], "dtype": "float32"},
        {"name": "1", "shape": [], "dtype": "int64"},
    ]


def test_dict_output_chosen_by_name_is_what_metrics_measure(tmp_path: Path) -> None:
    from farm.quant.reference import REFERENCE_FILE, Reference

    _, default_out = run(tmp_path, DICT_MODEL, "synthetic:1x8x8?n_test=32&n_calibration=32", "fp32")
    _, chosen_out = run(tmp_path, DICT_MODEL, "synthetic:1x8x8?n_test=32&n_calibration=32", "fp32", "embedding")
    default_ref = Reference.load(default_out / REFERENCE_FILE)
    chosen_ref = Reference.load(chosen_out / REFERENCE_FILE)
    assert default_ref.outputs.shape == (32, 10)  # the logits, as before
    assert chosen_ref.outputs.shape == (32, 16)  # the embedding
    result, _ = run(tmp_path, DICT_MODEL, "synthetic:1x8x8?n_test=32&n_calibration=32", "dynamic", "embedding")
    assert result.cosine is not None and result.cosine > 0.98 and result.health == "ok"


def test_unknown_output_is_one_line_naming_the_outputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        run(tmp_path, DICT_MODEL, "synthetic:1x8x8?n_test=8&n_calibration=8", "fp32", "nope")
    message = str(e.value)
    assert "'nope'" in message and "embedding, logits" in message and "\n" not in message


def test_output_is_in_the_key_only_when_set() -> None:
    from farm.spec.plan import job_key

    spec = JobSpec(DICT_MODEL, "synthetic:1x8x8", parse_method("fp32", {}))
    chosen = JobSpec(DICT_MODEL, "synthetic:1x8x8", parse_method("fp32", {}), output="embedding")
    assert "output" not in spec.to_dict() and chosen.to_dict()["output"] == "embedding"
    assert JobSpec.from_dict(chosen.to_dict()) == chosen
    assert job_key(spec, None) != job_key(chosen, None)


def test_tokens_dataset_is_deterministic_padded_and_masked() -> None:
    from farm.zoo.data import load_dataset

    a, b = load_dataset("tokens:32?vocab=50&n_test=16"), load_dataset("tokens:32?vocab=50&n_test=16")
    assert isinstance(a.test, TensorSplit) and isinstance(b.test, TensorSplit)
    x = a.test.x
    assert isinstance(x, dict) and set(x) == {"input_ids", "attention_mask"}
    assert torch.equal(x["input_ids"], b.test.x["input_ids"])  # type: ignore[index]
    ids, mask = x["input_ids"], x["attention_mask"]
    assert ids.shape == (16, 32) and ids.dtype == torch.int64 and mask.dtype == torch.int64
    lengths = mask.sum(1)
    assert int(lengths.min()) >= 8 and int(lengths.max()) <= 32
    assert bool((ids[mask == 0] == 0).all()) and bool((ids[mask == 1] > 0).all()) and int(ids.max()) < 50
    assert not a.labelled and a.test[0][1].item() == -1
    assert len(a.calibration) == 256 and len(a.train or []) == 256  # type: ignore[arg-type]


def test_tiny_encoder_on_tokens_with_dynamic(tmp_path: Path) -> None:
    result, out = run(tmp_path, "farm:tiny-encoder", "tokens:32?n_test=32&n_calibration=32", "dynamic")
    assert result.health == "ok"
    assert result.cosine is not None and result.cosine > 0.95
    assert result.coverage is not None and result.coverage > 0  # the q/k/v/out and MLP Linears
    assert [i["dtype"] for i in manifest(out)["inputs"]] == ["int64", "int64"]


def test_cli_model_output_unknown_is_one_line_and_exit_2(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from farm.cli import cli

    runs = tmp_path / "runs"
    args = ["quantize", "--model", DICT_MODEL, "--dataset", "synthetic:1x8x8?n_test=8&n_calibration=8"]
    args += ["--method", "fp32", "--batch-size", "1", "--output", str(runs / "trial"), "--model-output", "nope"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "embedding, logits" in lines[0], result.stderr
    assert not (runs / "trial").exists()
    ok = CliRunner().invoke(cli, [*args[:-1], "embedding", "--json"])
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["health"] == "ok"
    assert manifest(runs / "trial")["metrics"]["cosine"] > 0.999


def test_spec_output_top_level_and_per_model() -> None:
    from farm.spec.load import load_spec

    text = f"""
name: outputs
dataset: "synthetic:1x8x8"
output: embedding
models:
  - {DICT_MODEL}
  - ref: {TWO_INPUTS}
    dataset: {TWO_INPUT_DATA}
    output: 0
methods: [dynamic]
"""
    plan = load_spec(text)
    outputs = {(j.role, j.spec.model): j.spec.output for j in plan.jobs}
    assert outputs == {
        ("reference", DICT_MODEL): "embedding",  # the reference measures the same output as its trials
        ("trial", DICT_MODEL): "embedding",
        ("reference", TWO_INPUTS): 0,
        ("trial", TWO_INPUTS): 0,
    }


@pytest.mark.parametrize(
    ("snippet", "path"),
    [("output: [a]", "output"), ("output: -1", "output"), ("output: true", "output")],
)
def test_spec_output_must_be_a_name_or_index(snippet: str, path: str) -> None:
    from farm.spec.load import load_spec

    with pytest.raises(ConfigError) as e:
        load_spec(f"name: x\ndataset: 'synthetic:1x8x8'\n{snippet}\nmodels: [{DICT_MODEL}]\nmethods: [fp32]\n")
    assert [p.path for p in e.value.problems] == [path]
    assert "output name" in e.value.problems[0].message


def test_a_bad_output_of_one_model_entry_is_reported_at_its_path() -> None:
    from farm.spec.load import load_spec

    text = f"name: x\ndataset: 'synthetic:1x8x8'\nmodels:\n  - ref: {DICT_MODEL}\n    output: ''\nmethods: [fp32]\n"
    with pytest.raises(ConfigError) as e:
        load_spec(text)
    assert [p.path for p in e.value.problems] == ["models[0].output"]


@pytest.mark.parametrize(
    ("ref", "words"),
    [("tokens:0", "sequence length"), ("tokens:x", "sequence length"), ("tokens:32?size=3", "unknown option 'size'")],
)
def test_bad_tokens_references_are_one_line(ref: str, words: str) -> None:
    from farm.zoo.refs import parse_dataset_ref

    with pytest.raises(ConfigError) as e:
        parse_dataset_ref(ref)
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "item",
    [
        (torch.zeros(4, dtype=torch.int64), torch.ones(4, dtype=torch.int64)),  # (ids, mask): not (input, label)
        (torch.zeros(4), torch.zeros(4), 1),  # three items
    ],
)
def test_a_user_item_that_is_not_input_and_scalar_label_is_refused_in_one_line(item: tuple[Any, ...]) -> None:
    from farm.zoo.data import _Pairs

    with pytest.raises(ConfigError, match=r"not \(input, scalar label\).*\(\(ids, mask\), label\)") as e:
        _Pairs([item])[0]
    assert "\n" not in str(e.value)
    assert _Pairs([((torch.zeros(4), torch.ones(4)), 3)])[0][1] == 3  # nested inputs with a label: fine


def test_a_spec_without_a_dataset_runs_a_builtin_model_on_its_own_and_digit_outputs_are_indexes() -> None:
    from farm.spec.load import load_spec

    plan = load_spec(
        "name: enc\nmodels:\n  - farm:digits-cnn\n  - {ref: farm:tiny-encoder, output: '0'}\nmethods: [dynamic]\n"
    )
    seen = {(j.spec.model, j.spec.dataset, j.spec.output) for j in plan.jobs}
    assert ("farm:tiny-encoder", "tokens:32", 0) in seen and ("farm:digits-cnn", "sklearn:digits", None) in seen
    given = load_spec("name: enc\ndataset: tokens:16\nmodels: [farm:tiny-encoder]\nmethods: [dynamic]\n")
    assert {j.spec.dataset for j in given.jobs} == {"tokens:16"}  # a dataset the spec names wins
