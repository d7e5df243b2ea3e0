"""Selective activation offloading: whole layers' saved tensors go to pinned host memory on side
streams (``activations``), through reused staging buffers (``host_pool``).

May import: ``hdp.plan``, ``hdp.runtime.model``, torch.
"""
