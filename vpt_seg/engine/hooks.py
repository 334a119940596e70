"""Hooks that keep a long run's work safe: atomic checkpoints, exact resume, wrong-file
and non-finite checks. Registered in MMEngine's ``HOOKS`` (MMSeg's registry finds them
too), wired into the configs' ``default_hooks``:

    default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook', ...),
                         non_finite=dict(type='NonFiniteCheckHook'))
"""
import logging
import os
import os.path as osp
import re
import zipfile
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.dist import is_main_process
from mmengine.fileio.backends import LocalBackend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.optim import OptimWrapperDict
from mmengine.registry import HOOKS
from mmengine.runner import BaseLoop

from ..formats.frozen_weights import check_task_checkpoint
from .lock import WorkDirLock, WorkDirLockedError

__all__ = ['SafeCheckpointHook', 'NonFiniteCheckHook', 'NonFiniteError', 'DataCheckHook',
           'find_resumable_checkpoint', 'WorkDirLockedError']


class NonFiniteError(FloatingPointError):
    """A loss, gradient or weight became NaN or infinite during training."""


def _unwrap(model):
    """The model itself, inside DDP wrappers and test-time augmentation."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def _fsync(path: str):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text_atomic(path: str, text: str):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _unreadable(path: str) -> Optional[str]:
    """Why ``path`` is not a complete torch checkpoint, or None if it is one.

    Checks the zip archive torch writes (every member's CRC) without unpickling it.
    """
    if not osp.isfile(path):
        return 'missing'
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
        return None if bad is None else f'corrupted member {bad}'
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f'not a complete torch file ({err})'


def find_resumable_checkpoint(work_dir: str, filename_tmpl: str = 'iter_{}.pth'
                              ) -> Tuple[Optional[str], List[str]]:
    """The checkpoint ``--resume`` should continue from, and what it skipped.

    ``work_dir/last_checkpoint`` names the latest checkpoint; when that file is missing or
    unreadable (a run killed while saving), the newest readable ``filename_tmpl`` file in
    its folder (or ``work_dir``) is taken instead.

    Returns:
        ``(path or None, ["path (why)", ...] skipped)``.
    """
    named = None
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip() or None
    skipped = []
    if named is not None:
        why = _unreadable(named)
        if why is None:
            return named, skipped
        skipped.append(f'{named} ({why})')
    pattern = re.compile('^' + re.escape(filename_tmpl).replace(r'\{\}', r'(\d+)') + '$')
    found = {}
    for folder in {osp.dirname(named) if named else work_dir, work_dir}:
        if osp.isdir(folder):
            for name in os.listdir(folder):
                match = pattern.match(name)
                if match:
                    found[osp.join(folder, name)] = int(match.group(1))
    for path in sorted(found, key=found.get, reverse=True):
        if named is not None and osp.abspath(path) == osp.abspath(named):
            continue
        why = _unreadable(path)
        if why is None:
            return path, skipped
        skipped.append(f'{path} ({why})')
    return None, skipped


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """MMEngine's :class:`~mmengine.hooks.CheckpointHook`, made safe to kill, and checked.

    Same arguments and files as ``CheckpointHook``; what changes:

    * **Atomic saves.** A checkpoint is written to ``<name>.tmp``, flushed to disk and
      renamed; ``last_checkpoint`` is rewritten (also atomically) only after that, and
      old checkpoints (``max_keep_ckpts``, the previous best) are deleted only after
      both. A run killed at any point leaves a complete checkpoint to resume from.
    * **Never a non-finite checkpoint.** A model with NaN or infinite weights is refused
      (:class:`NonFiniteError`), so rotation cannot replace good files with it.
    * **Resume that survives a crash.** With ``--resume``, a missing or unreadable
      ``last_checkpoint`` target is skipped for the newest readable checkpoint, with a
      warning naming what was skipped; the torch RNG state (dropout, prompt dropout) is
      saved and restored when the resumed training starts, so on CPU with a fixed seed
      the run continues exactly as it would have (MMEngine replays the data order and
      augmentation itself, :class:`~mmengine.runner.IterBasedTrainLoop` by loading the
      batches it skips).
    * **Wrong files.** A checkpoint loaded by ``load_from``, ``--resume`` or
      ``tools/test.py`` that lacks tuned weights the model needs (its heads, its prompts)
      is refused, naming them and what the file looks like (a pretrained backbone, a
      classification task) instead of MMEngine's "missing keys" warning.
    * **One run per work dir.** Training takes ``WORK_DIR/train.lock``
      (:class:`~vpt_seg.engine.lock.WorkDirLock`, rank 0 only) before anything is loaded
      or saved; a second run into the same work dir refuses, naming the run that holds it
      (pid, host). The lock goes at the end of the run, when the process exits after an
      error, and with the process itself under ``kill -9``: the next run (``--resume``)
      takes a stale lock over with a note. Testing takes no lock.
    * Training into a work dir that already holds a run, without ``--resume``, warns.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._rng_state = None
        self._lock = None
        self._training = False

    # ------------------------------------------------------------- start-up
    def _lock_work_dir(self, runner) -> None:
        """Rank 0 takes the work dir's lock; every rank raises if it could not."""
        from mmengine.dist import broadcast_object_list, get_world_size
        error = None
        if is_main_process():
            self._lock = WorkDirLock(runner.work_dir)
            try:
                note = self._lock.acquire()
            except WorkDirLockedError as err:
                error = str(err)
            else:
                if note:
                    print_log(note, logger='current', level=logging.WARNING)
        if get_world_size() > 1:
            shared = [error]
            broadcast_object_list(shared, src=0)
            error = shared[0]
        if error is not None:
            raise WorkDirLockedError(error)

    def _check_data_fits(self, runner) -> None:
        """Each built loop's dataset against the heads' ``num_classes``, and not without a
        single valid label: the start-up checks of
        :func:`vpt_seg.datasets.config_checks.prepare_cfg`, for MMSeg's own tools, which do
        not run it."""
        from ..datasets.checks import check_class_counts, check_split_has_labels, head_classes
        heads = head_classes(_unwrap(runner.model))
        for name in ('train', 'val', 'test'):
            loop = getattr(runner, f'_{name}_loop', None)
            if not heads or not isinstance(loop, BaseLoop):
                continue
            dataset = loop.dataloader.dataset
            where = f'{name}_dataloader ({type(dataset).__name__})'
            check_class_counts(heads, getattr(dataset, 'metainfo', {}).get('classes'), where)
            if hasattr(dataset, 'ignore_index') and hasattr(dataset, 'get_data_info'):
                check_split_has_labels((dataset.get_data_info(i) for i in range(len(dataset))),
                                       where, dataset.ignore_index)

    def before_run(self, runner) -> None:
        self._check_data_fits(runner)
        # Runner.train() builds its loop before before_run; test() and val() do not.
        self._training = isinstance(runner._train_loop, BaseLoop)
        if self._training:
            self._lock_work_dir(runner)
        # Runs before MMEngine's load_or_resume: pick the checkpoint to resume from.
        if getattr(runner, '_resume', False) and runner._load_from is None:
            path, skipped = find_resumable_checkpoint(runner.work_dir, self.filename_tmpl)
            if skipped:
                message = ('--resume skipped ' + '; '.join(skipped))
                if path is None:
                    raise FileNotFoundError(
                        f'{message}: no readable checkpoint left in {runner.work_dir} to '
                        'resume from. Run without --resume to start over.')
                print_log(f'{message}; resuming from {path}', logger='current',
                          level=logging.WARNING)
            if path is not None:
                runner._load_from = path  # MMEngine resumes from load_from when resume=True

    def after_run(self, runner) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def before_train(self, runner) -> None:
        pointer = osp.join(runner.work_dir, 'last_checkpoint')
        if not getattr(runner, '_resume', False) and osp.isfile(pointer):
            with open(pointer) as f:
                earlier = f.read().strip()
            print_log(f'{runner.work_dir} already holds a run (last checkpoint: {earlier}). '
                      'This run starts over and will replace its last_checkpoint and may '
                      'overwrite its files; to continue that run instead, pass --resume '
                      '(resume=True).', logger='current', level=logging.WARNING)
        super().before_train(runner)
        self._local = isinstance(self.file_backend, LocalBackend)

    # ---------------------------------------------------------------- loading
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get('state_dict', checkpoint)
        state = {re.sub(r'^module\.', '', k): v for k, v in state.items()}
        model = _unwrap(runner.model)
        name = str(runner._load_from or 'the checkpoint')
        own = model.state_dict()
        check_task_checkpoint(model, state, name, expected=list(own.keys()),
                              metadata=getattr(checkpoint.get('state_dict', checkpoint),
                                               '_metadata', None))
        resume = getattr(runner, '_resume', False)
        self._head_classes(checkpoint, state, own, name,
                           fine_tune=getattr(self, '_training', False) and not resume)
        if resume:
            self._rng_state = checkpoint.get('rng_state')

    @staticmethod
    def _head_classes(checkpoint: dict, state: dict, own: dict, name: str,
                      fine_tune: bool) -> None:
        """Head tensors of another class count than the model's (a checkpoint of another
        dataset): refused when testing or resuming; when fine-tuning (``load_from``),
        dropped from the checkpoint before MMEngine loads it, so those layers keep their
        fresh initialisation, and named in one line instead of MMEngine's size-mismatch
        report."""
        from ..datasets.checks import ClassCountError
        heads = ('decode_head.', 'auxiliary_head.', 'head.')
        mismatched = [k for k, v in state.items() if k.startswith(heads) and k in own
                      and hasattr(v, 'shape') and tuple(v.shape) != tuple(own[k].shape)]
        if not mismatched:
            return
        layers = sorted({k.rsplit('.', 1)[0] for k in mismatched})
        # the classifier's weight is (num_classes, C, ...): its first dimension
        ckpt_n = {int(state[k].shape[0]) for k in mismatched if k.endswith('.weight')}
        own_n = {int(own[k].shape[0]) for k in mismatched if k.endswith('.weight')}
        counts = (f'{name} has heads of {"/".join(map(str, sorted(ckpt_n)))} classes, this '
                  f'model {"/".join(map(str, sorted(own_n)))} (the dataset\'s)')
        if not fine_tune:
            raise ClassCountError(
                f'{counts}: it was trained on another dataset, and its classifiers '
                f'({", ".join(layers)}) do not fit this model; tested or resumed with them '
                'left at random the numbers would mean nothing. Test it with the config '
                'and dataset it was trained with, or fine-tune from it with load_from.')
        target = checkpoint['state_dict'] if 'state_dict' in checkpoint else checkpoint
        for key in list(target):
            if re.sub(r'^module\.', '', key) in mismatched:
                del target[key]
        print_log(f'load_from: {counts}; {", ".join(layers)} start afresh, every other '
                  'weight is loaded from it.', logger='current', level=logging.WARNING)

    def before_train_epoch(self, runner) -> None:
        if self._rng_state is None:
            return
        # The model's RNG as it was when the checkpoint was saved. Here, before the first
        # resumed epoch creates its data iterator (which draws from it) and before an
        # iteration-based loop replays the data it skips (numpy only, the transforms'
        # RNG, which that replay restores by itself).
        torch.set_rng_state(self._rng_state['torch'])
        if self._rng_state.get('cuda') and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self._rng_state['cuda'])
        self._rng_state = None

    # ----------------------------------------------------------------- saving
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        rng = dict(torch=torch.get_rng_state())
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng['cuda'] = torch.cuda.get_rng_state_all()
        checkpoint['rng_state'] = rng

    def _check_finite(self, runner, filename: str):
        bad = [k for k, v in _unwrap(runner.model).state_dict().items()
               if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            last = runner.message_hub.get_info('last_ckpt')
            raise NonFiniteError(
                f'refusing to save {filename}: non-finite values in {", ".join(bad[:8])}'
                f'{" ..." if len(bad) > 8 else ""}. The last good checkpoint is '
                f'{last or "none"}.')

    def _atomic_save(self, runner, save, out_dir, filename, *args, **kwargs):
        """``runner.save_checkpoint`` to ``filename.tmp``, then flush and rename."""
        self._check_finite(runner, filename)
        save(out_dir, filename + '.tmp', *args, **kwargs)
        if is_main_process():
            final = self.file_backend.join_path(out_dir, filename)
            _fsync(final + '.tmp')
            os.replace(final + '.tmp', final)

    def _save_checkpoint_with_step(self, runner, step, meta):
        if not self._local:  # object stores: rename is not atomic there
            return super()._save_checkpoint_with_step(runner, step, meta)
        remove = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                remove.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        self._atomic_save(runner, runner.save_checkpoint, self.out_dir, filename,
                          self.file_client_args, save_optimizer=self.save_optimizer,
                          save_param_scheduler=self.save_param_scheduler, meta=meta,
                          by_epoch=self.by_epoch, backend_args=self.backend_args,
                          **self.args)
        if not is_main_process():
            return
        _write_text_atomic(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for old in remove:  # only now that the new file and its pointer are complete
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
            if osp.isfile(path):
                os.remove(path)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        if not self.save_best or not self._local:
            return super()._save_best_checkpoint(runner, metrics)
        # MMEngine deletes the previous best before writing the new one: write atomically
        # and delete afterwards.
        removed: List[str] = []
        backend_remove, save = self.file_backend.remove, runner.save_checkpoint
        own = 'save_checkpoint' in vars(runner)  # an instance attribute already?
        self.file_backend.remove = removed.append
        runner.save_checkpoint = lambda out_dir, filename, *a, **kw: self._atomic_save(
            runner, save, out_dir, filename, *a, **kw)
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            if own:
                runner.save_checkpoint = save
            else:
                del runner.save_checkpoint  # the instance attribute: the method again
            self.file_backend.remove = backend_remove
        for path in removed:
            backend_remove(path)


def _non_finite_terms(losses: Dict) -> List[str]:
    bad = []
    for name, value in losses.items():
        if 'loss' not in name:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, torch.Tensor) and not torch.isfinite(v.detach()).all():
                bad.append(f'{name}={v.detach().float().sum().item():g}')
                break
    return bad


@HOOKS.register_module()
class NonFiniteCheckHook(Hook):
    """Stop training at the first non-finite loss or gradient, before the optimizer step.

    A forward hook on the model checks every loss term of each training forward; an
    optimizer step pre-hook checks every gradient (with ``AmpOptimWrapper``, the scaler
    skips steps with infinite gradients itself and never calls the optimizer). Either
    raises :class:`NonFiniteError` naming the iteration and the loss terms (or
    parameters), so the run exits non-zero, the weights keep their last finite values
    and nothing non-finite is saved; the last good checkpoint stays on disk.
    """
    priority = 'ABOVE_NORMAL'

    def __init__(self):
        self._handles = []
        self._runner = None
        self._names = {}

    def _where(self) -> Tuple[int, str]:
        last = self._runner.message_hub.get_info('last_ckpt')
        return self._runner.iter + 1, (f'the last good checkpoint is {last}' if last
                                       else 'no checkpoint was saved yet')

    def _advice(self) -> str:
        return ('Nothing of this iteration was saved. Common causes: a learning rate too '
                'high (optim_wrapper.optimizer.lr), a data_preprocessor std of 0, '
                'labels outside the classes (python tools/check_data.py CONFIG). Fix the '
                'config, then continue with --resume.')

    def _check_losses(self, module, args, output):
        if not module.training or not isinstance(output, dict):
            return
        bad = _non_finite_terms(output)
        if bad:
            it, last = self._where()
            raise NonFiniteError(f'iteration {it}: non-finite loss ({", ".join(bad)}); '
                                 f'stopped before the optimizer step, {last}. '
                                 + self._advice())

    def _check_grads(self, optimizer, args, kwargs):
        bad = [self._names.get(id(p), 'a parameter') for group in optimizer.param_groups
               for p in group['params']
               if p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad:
            it, last = self._where()
            raise NonFiniteError(f'iteration {it}: non-finite gradient of '
                                 f'{", ".join(bad[:8])}{" ..." if len(bad) > 8 else ""} '
                                 f'(the loss was finite); stopped before the optimizer '
                                 f'step, {last}. ' + self._advice())

    def before_train(self, runner) -> None:
        self._runner = runner
        model = _unwrap(runner.model)
        self._names = {id(p): n for n, p in model.named_parameters()}
        self._handles = [model.register_forward_hook(self._check_losses)]
        wrappers = runner.optim_wrapper.optim_wrappers.values() \
            if isinstance(runner.optim_wrapper, OptimWrapperDict) else [runner.optim_wrapper]
        for wrapper in wrappers:
            self._handles.append(wrapper.optimizer.register_step_pre_hook(self._check_grads))

    def after_train(self, runner) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@HOOKS.register_module()
class DataCheckHook(Hook):
    """Scan the training (and validation) data before the first iteration.

    Opt-in (a full scan reads every file once): ``custom_hooks = [dict(type='DataCheckHook')]``.
    Every image and annotation is read and checked as ``tools/check_data.py`` does
    (:func:`vpt_seg.datasets.check_dataset`); any problem stops the run with all of
    them listed, before hours of training.

    Args:
        val: Also scan the validation set.
    """
    priority = 'VERY_HIGH'

    def __init__(self, val: bool = True):
        self.val = val

    def before_train(self, runner) -> None:
        from ..datasets.checks import DataError, check_dataset
        loaders = [('train', runner.train_dataloader)]
        if self.val and runner.val_loop is not None:
            loaders.append(('val', runner.val_dataloader))
        for name, loader in loaders:
            dataset = loader.dataset
            if not hasattr(dataset, 'ignore_index'):  # not a segmentation dataset
                continue
            print_log(f'Checking the {name} data ({len(dataset)} images) ...', logger='current')
            report = check_dataset(dataset, progress=False)
            if report['problems']:
                raise DataError(f'{len(report["problems"])} problems in the {name} data:\n  '
                                + '\n  '.join(report['problems'][:50]))
