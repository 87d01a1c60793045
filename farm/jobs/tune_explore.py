"""A tune's explore stage (``farm tune --trials N``, ``tune: {trials: N}``): a per-layer mixed-precision search by
Optuna's multi-objective sampler, after refine and before verify.

Candidates and refinements fall back the k most sensitive layers: prefixes of one ranking, measured one layer at a
time. Two layers that each hurt little may hurt a lot together, and a layer ranked sensitive may cost more time in
floating point than two others that would do: recipes no prefix reaches. The explore stage searches them:

- **space**, per search line: each of the line's most sensitive layers (its ranking's first ``2k``, k the fewest
  layers a recipe of the line met the target with, at least :data:`MIN_SPACE`) is either quantized
  (``int8``) or kept in floating point (``fp32``); the other layers stay quantized (on a line whose base is
  simulated below 8 bits, the two choices are the base's bits and int8: farm.jobs.tune_jobs.rung);
- **objectives**: the line's score (the target's metric; maximised) and its latency p50 or size (minimised), with
  the target as a constraint (feasible where met): Optuna's TPE sampler, multivariate, multi-objective;
- **trials**: every test-split recipe of the line so far (the base global recipe, the candidates, the
  refinements, the explore trials before; of the base's granularity) is told to the sampler, in job order; it
  then asks up to :data:`BATCH` new recipes per line at once (a constant liar: the pending ones count as bad, so
  one batch spreads), each a job screened on the test split like a candidate, run by the local pool or the farm's
  workers. The meeting recipe with the fewest layers in floating point, one of them quantized again (the least
  sensitive first), is asked before the sampler's own proposals: the recipes next to it that may be faster
  still, which a sampler told a dozen recipes in a space of 2^16 rarely proposes. The next explore stage tells
  their results and asks more, until ``trials`` recipes per line were asked (or 16 asks per recipe wanted found
  no untried one); then verify chooses among every screened recipe, these included.

The study lives in the farm's own database as its jobs: a trial is a job row (its layer rules are the trial's
parameters, its figures the values), and each explore stage rebuilds the sampler from them with a seed of the tune's
(an in-memory study: Optuna's RDB storage would add a second schema, and a second ``alembic_version``, to the
farm's). The same inputs give the same recipes, so a stage run again (its worker lost, the tune resumed) adds the
same jobs (the same keys).

The trials are beyond the per-line bound (``layers + 2*log2(layers) + 4``): ``--trials`` spends them on purpose;
``--budget-jobs`` still caps them, keeping the verify job's room.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from farm.errors import ConfigError
from farm.jobs.contract import JobSpec
from farm.jobs.stages import Stage
from farm.jobs.tune_jobs import carry, job, then, verify_room
from farm.jobs.tune_lines import healthy, runtime_of, score, share_of, speed
from farm.jobs.tune_plan import TuneSettings, info
from farm.metric_targets import meets, shortfall
from farm.spec.plan import PlannedJob

#: Recipes a line asks per explore stage: enough to keep a pool busy, few enough that each stage learns from the
#: last one's.
BATCH = 4
#: The fewest layers a line's space holds (all of them where the model has fewer).
MIN_SPACE = 4
#: A layer's two choices in a recipe.
INT8, FP32 = "int8", "fp32"
#: The stage jobs after an explore stage (the budget keeps room for them): another explore stage, verify, answer;
#: the last batch of every line still exploring is followed by verify and answer alone.
_LATER = 3


def explore(stage: Stage, inputs: Sequence[Any]) -> list[PlannedJob]:
    """Per search line, up to :data:`BATCH` new recipes asked of the sampler; then another explore stage while a
    line has trials left, else ``tune_verify``."""
    p = stage.params
    settings = TuneSettings.from_dict(p)
    trials = int(settings.trials or 0)
    state = dict(p.get("explore") or {})
    spaces: dict[str, list[str]] = dict(state.get("space") or {})
    asked: dict[str, int] = dict(state.get("asked") or {})
    spent = int(p["spent"]) + 1
    exploring = {line: spec for line, spec in p["bases"].items() if asked.get(line, 0) < trials}
    room = _room(settings, spent, exploring, asked, trials)
    jobs: list[PlannedJob] = []
    for line, base_spec in exploring.items():
        spec = JobSpec.from_dict(base_spec)
        mine = on_line(inputs, spec)
        ranking = list(p["rankings"][line])
        space = spaces.setdefault(line, search_space(ranking, mine, settings))
        want = min(trials - asked.get(line, 0), BATCH, BATCH if room is None else room)
        if want <= 0 or not space:
            asked[line] = trials if not space else asked.get(line, 0)
            continue
        found = ask(space, mine, settings, want, seed=_seed(spec.seed, line))
        jobs += [job(stage, spec, tuple(n for n in ranking if n in f), "test", p["references"]["test"]) for f in found]
        # A space with no new recipe left ends its line's search.
        asked[line] = asked.get(line, 0) + len(found) if len(found) == want else trials
    # Another explore stage while a line has trials left and the budget leaves it room for one more of them.
    left = {line: spec for line, spec in p["bases"].items() if asked.get(line, 0) < trials}
    after = _room(settings, spent + len(jobs) + 1, left, asked, trials)  # + 1: that stage's own job
    more = bool(jobs) and bool(left) and (after is None or after > 0)
    params = {**carry(p), "explore": {"space": spaces, "asked": asked}, "spent": int(p["spent"]) + 1 + len(jobs)}
    # The next stage reads every recipe so far (verify chooses among them all), not only this stage's.
    read = [i.key for i in inputs if i.role in ("trial", "reference")]
    return then(stage, jobs, inputs, "tune_explore" if more else "tune_verify", params, read)


def _room(
    settings: TuneSettings, spent: int, lines: Mapping[str, Any], asked: Mapping[str, int], trials: int
) -> int | None:
    """Each line's share of what ``--budget-jobs`` leaves an explore stage that starts once ``spent`` jobs are
    counted (None: no budget): shared among the ``lines`` (line: base spec) still exploring, after the jobs to come
    (the verify and answer stage jobs, the verify job, and another explore stage unless this is every line's last
    batch)."""
    last = all(trials - asked.get(line, 0) <= BATCH for line in lines)
    # The verify job, once for the tune (none where every line is simulated: farm.jobs.tune_jobs.verify_room).
    verify = max((verify_room(JobSpec.from_dict(spec)) for spec in lines.values()), default=0)
    return share_of(settings, spent, len(lines), _LATER - last + verify)


def on_line(inputs: Sequence[Any], base: JobSpec) -> list[Any]:
    """The line's quantized recipes on the test split, in job order: its base global recipe, candidates,
    refinements and explore trials (those of the base's runtime, method and granularity: the other granularity's
    global is no point of this line's space)."""
    runtime, method, grain = runtime_of(base), base.method.method, getattr(base.method, "granularity", None)
    out = []
    for i in inputs:
        what = info(i)
        if i.role != "trial" or what["split"] != "test" or what["runtime"] != runtime or what["method"] != method:
            continue
        if what["granularity"] == grain:
            out.append(i)
    return sorted(out, key=lambda i: i.id)


def search_space(ranking: Sequence[str], line_jobs: Sequence[Any], settings: TuneSettings) -> list[str]:
    """The layers a line's trials choose for: the ranking's first ``2k`` (k the fewest layers in floating point of a
    recipe that met the target; the layer count where none did), at least :data:`MIN_SPACE`."""
    passing = [len(info(j)["fallback"]) for j in line_jobs if healthy(j) and meets(j.figures, settings.target)]
    k = min(passing, default=len(ranking))
    return list(ranking[: min(len(ranking), max(2 * k, MIN_SPACE))])


def ask(
    space: Sequence[str], line_jobs: Sequence[Any], settings: TuneSettings, want: int, *, seed: int
) -> list[frozenset[str]]:
    """Up to ``want`` sets of layers to keep in floating point that no recipe of the line tried: asked of a TPE
    sampler told every recipe in ``line_jobs`` whose layers in floating point lie in ``space``."""
    try:
        import optuna
    except ImportError as e:  # a farm worker installed without the engine extra: the stage fails saying so
        why = "the explore stage (--trials) needs Optuna on the worker: pip install 'quantfarm[engine]'"
        raise ConfigError(why) from e

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=2)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    choice = optuna.distributions.CategoricalDistribution([INT8, FP32])
    dist: dict[str, optuna.distributions.BaseDistribution] = dict.fromkeys(space, choice)
    seen: dict[frozenset[str], Told | None] = {}
    for j in line_jobs:
        fallback = frozenset(info(j)["fallback"])
        if not fallback <= set(space):
            continue  # a recipe outside the space (a candidate with more layers) says nothing of its choices
        values = _values(j, settings)
        seen.setdefault(fallback, values)
        study.enqueue_trial({name: FP32 if name in fallback else INT8 for name in space})
        _tell(study, study.ask(dist), values)
    # First, the meeting recipe with the fewest layers in floating point with one of them quantized again (the
    # least sensitive first): the recipes next to it that may be faster still (an explore trial that meets with
    # fewer becomes the next stage's starting point); then what the sampler asks.
    for fallback in _neighbours(seen, space):
        study.enqueue_trial({name: FP32 if name in fallback else INT8 for name in space})
    found: list[frozenset[str]] = []
    for _ in range(want * 16):  # a proposal already tried is told again and does not count
        if len(found) == want:
            break
        trial = study.ask(dist)
        fallback = frozenset(name for name in space if trial.params[name] == FP32)
        if fallback in seen:
            _tell(study, trial, seen[fallback])  # what it scored (None: pending in this batch, or it failed)
            continue
        seen[fallback] = None
        found.append(fallback)  # left running: the constant liar counts it as bad until its stage tells it
    return found


def _neighbours(seen: dict[frozenset[str], Told | None], space: Sequence[str]) -> list[frozenset[str]]:
    """The layers in floating point of the meeting recipe with the fewest (the faster where two have as many), less
    one (its least sensitive layer first: ``space`` is in ranking order), those not tried yet.

    The fewest layers, not the lowest screened p50: screened intervals overlap (on a busy 2-vCPU host a k = 16
    candidate's p50 read below k = 8's), and each layer kept in floating point costs time and bytes."""
    meeting = [(len(f), told.cost, f) for f, told in seen.items() if told is not None and told.met]
    if not meeting:
        return []
    best = min(meeting, key=lambda x: (x[0], x[1]))[2]
    out = [best - {name} for name in reversed(space) if name in best]
    return [f for f in out if f and f not in seen]


@dataclass(frozen=True)
class Told:
    """What the sampler is told of a recipe: its score, its latency p50 or size, whether it meets the target
    (farm.metric_targets.meets, tolerance included), and the constraint (<= 0: met; else how far the score falls
    short)."""

    score: float
    cost: float
    met: bool
    constraint: float


def _tell(study: Any, trial: Any, told: Told | None) -> None:
    import optuna

    if told is None:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return
    trial.set_constraint("target", told.constraint)
    study.tell(trial, [told.score, told.cost])


def _values(j: Any, settings: TuneSettings) -> Told | None:
    """What a succeeded, healthy recipe tells the sampler; None otherwise (a failed trial to the sampler)."""
    if not healthy(j):
        return None
    value, cost = score(j.figures, settings), speed(j.figures, settings.objective)[0]
    if value is None or cost == float("inf"):
        return None
    met = meets(j.figures, settings.target)
    # As meets() says (a drop within its tolerance of the budget meets it): feasible at 0, a miss by how far.
    return Told(value, cost, met, 0.0 if met else max(shortfall(j.figures, settings.target) or 0.0, 1e-12))


def _seed(seed: int, line: str) -> int:
    """The sampler's seed: the tune's (its jobs'), and the line's, so two lines do not ask in step."""
    return (seed + int(hashlib.sha256(line.encode()).hexdigest()[:8], 16)) % 2**31
