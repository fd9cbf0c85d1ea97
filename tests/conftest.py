"""Shared fixtures of the test suite. The tiny models themselves are built by `tb_hf.testing` (also used by the
bad-input battery, which must not import tests/)."""

from __future__ import annotations

import pytest
import torch

from tb_hf.testing import ARCHS, dataset_for, tiny_training_args


@pytest.fixture(scope="module", params=list(ARCHS))
def arch(request):
    """Each architecture of `tb_hf.testing.ARCHS`: (name, a fresh seeded model, block paths, matrix tails, matrix
    units per block)."""
    torch.manual_seed(0)
    factory, blocks, mats, per_block = ARCHS[request.param]
    return request.param, factory(), blocks, mats, per_block


@pytest.fixture
def tiny_bert():
    """A fresh tiny BERT classifier (2 blocks, hidden 32), seeded."""
    torch.manual_seed(0)
    return ARCHS["bert"][0]()


@pytest.fixture
def tiny_trainer_inputs(tmp_path):
    """``(args, dataset)`` builders for a few quiet CPU steps: ``args(**overrides)``, ``dataset(model, n=16)``."""
    return (lambda **overrides: tiny_training_args(tmp_path, **overrides)), dataset_for
