"""How a tune's jobs are timed (farm/jobs/tune_plan.py plans them, farm/jobs/tune_stages.py adds them): briefly on
the validation split (:func:`validation_spec`), screened on the test split (:func:`screening_spec`: pinned, settled
at 5 %), and the answer as the tune's own benchmark says (:func:`answer_isolation`, :func:`answer_rel_tol`: the
verify job, and candidates that take their runtime's last jobs). Standard library only, as the planner.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from farm.jobs.contract import JobSpec
from farm.quant.timing_stats import MAX_CI_REL

#: Timing of a validation-split job: its latency ranks nothing (sensitivity is a metric), so it is timed just enough
#: to keep the usual figures, and not exclusively (isolation "pinned", recorded with the figure: it holds the host's
#: measurement lock shared, as compute does): the search's exclusive timing goes to the figures reported.
VALIDATION_TIME_S = 0.1
VALIDATION_WARMUP_S = 0.02
VALIDATION_MIN_REPS = 6
VALIDATION_ISOLATION = "pinned"


def validation_spec(spec: JobSpec) -> JobSpec:
    """``spec`` evaluated on the validation split, timed briefly (:data:`VALIDATION_TIME_S`) and not exclusively
    (:data:`VALIDATION_ISOLATION`, unless the spec asked for none)."""
    return dataclasses.replace(spec, split="validation", benchmark=_brief(spec.benchmark))


def _brief(b: Any) -> Any:
    """Benchmark settings ``b`` timed just enough to keep the usual figures, not exclusively."""
    return dataclasses.replace(
        b,
        max_time_s=min(b.max_time_s, VALIDATION_TIME_S),
        warmup_s=min(b.warmup_s, VALIDATION_WARMUP_S),
        min_reps=min(b.min_reps, VALIDATION_MIN_REPS),
        isolation=b.isolation if b.isolation == "none" else VALIDATION_ISOLATION,
    )


#: Timing of a candidate (the candidates and refine stages: the test split, the base recipe with layers in floating
#: point): its latency only ranks candidates of one recipe family, so it is timed pinned (own cores, the host's
#: measurement lock held shared: candidates time side by side with each other) instead of holding the host
#: exclusively, and the one candidate that may be the answer is timed again as the tune's own benchmark says
#: (``tune_verify``). Under -j 2 the exclusive timings were a fifth of a search's wall time and serialised it.
SCREENING_ISOLATION = "pinned"
#: How closely a screened timing must know its figures before it stops (``benchmark.rel_tol``): the bar a p50 is
#: called stable at (farm.quant.timing_stats.MAX_CI_REL, 5 %), not the tune's own 2 %. A screened figure only picks
#: the recipe the verify stage times again, and the answer prefers the simpler of two recipes whose intervals
#: overlap. Beside the other process's jobs, whose compute comes and goes, the blocks' medians drift by more than
#: 2 % and every screened timing ran to its budget (3 s a pair against 0.2-0.8 s with the other core idle: a
#: -j 2 search spent 40 % more time timing than -j 1); at 5 % they stop as they do alone.
SCREENING_REL_TOL = MAX_CI_REL


def screening_spec(spec: JobSpec) -> JobSpec:
    """``spec`` timed as a candidate is screened: pinned (:data:`SCREENING_ISOLATION`) and settled at
    :data:`SCREENING_REL_TOL` (or the spec's own, if looser) where the spec times exclusively; a spec timed pinned or
    unisolated as it is (nothing will be verified: farm/jobs/tune_stages.py). A simulated recipe (below 8 bits) is
    timed briefly, as a validation job is: fake quantization's latency ranks nothing (its search is by size) and is
    claimed nowhere."""
    b = spec.benchmark
    if spec.method.simulated:
        return dataclasses.replace(spec, benchmark=_brief(b))
    if b.isolation != "exclusive":  # pinned or none throughout: these figures are the answer's, timed as asked
        return spec
    rel_tol = max(b.rel_tol, SCREENING_REL_TOL)
    return dataclasses.replace(spec, benchmark=dataclasses.replace(b, isolation=SCREENING_ISOLATION, rel_tol=rel_tol))


def screened(entry: Mapping[str, Any]) -> bool:
    """A trail entry of a quantized recipe (a global or a candidate) timed as it is screened (pinned), not as the
    tune's benchmark says."""
    return not entry.get("fp32") and entry.get("isolation") == SCREENING_ISOLATION


def answer_rel_tol(p: Mapping[str, Any], spec: JobSpec) -> float:
    """How closely the tune's own timings settle, for ``spec`` (a screened recipe) timed as the answer; a tune from
    before it carried that screened at its own rel_tol: ``spec``'s."""
    return float(p.get("rel_tol", spec.benchmark.rel_tol))


def answer_isolation(p: Mapping[str, Any]) -> str:
    """How the tune times the answer (a tune from before it carried that: as its base recipes were timed)."""
    if "isolation" in p:
        return str(p["isolation"])
    bases = [b.get("benchmark") or {} for b in (p.get("bases") or {}).values()]
    return str(next((b.get("isolation", "exclusive") for b in bases), "exclusive"))
