"""Planner variants that lost, kept for the benchmarks that show why (not in the strategy table).

* ``HDP_UNCAPPED``: ``hdp`` with the paper's literal offload rule, fewest ranks whatever the time:
  a 2M sequence shrinks to ~14 ranks and its ring sets the step.

(The first ``hdp-wide``, at most twice the fewest ranks for sequences above the batch's mean
per-rank time, lost everywhere it was simulated; the strategy table's ``hdp-wide``,
``hdp.plan.schedule.critical``, replaced it.)
"""

from __future__ import annotations

from hdp.plan.strategies import HDP

HDP_UNCAPPED = HDP.replace(name="hdp-uncapped", offload_cap=False, about="hdp with the paper's literal offload rule")
