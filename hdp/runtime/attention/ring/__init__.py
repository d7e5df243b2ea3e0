"""Ring attention among exactly the k ranks of one ring, over point-to-point sends in the global group.

- ``flat``: the one-level ring (``RingContext``, ``ring_attention``), the reference the others match;
- ``two_level``: an inner ring inside each node and g parallel outer rings across nodes;
- ``bidirectional``: half the KV heads rotate forward, half backward;
- ``blocks``: the compute of one ring step, shared by all three; ``comm``: the transfers;
- ``select``: which algorithm a ring runs (the plan's choice where the ring's shape allows it).

May import: ``hdp.plan``, ``hdp.runtime.parallel``, ``hdp.runtime.attention``'s local modules
(``layout``, ``matmul_attention``, ``pair_kernels``), torch. Never ``dispatch`` (it imports us).
"""
