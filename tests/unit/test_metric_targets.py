"""farm/metric_targets.py: which targets are refused (one line each), what meets a target, and how far a miss is."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from farm.errors import ConfigError
from farm.metric_targets import (
    LABEL_FREE,
    METRICS,
    Target,
    check_target,
    figure,
    make_target,
    meets,
    parse_metric_fn,
    shortfall,
)


def refused(*args: object) -> str:
    with pytest.raises(ConfigError) as e:
        check_target(*args)  # type: ignore[arg-type]
    message = str(e.value)
    assert "\n" not in message
    return message


def test_every_metric_is_higher_is_better_with_its_range_and_column() -> None:
    assert list(METRICS) == ["accuracy", "agreement", "cosine", "sqnr_db", "metric"]
    assert LABEL_FREE == ("agreement", "cosine", "sqnr_db", "metric")
    assert (METRICS["cosine"].low, METRICS["cosine"].high) == (-1.0, 1.0)
    assert (METRICS["agreement"].low, METRICS["agreement"].high) == (0.0, 1.0)
    assert METRICS["sqnr_db"].in_range(-40.0) and METRICS["sqnr_db"].in_range(300.0)
    assert not METRICS["sqnr_db"].in_range(math.inf) and not METRICS["metric"].in_range(math.nan)
    assert METRICS["metric"].column == "metric_value"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("cosine", 1.5, None), ["cosine ranges from -1 to 1", "got 1.5"]),
        (("cosine", -1.01, None), ["cosine ranges from -1 to 1"]),
        (("agreement", -0.1, None), ["agreement ranges from 0 to 1"]),
        (("accuracy", 1.2, None), ["accuracy ranges from 0 to 1"]),
        (("sqnr_db", math.nan, None), ["sqnr_db must be a finite number", "got nan"]),
        (("cosine", None, 0.01), ["--max-accuracy-drop is a budget on accuracy, not cosine", "--min-metric"]),
        (("cosine", None, None), ["Missing option '--min-metric'"]),
        (("metric", None, None), ["Missing option '--min-metric'", "metric function"]),
        (("accuracy", None, None), ["Missing option '--max-accuracy-drop'"]),
        (("accuracy", 0.9, 0.01), ["give one target, not both"]),
        (("accuracy", None, 1.0), ["1 is a drop of 100 points", "write 0.01"]),
        (("accuracy", None, -0.1), ["got -0.1"]),
        (("latency", 1.0, None), ["unknown metric 'latency'", "accuracy, agreement, cosine, sqnr_db, metric"]),
    ],
)
def test_bad_targets_are_refused_in_one_line(args: tuple[object, ...], words: list[str]) -> None:
    message = refused(*args)
    for word in words:
        assert word in message, message


def test_accuracy_without_labels_is_refused_and_label_free_metrics_are_not() -> None:
    message = refused("accuracy", None, 0.01, False)
    assert "has no labels" in message and "agreement, cosine, sqnr_db, metric" in message
    for metric in LABEL_FREE:
        check_target(metric, 0.5, None, False)
    check_target("accuracy", None, 0.01, None)  # unknown (rows of a finished sweep): not refused
    check_target("accuracy", 0.9, None, True)  # an accuracy floor


def test_meets_on_rows_and_on_job_results() -> None:
    drop = make_target(max_accuracy_drop=0.01)
    assert drop == Target("accuracy", None, 0.01) and drop.column == "accuracy_drop"
    assert meets({"accuracy_drop": 0.98 - 0.97}, drop)  # 0.010000000000000009: within the budget
    assert not meets({"accuracy_drop": 0.0101}, drop)
    assert not meets({"accuracy_drop": None, "accuracy": 0.99}, drop)
    cosine = make_target("cosine", 0.99)
    assert cosine.describe() == "cosine >= 0.99"
    assert meets({"cosine": 0.99}, cosine) and not meets({"cosine": 0.989}, cosine) and not meets({}, cosine)
    own = make_target("metric", 0.5)
    assert meets({"metric_value": 0.7}, own) and meets({"metric": 0.7}, own)  # a row, or a JobResult's dict
    assert not meets({"metric": 0.4}, own)
    assert not meets({"cosine": math.nan}, cosine)


def test_an_unstored_sqnr_beside_a_cosine_is_an_identical_output() -> None:
    target = make_target("sqnr_db", 40.0)
    assert figure({"sqnr_db": None, "cosine": 1.0}, "sqnr_db") == math.inf
    assert meets({"sqnr_db": None, "cosine": 1.0}, target)
    assert not meets({"sqnr_db": None, "cosine": None}, target)  # nothing was measured
    assert not meets({"sqnr_db": 39.9, "cosine": 0.99}, target)


def test_shortfall_ranks_misses() -> None:
    cosine = make_target("cosine", 0.99)
    assert shortfall({"cosine": 0.95}, cosine) == pytest.approx(0.04)
    assert shortfall({"cosine": 0.995}, cosine) == 0.0
    assert shortfall({}, cosine) is None
    drop = make_target(max_accuracy_drop=0.01)
    assert shortfall({"accuracy_drop": 0.03}, drop) == pytest.approx(0.02)


def test_metric_function_references() -> None:
    assert parse_metric_fn(" entrypoint:my_pkg.metrics:recall_at_1 ") == "entrypoint:my_pkg.metrics:recall_at_1"
    for bad in ("my_pkg.metrics:recall", "entrypoint:my_pkg.metrics", "entrypoint:a-b:c", "file:x.py", 3, None):
        with pytest.raises(ConfigError) as e:
            parse_metric_fn(bad, source="--metric-fn")
        assert str(e.value).startswith("--metric-fn: expected a metric function as entrypoint:")


def test_the_module_imports_nothing_but_the_stdlib_and_farm_errors() -> None:
    code = (
        "import sys, farm.metric_targets; "
        "bad = [m for m in ('torch', 'sqlalchemy', 'click', 'pydantic', 'numpy') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
