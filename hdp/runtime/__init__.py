"""Runtime: executes a Plan with torch.distributed (model, HDP attention, offloading, train step).

Import what you need from its modules (``hdp.runtime.attention``, ``hdp.runtime.layout``, ...);
this package exports nothing itself, so ``import hdp.runtime`` pulls in no torch.
"""
