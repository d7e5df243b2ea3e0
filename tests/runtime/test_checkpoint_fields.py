"""Fields added to the checkpoint's exactness check after checkpoints existed: an old manifest without
them was saved with their defaults; a resume that changes one is refused in one line."""

from __future__ import annotations

import pytest

from hdp.runtime.checkpoint.compare import exact_config
from hdp.runtime.checkpoint.files import LATER_FIELDS, check_compatible
from hdp.runtime.config import TrainConfig


def _manifest(config: TrainConfig, drop: tuple[str, ...] = ()) -> dict:
    saved = {k: v for k, v in exact_config(config).items() if k not in drop}
    return {"config": saved, "data": "d", "layout": None}


def test_an_old_manifest_without_the_later_fields_resumes_with_their_defaults():
    config = TrainConfig(model="tiny-moe")
    check_compatible(_manifest(config, drop=tuple(LATER_FIELDS)), exact_config(config), None, "d", "ck")


@pytest.mark.parametrize("change", [{"z_loss_coef": 0.01}, {"aux_loss": "none"}, {"aux_loss_coef": 0.02},
                                    {"tp": 2}, {"pp": 2}])
def test_a_changed_router_loss_or_parallel_layout_is_refused(change):
    saved = TrainConfig(model="tiny-moe")
    now = TrainConfig(model="tiny-moe", **change)
    key = next(iter(change))
    with pytest.raises(ValueError, match=f"incompatible config: {key} ") as e:
        check_compatible(_manifest(saved, drop=tuple(LATER_FIELDS)), exact_config(now), None, "d", "ck")
    assert "\n" not in str(e.value)
