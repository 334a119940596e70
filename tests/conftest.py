"""Shared fixtures: tiny models on the device named by $VPT_SEG_TEST_DEVICE (CPU default)."""
import os

import pytest
import torch

import vpt_seg  # noqa: F401  (compat fixes before any mmseg import)
from mmseg.utils import register_all_modules

register_all_modules(init_default_scope=True)  # what mmseg's own tools do

DEVICE = torch.device(os.environ.get('VPT_SEG_TEST_DEVICE', 'cpu'))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def device():
    return DEVICE
