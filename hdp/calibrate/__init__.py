"""``hdp calibrate``: measure the local device and write a profile for the cost model (hdp.device/1).

``measure.py`` holds the micro-benchmarks (torch), ``profile.py`` which sizes to run and how the
results become a ``DeviceProfile``. Only this package and ``hdp.runtime`` import torch.
"""
