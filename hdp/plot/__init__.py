"""Pictures for users: the length distribution, a plan (ranks x time) and a training run.

Each module has a pure ``*_data`` function (what will be drawn, testable without looking at
pixels) and a ``draw_*`` function that renders it to a PNG with matplotlib's Agg backend.
No module here imports torch.
"""
