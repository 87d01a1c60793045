"""The text sections of the report: the summary (sweep, job counts, best configurations, notes) and the
hardware the jobs ran on.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from farm.analysis import SIMPLICITY, best_configs, succeeded, unhealthy
from farm.report.fmt import MISSING, esc, fixed, human_bytes, id_ranges, sig, when
from farm.report.model import SweepInfo, config_label, is_stage, per_job, runtime_of, spans_runtimes, state_counts

#: The accuracy budget of the summary's best configurations: one point (compared with a little slack, as
#: 0.98 - 0.97 is 0.010000000000000009 in floating point).
MAX_ACCURACY_DROP = 0.01
_SLACK = 1e-9
#: The fingerprint fields that make two machines different for the hardware cards.
_MACHINE_KEYS = ("cpu_model", "isa", "cpus", "cpus_usable", "machine", "gpu", "torch", "quantized_engines")


def summary(
    rows: Sequence[dict[str, Any]],
    sweep: SweepInfo,
    generated_at: datetime,
    warnings: Mapping[int, Sequence[str]],
    machines: int,
    best: str | None = None,
) -> str:
    """The summary section's body.

    Args:
        rows: the sweep's rows of results_flat.
        sweep: the sweep.
        generated_at: when the report was made.
        warnings: the engine's warnings per job id.
        machines: how many distinct machines the jobs ran on.
        best: the markup of the best configuration where the sweep has its own answer (a tune's:
            farm.report.tune.best_block); None: the lowest p50 within one point of accuracy, per model and batch.

    Returns:
        The markup.
    """
    counts = state_counts(rows)
    facts = [
        ("sweep", f"{esc(sweep.name)} <span class=muted>(id {sweep.id})</span>"),
        ("state", f'<span class="state {esc(sweep.state)}">{esc(sweep.state)}</span>'),
        ("submitter", esc(sweep.submitter or MISSING)),
        ("created", esc(when(sweep.created_at))),
        ("finished", esc(when(sweep.finished_at))),
        ("report generated", esc(when(generated_at))),
    ]
    meta = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    chips = "".join(f'<li class="state {esc(s)}">{n} {esc(s)}</li>' for s, n in counts.items())
    total = sum(counts.values())
    return (
        f'<dl class="meta">{meta}</dl>\n'
        f'<h3>Jobs</h3>\n<ul class="counts"><li class="state total">{total} job(s)</li>{chips}</ul>\n'
        f"<h3>Best configuration per model</h3>\n{_best(rows) if best is None else best}\n"
        f"<h3>Notes</h3>\n{_notes(rows, warnings, machines)}"
    )


def _best(rows: Sequence[dict[str, Any]]) -> str:
    # A stage job (a tune's search adding jobs) succeeds with no batch size and nothing measured: no configuration.
    rows = [r for r in rows if not is_stage(r)]
    choices = best_configs(rows, max_accuracy_drop=MAX_ACCURACY_DROP + _SLACK, by="latency_p50_ms")
    # best_configs orders groups as text (batch 128 before 8): models as the rows list them, batches by number.
    models = {m: i for i, m in enumerate(dict.fromkeys(r["model"] for r in rows))}
    choices.sort(key=lambda c: (models.get(c.group[0], len(models)), *(b or 0 for b in c.group[1:])))
    intro = (
        "<p>Per model and batch size: the lowest p50 latency among configurations that lose at most "
        f"{MAX_ACCURACY_DROP:.0%} accuracy against fp32 (a drop of at most {MAX_ACCURACY_DROP}). Simulated "
        "results cannot qualify: their latency is not a deployment's, nor can results whose health is not ok. "
        "Configurations whose p50 95 % intervals overlap are a tie, which the simplest recipe wins "
        f"({SIMPLICITY}).</p>"
    )
    by_runtime = spans_runtimes(succeeded(rows))  # a runtime column only where the rows span runtimes
    if by_runtime:
        intro += (
            "<p>The jobs ran on several runtimes, which compete here on latency; the speedup is over the fastest "
            "fp32 of the model on any runtime, at the same batch size on the same hardware.</p>"
        )
    if not choices:
        return intro + '<p class="empty">none: no job succeeded.</p>'
    lines = []
    for c in choices:
        model, batch = c.group[0], c.group[1] if len(c.group) > 1 else None
        row = c.best or c.closest_miss
        if row is None:
            lines.append(
                f"<tr><td class=t>{esc(model)}</td><td>{esc(batch if batch is not None else MISSING)}</td>"
                f'<td class="t miss" colspan="{7 if by_runtime else 6}">no configuration with an accuracy drop and a '
                "latency</td></tr>"
            )
            continue
        verdict = "" if c.best else '<span class="miss">none within budget; closest: </span>'
        tie = (
            f'<br><span class="muted">tie within noise with job(s) {id_ranges([t["job_id"] for t in c.tied])}: '
            "the simplest recipe was picked</span>"
            if c.tied
            else ""
        )
        uri = row.get("artifact_uri")
        lines.append(
            f"<tr><td class=t>{esc(model)}</td><td>{esc(batch)}</td>"
            f'<td class="t config">{verdict}{esc(config_label(row))} <span class=muted>(job {row["job_id"]})</span>'
            f"{tie}{f'<br><code>{esc(uri)}</code>' if uri else ''}</td>"
            + (f"<td class=t>{esc(runtime_of(row))}</td>" if by_runtime else "")
            + f"<td>{fixed(row.get('accuracy'))}</td><td>{fixed(row.get('accuracy_drop'), signed=True)}</td>"
            f"<td>{p50_cell(row)}</td>"
            f"<td>{_speedup(row, by_runtime)}</td>"
            f'<td title="{esc(_exact_bytes(row.get("size_bytes")))}">{human_bytes(row.get("size_bytes"))}</td></tr>'
        )
    head = "".join(
        f'<th scope="col"{" class=t" if h in ("model", "configuration and artifact", "runtime") else ""}>{h}</th>'
        for h in (
            "model",
            "batch",
            "configuration and artifact",
            *(("runtime",) if by_runtime else ()),
            "accuracy",
            "drop",
            "p50 ms",
            "speedup vs best fp32" if by_runtime else "speedup",
            "size",
        )
    )
    return (
        f'{intro}\n<div class="table-wrap"><table class="best"><thead><tr>{head}</tr></thead><tbody>'
        + "\n".join(lines)
        + "</tbody></table></div>"
    )


def _speedup(row: dict[str, Any], by_runtime: bool) -> str:
    """The speedup; across runtimes the one over the fastest fp32 of any runtime (each job's own speedup compares
    it with its own runtime's fp32, a different baseline per runtime)."""
    value = row.get("speedup_vs_best_fp32" if by_runtime else "speedup")
    return MISSING if value is None else sig(value) + "×"


def p50_cell(row: Mapping[str, Any]) -> str:
    """The median latency with its 95 % interval as ``±`` the wider half (the exact interval on hover)."""
    p50, low, high = row.get("latency_p50_ms"), row.get("latency_p50_ci_low_ms"), row.get("latency_p50_ci_high_ms")
    if p50 is None or low is None or high is None:
        return sig(p50)
    half = max(high - p50, p50 - low, 0.0)
    return f'<span title="95 % interval {esc(sig(low))} to {esc(sig(high))} ms">{sig(p50)} ±{sig(half)}</span>'


def _health_note(rows: Sequence[dict[str, Any]]) -> str | None:
    """Which jobs' figures mean nothing (health not ok), by kind; they are left out of every ranking."""
    by_kind: dict[str, list[int]] = {}
    for job_id, health in sorted(unhealthy(rows).items()):
        by_kind.setdefault(health, []).append(job_id)
    if not by_kind:
        return None
    kinds = "; ".join(f"{esc(h)}: jobs {id_ranges(ids)}" for h, ids in sorted(by_kind.items()))
    total = sum(len(ids) for ids in by_kind.values())
    return (
        f"<strong>Health</strong>: {total} job(s) have figures that mean nothing ({kinds}). A degenerate reference "
        "gives (nearly) the same output for every input, so nothing compared with it is meaningful; a collapsed "
        "trial's outputs no longer follow fp32's. They are left out of the best configurations and Pareto fronts."
    )


def _notes(rows: Sequence[dict[str, Any]], warnings: Mapping[int, Sequence[str]], machines: int) -> str:
    jobs = {r["job_id"]: r for r in per_job(rows)}
    notes: list[str] = []
    health = _health_note(rows)
    if health:
        notes.append(health)
    simulated = sorted(j for j, r in jobs.items() if r.get("simulated"))
    if simulated:
        notes.append(
            f"{len(simulated)} job(s) are <strong>simulated</strong> (fake quantization below 8 bits on fp32 "
            f"kernels; jobs {id_ranges(simulated)}): their accuracy approximates a low-bit deployment, their "
            "latency does not. They are drawn hollow, left out of the latency charts and have no speedup."
        )
    coverage: dict[tuple[str, str], dict[str, list[int]]] = {}
    others: dict[str, list[int]] = {}
    for job_id, texts in sorted(warnings.items()):
        row = jobs.get(job_id)
        if row is None:
            continue
        for text in dict.fromkeys(texts):
            if text.startswith("low coverage"):
                coverage.setdefault((row["model"], row["method"]), {}).setdefault(text, []).append(job_id)
            elif not text.startswith(("simulated:", "health:")):  # the health note lists those
                others.setdefault(text, []).append(job_id)
    for (model, method), by_text in coverage.items():
        for text, ids in by_text.items():
            notes.append(f"<strong>Coverage</strong>: {esc(model)}, {esc(method)} (jobs {id_ranges(ids)}): {esc(text)}")
    failed = [j for j, r in jobs.items() if r["state"] in ("failed", "cancelled")]
    if failed:
        notes.append(f'{len(failed)} job(s) did not succeed: see <a href="#failed">Failed jobs</a>.')
    if machines > 1:
        notes.append(
            f'The jobs ran on {machines} different machines (see <a href="#hardware">Hardware</a>): compare '
            "latencies only between jobs measured on the same one (speedup does)."
        )
    body = "".join(f"<li>{n}</li>" for n in notes) if notes else "<li>none.</li>"
    html = f'<ul class="notes">{body}</ul>'
    if others:
        items = "".join(
            f"<li>{esc(text)} <span class=muted>(jobs {id_ranges(ids)})</span></li>" for text, ids in others.items()
        )
        html += f"\n<details><summary>Other engine warnings ({len(others)})</summary><ul>{items}</ul></details>"
    return html


def machine_key(fingerprint: Mapping[str, Any]) -> str:
    """What tells two machines apart in the hardware section (CPU, ISA, cores, GPU, torch, engines)."""
    return json.dumps({k: fingerprint.get(k) for k in _MACHINE_KEYS}, sort_keys=True, default=str)


def hardware(rows: Sequence[dict[str, Any]], fingerprints: Mapping[int, Mapping[str, Any]]) -> str:
    """One card per distinct machine fingerprint, with the jobs that ran on it.

    Args:
        rows: the sweep's rows of results_flat.
        fingerprints: the machine fingerprint recorded with each job's metrics, by job id.

    Returns:
        The markup.
    """
    jobs = {r["job_id"]: r for r in per_job(rows)}
    groups: dict[str, list[int]] = {}
    for job_id, fp in sorted(fingerprints.items()):
        if job_id in jobs:
            groups.setdefault(machine_key(fp), []).append(job_id)
    # Stage jobs (a tune's search adding jobs) run no model: no fingerprint to expect of them.
    without = sorted(j for j in set(jobs) - {j for ids in groups.values() for j in ids} if not is_stage(jobs[j]))
    if not groups:
        return '<p class="empty">none: no job recorded a machine fingerprint (none succeeded).</p>'
    cards = [_card(fingerprints[ids[0]], ids, jobs) for ids in groups.values()]
    tail = (
        f"<p class=muted>{len(without)} job(s) recorded no fingerprint (they did not succeed): "
        f"{id_ranges(without)}.</p>"
        if without
        else ""
    )
    return f'<div class="cards">{"".join(cards)}</div>{tail}'


def _card(fp: Mapping[str, Any], ids: list[int], jobs: Mapping[int, dict[str, Any]]) -> str:
    labels = Counter(jobs[j].get("hardware") for j in ids if jobs[j].get("hardware"))
    title = labels.most_common(1)[0][0] if labels else fp.get("cpu_model") or "unknown machine"
    gpu = fp.get("gpu")
    if isinstance(gpu, Mapping):
        gpu_text = (
            f"{gpu.get('name', '?')} (compute {gpu.get('capability', '?')}, {human_bytes(gpu.get('memory_bytes'))}, "
            f"CUDA {gpu.get('cuda') or '?'})"
        )
    else:
        gpu_text = "none"
    cores = fp.get("cpus")
    usable = fp.get("cpus_usable")
    facts = [
        ("CPU", fp.get("cpu_model")),
        ("cores", f"{usable} usable of {cores}" if usable not in (None, cores) else cores),
        ("memory", human_bytes(fp.get("memory_bytes")) if fp.get("memory_bytes") else None),
        ("machine", " · ".join(str(v) for v in (fp.get("machine"), fp.get("os")) if v)),
        ("GPU", gpu_text),
        ("torch", fp.get("torch")),
        ("torchvision", fp.get("torchvision")),
        ("CPU kernels", fp.get("torch_cpu_capability")),
        ("quantized engines", ", ".join(map(str, fp.get("quantized_engines") or [])) or None),
        ("Python", fp.get("python")),
    ]
    rows = "".join(f"<dt>{k}</dt><dd>{esc(v)}</dd>" for k, v in facts if v not in (None, ""))
    isa = "".join(f"<li>{esc(flag)}</li>" for flag in fp.get("isa") or []) or f"<li>{MISSING}</li>"
    workers = sorted({str(jobs[j]["worker"]) for j in ids if jobs[j].get("worker")})
    return (
        f'<article class="card"><h3>{esc(title)}</h3><dl>{rows}<dt>ISA</dt><dd><ul class="isa">{isa}</ul></dd></dl>'
        f"<p><strong>{len(ids)} job(s)</strong>: {id_ranges(ids)}</p>"
        + (f"<p class=muted>workers: {esc(', '.join(workers))}</p>" if workers else "")
        + "</article>"
    )


def _exact_bytes(n: Any) -> str:
    return "" if n is None else f"{n:,} bytes"


def machines(rows: Sequence[dict[str, Any]], fingerprints: Mapping[int, Mapping[str, Any]]) -> int:
    """How many distinct machines (see :func:`machine_key`) the sweep's jobs ran on."""
    ids = {r["job_id"] for r in rows}
    return len({machine_key(fp) for j, fp in fingerprints.items() if j in ids})
