"""Fault injection for tests/test_faults.py: hooks a test config adds to a training run.

Imported by the run through ``custom_imports`` (the test puts ``tests/`` on PYTHONPATH);
never part of the package.
"""
import os
import signal
import time

import torch
from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RecordLossHook(Hook):
    """Append ``iteration loss`` (exact float repr) to ``path`` after every iteration."""

    def __init__(self, path):
        self.path = path

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        with open(self.path, 'a') as f:
            f.write(f'{runner.iter + 1} {float(outputs["loss"])!r}\n')


@HOOKS.register_module()
class FaultHook(Hook):
    """Inject one fault at iteration ``at``:

    * ``'kill'``: SIGKILL after the iteration (before its checkpoint is written);
    * ``'kill_saving'``: SIGKILL while that iteration's checkpoint file is half written;
    * ``'nan'``: the data preprocessor's std becomes 0 (inputs, then the loss, non-finite);
    * ``'pause'``: after the iteration, create the file ``marker`` and wait (at most two
      minutes) until someone deletes it.
    """
    priority = 'HIGHEST'

    def __init__(self, at, fault, marker=None):
        self.at, self.fault, self.marker = at, fault, marker

    def before_train(self, runner):
        if self.fault != 'kill_saving':
            return
        put, name = LocalBackend.put, f'iter_{self.at}.pth'

        def half_then_die(backend, obj, filepath):
            if name in os.path.basename(str(filepath)):
                with open(filepath, 'wb') as f:
                    f.write(obj[:len(obj) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            return put(backend, obj, filepath)

        LocalBackend.put = half_then_die

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self.fault == 'nan' and runner.iter + 1 == self.at:
            runner.model.data_preprocessor.std.zero_()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if self.fault == 'kill' and runner.iter + 1 == self.at:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.fault == 'pause' and runner.iter + 1 == self.at:
            with open(self.marker, 'w') as f:
                f.write(str(os.getpid()))
            deadline = time.monotonic() + 120
            while os.path.exists(self.marker) and time.monotonic() < deadline:
                time.sleep(0.2)


def finite(path):
    """Whether every floating tensor of a checkpoint's state dict is finite."""
    state = torch.load(path, weights_only=True)['state_dict']
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
