"""Sweep specs: YAML (or JSON) validated with pydantic, expanded into jobs with deterministic keys.

Every problem is collected and reported at once, each with its path
(``methods[2].static.observer: 'minmax2' is not one of ...``). Nothing here imports torch: the producer
plans and submits sweeps from a laptop; and planning makes no network call of its own.

One module per step: :mod:`~farm.spec.schema` (structure, YAML), :mod:`~farm.spec.checks` (references,
method parameters, filters), :mod:`~farm.spec.expand` (the product of the axes), :mod:`~farm.spec.plan`
(planned jobs and their keys), :mod:`~farm.spec.weights` (the weights digest in a key),
:mod:`~farm.spec.load` (all of them in order). Import each from its module (``farm.spec.load.load_spec``,
``farm.spec.plan.Plan``): this package re-exports nothing.
"""
