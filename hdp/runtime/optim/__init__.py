"""The optimizer side of a step: which dtype each part uses (``precision``), AdamW sharded over the
whole HDP pool on flat buffers (``zero``, ZeRO 0/1/2), and the learning rate per step (``lr_schedule``).

May import: ``hdp.plan``, torch.
"""
