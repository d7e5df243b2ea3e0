"""Process-group facts every distributed part shares: peer failures as one exception type
(``peers``) and the check that every rank holds the same plan (``plan_check``).

May import: ``hdp.plan``, torch. Nothing else of the runtime.
"""
