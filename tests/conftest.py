"""Shared fixtures: tiny models on the device named by $VPT_SEG_TEST_DEVICE (CPU default).

Thread policy: the tests, and the tool subprocesses they start (which inherit this
environment), run torch with $VPT_SEG_TEST_THREADS intra-op threads, 1 by default. Tiny
models gain nothing from more, a busy machine loses many times over when every process
takes one thread per core, and the end-to-end results then do not depend on the machine's
core count (the float order of reductions does)."""
import os

THREADS = int(os.environ.get('VPT_SEG_TEST_THREADS', '1'))
for _var in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ[_var] = str(THREADS)  # before torch starts, and for every subprocess

import pytest  # noqa: E402
import torch  # noqa: E402

import vpt_seg  # noqa: F401,E402  (compat fixes before any mmseg import)
from mmseg.utils import register_all_modules  # noqa: E402

torch.set_num_threads(THREADS)
register_all_modules(init_default_scope=True)  # what mmseg's own tools do

DEVICE = torch.device(os.environ.get('VPT_SEG_TEST_DEVICE', 'cpu'))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def device():
    return DEVICE
