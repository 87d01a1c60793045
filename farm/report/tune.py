"""The tune sections of a report (a sweep made by ``farm tune``): the answer, each runtime's layer sensitivity and
the search's trail. The trail and the choice are farm.jobs.tune_answer's; this module only renders them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from farm.jobs.tune_answer import fallback_words, fp32_entries, over_fp32
from farm.report.fmt import MISSING, esc, fixed, human_bytes, sig
from farm.report.sections import p50_cell
from farm.report.svg import chart_html
from farm.report.tune_charts import sensitivity_chart, trail_chart
from farm.report.tune_data import TuneInput, TuneView, tune_view

#: The tune's sections in page order (after the summary): (anchor, heading).
TUNE_SECTIONS = (
    ("tune", "Tune: the answer"),
    ("sensitivity", "Tune: layer sensitivity"),
    ("trail", "Tune: the search's trail"),
)


def tune_parts(tune: TuneInput) -> tuple[str, dict[str, str]]:
    """What a tune puts in its report: the summary's best configuration (:func:`best_block`) and the markup of each
    tune section by anchor (:func:`tune_bodies`).

    Args:
        tune: the tune's settings, its sweep's jobs and the sweep's state.
    """
    view = tune_view(tune)
    return best_block(view), tune_bodies(view)


def tune_bodies(view: TuneView) -> dict[str, str]:
    """The markup of each tune section, by anchor.

    Args:
        view: the tune (farm.report.tune_data.tune_view: its answer, sensitivities and fp32s).

    Returns:
        {"tune": the answer block, "sensitivity": a chart per runtime, "trail": the trail chart}.
    """
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
    return {"tune": answer_block(view), "sensitivity": sensitivity, "trail": chart_html(trail_chart(view))}


def best_block(view: TuneView) -> str:
    """The summary's best configuration on a tune's report: the tune's answer (farm.jobs.tune_answer, the one
    ``farm tune status`` gives), judged by the tune's target and objective, never by a plain sweep's one-point
    accuracy rule; where no recipe meets the target, the closest and how far it falls short.

    Args:
        view: the tune (farm.report.tune_data.tune_view).

    Returns:
        The markup.
    """
    settings, answer, chosen = view.settings, view.answer, view.answer.chosen
    target = esc(settings.target.describe())
    intro = (
        "<p>This sweep is a tune (<code>farm tune</code>): its best configuration is the tune's answer, the "
        f"{'smallest' if settings.objective == 'size' else 'fastest'} recipe on the test split that meets {target}, "
        'chosen as <code>farm tune status</code> chooses it (see <a href="#tune">Tune: the answer</a>). The '
        "one-point accuracy rule of a plain sweep does not apply.</p>"
    )
    if chosen is None:
        yet = "" if answer.done else " yet"
        return intro + f'<p class="empty">none: no recipe has succeeded on the test split{yet}.</p>'
    verdict = ""
    if not answer.met:
        so_far = "" if answer.done else " so far"
        verdict = (
            f'<span class="miss">no recipe meets {target}{so_far}; the closest, short by '
            f"{sig(answer.shortfall, 4)}: </span>"
        )
    figures = view.figures.get(chosen["job_id"], {})
    layers = ", ".join(chosen["fallback"])
    uri = chosen.get("artifact_uri")
    lat = chosen.get("latency") or {}
    p50 = {"latency_p50_ms": lat.get("p50_ms"), "latency_p50_ci_low_ms": lat.get("ci_low_ms"),
           "latency_p50_ci_high_ms": lat.get("ci_high_ms")}  # fmt: skip
    cells = (
        ("model", esc(view.model or MISSING)),
        ("batch", esc(MISSING if figures.get("batch_size") is None else figures["batch_size"])),
        (
            "recipe and artifact",
            f"{verdict}<strong>{esc(chosen['recipe'])}</strong> <span class=muted>(job {chosen['job_id']})</span>"
            + (f"<br><span class=muted>{fallback_words(chosen)}: {esc(layers)}</span>" if layers else "")
            + (f"<br><code>{esc(uri)}</code>" if uri else ""),
        ),
        ("runtime", esc(chosen["runtime"])),
        (esc(settings.metric), _metric(chosen, settings)),
        ("p50 ms", "none: simulated" if chosen.get("simulated") else p50_cell(p50)),
        ("speedup", _speedup(chosen, figures, view.answer.trail)),
        ("size", human_bytes(chosen.get("size_bytes"))),
    )
    text = {"model", "recipe and artifact", "runtime", "speedup"}
    head = "".join(f'<th scope="col"{" class=t" if h in text else ""}>{h}</th>' for h, _ in cells)
    row = "".join(f"<td{' class=t' if h in text else ''}>{v}</td>" for h, v in cells)
    table = f'<table class="best"><thead><tr>{head}</tr></thead><tbody><tr>{row}</tr></tbody></table>'
    return f'{intro}\n<div class="table-wrap">{table}</div>{_fp32_faster(view)}'


def answer_block(view: TuneView) -> str:
    """The answer: target, chosen recipe, its metric, speedup (with its interval), size ratio and fallback layers;
    or, when no recipe meets the target, the closest one and how far it falls short.

    Args:
        view: the tune (farm.report.tune_data.tune_view).

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
    facts.append(("speedup", _speedup(chosen, view.figures.get(chosen["job_id"], {}), answer.trail)))
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
    return html + _fp32_faster(view)


def _fp32_faster(view: TuneView) -> str:
    """farm tune's warning where an fp32 is faster than the answer beyond the noise (farm.jobs.tune_answer)."""
    f = view.answer.fp32_faster
    if f is None or view.answer.chosen is None:
        return ""
    return (
        f'\n<p class="miss">{esc(f["recipe"])} (job {f["job_id"]}, fp32 on {esc(f["runtime"])}) is faster than the '
        "answer beyond the noise: no quantized recipe within the target beats plain fp32 there.</p>"
    )


def _meta(facts: Sequence[tuple[str, str]]) -> str:
    return '<dl class="meta tune-answer">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"


def _metric(chosen: Mapping[str, Any], settings: Any) -> str:
    value = chosen.get(settings.metric)
    text = fixed(value) if settings.metric in ("accuracy", "agreement", "cosine") else sig(value, 4)
    if settings.target.max_accuracy_drop is not None:
        text += f" (drop {fixed(chosen.get('accuracy_drop'), signed=True)})"
    return text


def _speedup(chosen: Mapping[str, Any], figures: Mapping[str, Any], trail: Sequence[Mapping[str, Any]]) -> str:
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
    # A GPU's fp32 is no bar for a CPU answer, nor the reverse.
    fp32 = [e for e in fp32_entries(trail) if e.get("device") == chosen.get("device")]
    if fp32 and len({e["runtime"] for e in trail}) > 1:
        text += _over_fastest(chosen, min(fp32, key=lambda e: e["latency"]["p50_ms"]))
    return text


def _over_fastest(chosen: Mapping[str, Any], fastest: Mapping[str, Any]) -> str:
    """The answer's speedup over the fastest fp32 of any runtime, labelled by how it was timed: side by side (its
    own runtime's fp32, or a rival's its verify job timed) with the 95 % interval, else the ratio of the two jobs'
    p50s, timed apart (farm.jobs.tune_answer.over_fp32)."""
    beside = over_fp32(chosen, fastest)
    if beside["speedup"] is None:
        return ""
    whose = f"{esc(fastest['runtime'])}'s"
    if not beside["side_by_side"]:
        return (
            f"; {sig(beside['speedup'])}× over the fastest fp32 of any runtime ({whose}, timed apart: the two jobs' "
            "p50s divided, no interval)"
        )
    ci = beside.get("speedup_ci")
    within = f", 95 % interval {sig(ci[0])}–{sig(ci[1])}×" if ci else ""
    return f"; {sig(beside['speedup'])}× over the fastest fp32 of any runtime ({whose}, side by side{within})"


def _p50(chosen: Mapping[str, Any]) -> str:
    if chosen.get("simulated"):
        return "none claimed: simulated (fake quantization, not a deployed model)"
    lat = chosen.get("latency") or {}
    p50, low, high = lat.get("p50_ms"), lat.get("ci_low_ms"), lat.get("ci_high_ms")
    if p50 is None:
        return MISSING
    interval = f" (95 % interval {sig(low)}–{sig(high)} ms)" if low is not None and high is not None else ""
    return f"{sig(p50)} ms{interval} at batch size {esc(lat.get('batch_size'))}"
