"""Process-group facts every distributed part shares: the run's groups and their timeouts, made once
(``groups``), which device a rank uses and that all ranks agree (``devices``), hdp's deadline for
stream-ordered waits (``deadlines``), peer failures as one exception type (``peers``) and the check
that every rank holds the same plan (``plan_check``).

May import: ``hdp.plan``, torch. Nothing else of the runtime.
"""
