"""Leaving a run: the sharded model is freed before the process group goes (trainer/distributed.py)."""

from __future__ import annotations

import weakref

import pytest
import torch
import torch.distributed as dist
from torch import nn

from trainer import distributed


def _sharded_model_with_a_cycle(refs: list[weakref.ref]) -> nn.Module:
    distributed.init(single_process_group=True)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    model.owner = [model]  # a reference cycle, as FSDP2's hooks and states make: refcounting alone never frees it
    distributed.shard(model, model)
    model(torch.randn(2, 8)).sum().backward()
    refs.append(weakref.ref(model))
    return model


def test_the_model_is_collected_before_the_group_is_destroyed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sharded modules alive at interpreter exit made a rank abort ("terminate called without an
    active exception", exit -6) after a complete run; `tears_down` collects them first."""
    refs: list[weakref.ref] = []
    alive_at_destroy: list[bool] = []
    destroy = dist.destroy_process_group
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a, **k: (alive_at_destroy.append(refs[0]() is not None),
                                                                        destroy(*a, **k))[1])

    @distributed.tears_down
    def train(cfg: object) -> str:
        _sharded_model_with_a_cycle(refs)
        return "done"

    assert train(None) == "done"
    assert alive_at_destroy == [False]
    assert not dist.is_initialized()


def test_an_error_still_destroys_the_group_without_waiting_for_peers() -> None:
    refs: list[weakref.ref] = []

    @distributed.tears_down
    def train(cfg: object) -> None:
        _sharded_model_with_a_cycle(refs)
        raise ValueError("bad config")

    with pytest.raises(ValueError, match="bad config"):
        train(None)
    assert not dist.is_initialized()
