"""How a global batch becomes a plan: the steps ``make_plan`` (``hdp.plan.planner``) runs.

- ``sharding``: how many ranks a sequence needs and which tokens each ring member holds (fewest
  ranks, offloading); ``critical``, ``whole_nodes``: more ranks than the fewest where it pays;
- ``balance`` (with ``balance_measure`` and ``backfill``): the balance scheduler, time not tokens;
- ``draft``: a plan under construction and its conversion into the frozen ``Plan``;
- ``baselines``: ``static`` and ``pow2`` as planners emitting the same ``Plan``.

May import: ``hdp.plan``'s root modules (types, zigzag, replay, work, estimate) and ``hdp.plan.cost``.
Never torch.
"""
