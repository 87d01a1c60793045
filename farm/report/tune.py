"""The tune sections of a report (a sweep made by ``farm tune``): the answer, each runtime's layer sensitivity and
the search's trail. The trail and the choice are farm.jobs.tune_answer's; this module only renders them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from farm.jobs.tune_answer import fallback_words
from farm.report.fmt import MISSING, esc, fixed, human_bytes, sig
from farm.report.svg import chart_html
from farm.report.tune_charts import sensitivity_chart, trail_chart
from farm.report.tune_data import TuneInput, TuneView, tune_view

#: The tune's sections in page order (after the summary): (anchor, heading).
TUNE_SECTIONS = (
    ("tune", "Tune: the answer"),
    ("sensitivity", "Tune: layer sensitivity"),
    ("trail", "Tune: the search's trail"),
)


def tune_bodies(tune: TuneInput, rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The markup of each tune section, by anchor.

    Args:
        tune: the tune's settings, its sweep's jobs and the sweep's state.
        rows: the sweep's rows of results_flat (the answer's speedup over the fastest fp32 of any runtime).

    Returns:
        {"tune": the answer block, "sensitivity": a chart per runtime, "trail": the trail chart}.
    """
    view = tune_view(tune)
    charts = [sensitivity_chart(s, view, i) for i, s in enumerate(view.sensitivities)]
    if charts:
        sensitivity = "\n".join(chart_html(c) for c in charts)
    else:
        why = (
            "the search ran none: a global recipe already met the target with good_enough set, no runtime had a "
            "global recipe worth falling layers back from, or the budget left no room"
            if view.answer.done
            else "the search has not reached its sensitivity stage yet"
        )
        sensitivity = f'<p class="empty">No sensitivity jobs: {why}.</p>'
    return {"tune": answer_block(view, rows), "sensitivity": sensitivity, "trail": chart_html(trail_chart(view))}


def answer_block(view: TuneView, rows: Sequence[Mapping[str, Any]] = ()) -> str:
    """The answer: target, chosen recipe, its metric, speedup (with its interval), size ratio and fallback layers;
    or, when no recipe meets the target, the closest one and how far it falls short.

    Args:
        view: the tune (farm.report.tune_data.tune_view).
        rows: the sweep's rows of results_flat (for the speedup over the fastest fp32 of any runtime).

    Returns:
        The markup.
    """
    settings, answer = view.settings, view.answer
    stages = ", ".join(f"{esc(k)} {d}/{n}" for k, (d, n) in answer.stages.items() if n)
    state = "done" if answer.done else "searching"
    facts = [
        ("target", f"{esc(settings.target.describe())}, objective {esc(settings.objective)}"),
        ("search", f"{state}: {answer.jobs} job(s); stages {stages or MISSING}"),
    ]
    chosen = answer.chosen
    if chosen is None:
        verdict = "no recipe has succeeded on the test split" + (" yet" if not answer.done else "")
        return _meta(facts) + f'\n<p class="miss">No answer: {verdict}.</p>'
    word = "chosen" if answer.met else "closest"
    facts.append(
        (word, f"<strong>{esc(chosen['recipe'])}</strong> on {esc(chosen['runtime'])} (job {chosen['job_id']})")
    )
    facts.append((esc(settings.metric), _metric(chosen, settings)))
    facts.append(("speedup", _speedup(chosen, view.figures.get(chosen["job_id"], {}), rows)))
    facts.append(("p50", _p50(chosen)))
    size = chosen.get("size_bytes")
    ratio = chosen.get("size_ratio")
    size_text = f"{human_bytes(size)} ({sig(ratio)} of fp32's)" if ratio is not None else human_bytes(size)
    if chosen.get("simulated"):
        size_text += ", a packed estimate (simulated: bits x weights / 8 plus scales, not a file)"
    facts.append(("size", size_text))
    fallback = chosen["fallback"]
    facts.append(
        (
            fallback_words(chosen),
            esc(", ".join(fallback)) if fallback else "none (a global recipe: every layer quantized)",
        )
    )
    if chosen.get("artifact_uri"):
        facts.append(("artifact", f"<code>{esc(chosen['artifact_uri'])}</code>"))
    html = _meta(facts)
    if not answer.met:
        so_far = "" if answer.done else " so far"
        html += (
            f'\n<p class="miss">No recipe meets {esc(settings.target.describe())}{so_far}: the closest, '
            f"{esc(chosen['recipe'])} (job {chosen['job_id']}), falls short by {sig(answer.shortfall, 4)}.</p>"
        )
    return html


def _meta(facts: Sequence[tuple[str, str]]) -> str:
    return '<dl class="meta tune-answer">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"


def _metric(chosen: Mapping[str, Any], settings: Any) -> str:
    value = chosen.get(settings.metric)
    text = fixed(value) if settings.metric in ("accuracy", "agreement", "cosine") else sig(value, 4)
    if settings.target.max_accuracy_drop is not None:
        text += f" (drop {fixed(chosen.get('accuracy_drop'), signed=True)})"
    return text


def _speedup(chosen: Mapping[str, Any], figures: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
    """Over the job's own fp32 side by side, with its 95 % interval; across runtimes also over the fastest fp32."""
    value = chosen.get("speedup")
    if chosen.get("simulated"):
        return "none: simulated (fake quantization on fp32 kernels below 8 bits has no deployed speed)"
    if value is None:
        return MISSING
    low, high = figures.get("speedup_ci_low"), figures.get("speedup_ci_high")
    text = f"{sig(value)}× over fp32 on {esc(chosen['runtime'])}"
    if low is not None and high is not None:
        text += f" (95 % interval {sig(low)}–{sig(high)}×)"
    for rival in chosen.get("rivals") or []:  # other runtimes' fp32, timed side by side in the same job
        ci = rival.get("speedup_ci")
        within = f" (95 % interval {sig(ci[0])}–{sig(ci[1])}×)" if ci else ""
        text += f"; {sig(rival['speedup'])}× over fp32 on {esc(rival['runtime'])}{within}, side by side"
    row = next((r for r in rows if r.get("job_id") == chosen["job_id"]), None)
    best = row.get("speedup_vs_best_fp32") if row else None
    if best is not None and len({r.get("runtime") or "torch" for r in rows}) > 1:
        text += f"; {sig(best)}× over the fastest fp32 of any runtime (its job timed apart)"
    return text


def _p50(chosen: Mapping[str, Any]) -> str:
    if chosen.get("simulated"):
        return "none claimed: simulated (fake quantization, not a deployed model)"
    lat = chosen.get("latency") or {}
    p50, low, high = lat.get("p50_ms"), lat.get("ci_low_ms"), lat.get("ci_high_ms")
    if p50 is None:
        return MISSING
    interval = f" (95 % interval {sig(low)}–{sig(high)} ms)" if low is not None and high is not None else ""
    return f"{sig(p50)} ms{interval} at batch size {esc(lat.get('batch_size'))}"
