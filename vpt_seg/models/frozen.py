"""Task-checkpoint behaviour of a backbone whose pretrained weights are frozen.

A task checkpoint holds only what was tuned (prompts, tuned biases, heads) and a small
``signature`` buffer; the frozen weights come from the pretrained file. This mixin is
the one implementation of that contract for every prompted backbone:

* ``state_dict()`` leaves the frozen weights out (unless ``save_frozen``) and records the
  pretrained file in the state dict's metadata (``local_metadata['pretrained']``);
* ``load_state_dict()`` refuses a checkpoint made for another backbone (``signature``,
  shapes), refuses one with some but not all frozen weights, and completes a task
  checkpoint with the frozen weights from the pretrained file: the file the checkpoint
  records first, then the backbone's own; with the frozen weights' sha256 (task files
  record it) another file of the same architecture is refused;
* :meth:`FrozenBackboneMixin.frozen_digest` is that sha256.

A backbone using it provides ``signature`` (a buffer), ``signature_fields``,
``save_frozen``, ``pretrained_file`` (the file its frozen weights were loaded from, or
None), :meth:`configured_pretrained` (the file its config names) and
:meth:`load_pretrained` (load the frozen weights from a file), and calls
:meth:`init_frozen_hooks` at the end of ``__init__``.
"""
import hashlib
import logging
import os.path as osp
from typing import List, Optional, Sequence

import torch
from mmengine.logging import print_log

from ..tuning import frozen_state_keys

__all__ = ['FrozenBackboneMixin']


def _listing(keys: Sequence[str], limit: int = 12) -> str:
    keys = list(keys)
    return ', '.join(keys[:limit]) + (f' ... ({len(keys)} in all)' if len(keys) > limit else '')


class FrozenBackboneMixin:
    """What a frozen backbone saves, loads and checks (see the module docstring).

    Attributes the backbone sets:
        signature_fields: Names of the ``signature`` buffer's entries (for messages).
        pretrained_option: The config key users set to name the pretrained file, for
            messages (``model.backbone.checkpoint``).
    """

    signature_fields: Sequence[str] = ()
    pretrained_option = 'model.backbone.checkpoint'

    # ------------------------------------------------ what the backbone provides
    def configured_pretrained(self) -> Optional[str]:
        """The pretrained file the backbone's config names (None: none)."""
        raise NotImplementedError

    def load_pretrained(self, path: str) -> None:
        """Load the frozen weights from ``path`` (and set ``pretrained_file``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ set-up
    def init_frozen_hooks(self):
        """Register the state-dict hooks; call at the end of ``__init__``."""
        self._frozen_loaded = False     # set once the frozen weights came from a file
        self._loading_pretrained = False  # guards the load pre-hook against re-entry
        self.register_state_dict_post_hook(FrozenBackboneMixin._drop_frozen_from_state_dict)
        self.register_load_state_dict_pre_hook(FrozenBackboneMixin._check_and_complete)

    # ---------------------------------------------------------------- digest
    def frozen_digest(self) -> str:
        """sha256 of the frozen weights (names and values), as loaded: what a task file
        records, so another pretrained file of the same architecture is refused."""
        h = hashlib.sha256()
        params = dict(self.named_parameters())
        for name in sorted(frozen_state_keys(self)):
            t = params[name].detach().cpu().contiguous()
            h.update(f'{name}:{tuple(t.shape)}:{t.dtype};'.encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    # ---------------------------------------------------------------- saving
    @staticmethod
    def _drop_frozen_from_state_dict(module, state_dict, prefix, local_metadata):
        path = module.pretrained_file
        if path:  # as configured (relative to the run's folder), and absolute
            local_metadata['pretrained'] = [path] if '://' in path else list(
                dict.fromkeys([path, osp.abspath(path)]))
        if module.save_frozen:
            return
        for key in frozen_state_keys(module):
            state_dict.pop(prefix + key, None)

    # --------------------------------------------------------------- loading
    def check_signature(self, theirs: Optional[torch.Tensor], where: str = ''):
        """Raise if a checkpoint's ``signature`` (None: it has none) is another ViT's."""
        ours = self.signature
        if theirs is None or (theirs.shape == ours.shape and torch.equal(theirs.cpu(), ours.cpu())):
            return
        if theirs.shape != ours.shape:
            diff = (f'{theirs.numel()} signature fields in the checkpoint, {ours.numel()} '
                    f'here ({type(self).__name__}: {", ".join(self.signature_fields)}): a '
                    'checkpoint of another kind of backbone')
        else:
            diff = ', '.join(f'{f} {int(a)} in the checkpoint vs {int(b)} here'
                             for f, a, b in zip(self.signature_fields, theirs.tolist(),
                                                ours.tolist()) if a != b)
        raise ValueError(f'{where}checkpoint was made for another ViT than this backbone '
                         f'({diff}); use the config it was trained with.')

    def _check_and_complete(self, state_dict, prefix, local_metadata, strict, missing_keys,
                            unexpected_keys, error_msgs):
        """Before loading: refuse checkpoints of another backbone, and complete a task
        checkpoint (tuned weights only) with the frozen weights from the pretrained file."""
        sig_key = prefix + 'signature'
        self.check_signature(state_dict.get(sig_key))
        if sig_key not in state_dict:
            state_dict[sig_key] = self.signature.clone()
        own = dict(self.state_dict(keep_vars=True, prefix=prefix))
        own.update({prefix + k: p for k, p in self.named_parameters()})
        mismatched = [
            f'{k}: {tuple(state_dict[k].shape)} in the checkpoint, {tuple(v.shape)} here'
            for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
        if mismatched:
            raise ValueError('checkpoint does not fit this backbone (was it made for another '
                             'ViT or prompt setting?):\n  ' + '\n  '.join(mismatched))
        frozen = [prefix + k for k in frozen_state_keys(self)]
        present = [k for k in frozen if k in state_dict]
        if 0 < len(present) < len(frozen) and not self._loading_pretrained:
            raise ValueError(self._partial_frozen_message(state_dict, prefix, frozen, present))
        if not frozen or present or self._loading_pretrained:
            return  # a full checkpoint: load it as it is
        if not self._frozen_loaded:
            self.complete_frozen(local_metadata)
        params = dict(self.named_parameters(prefix=prefix[:-1] if prefix else ''))
        for key in frozen:
            state_dict[key] = params[key].detach()

    def pretrained_candidates(self, local_metadata: dict) -> List[str]:
        """Where the frozen weights of a task checkpoint may be: the files it records
        (the training run's, absolute and relative), then the config's."""
        recorded = local_metadata.get('pretrained')
        recorded = [recorded] if isinstance(recorded, str) else list(recorded or [])
        return list(dict.fromkeys(p for p in recorded + [self.configured_pretrained()] if p))

    def complete_frozen(self, local_metadata: dict):
        """Load the frozen weights a task checkpoint leaves out, from the first of
        :meth:`pretrained_candidates` that exists and, when the checkpoint records their
        sha256 (``local_metadata['frozen_sha256']``), holds exactly those weights.

        Raises:
            ValueError: No pretrained file is known, or none that exists holds the
                recorded weights.
            FileNotFoundError: None of the known files exists.
        """
        own = self.configured_pretrained()
        candidates = self.pretrained_candidates(local_metadata)
        existing = [p for p in candidates if '://' in p or osp.exists(p)]
        if not candidates:
            raise ValueError(
                'this checkpoint holds only tuned parameters (a task checkpoint); the '
                'frozen backbone must come from its pretrained file, but neither the '
                f'checkpoint nor the config ({self.pretrained_option}) names one; set '
                f'--cfg-options {self.pretrained_option}=/path/to/weights')
        if not existing:
            raise FileNotFoundError(
                'this checkpoint holds only tuned parameters (a task checkpoint); its frozen '
                f'backbone comes from the pretrained file, looked for at {candidates} (from '
                f'the checkpoint, then {self.pretrained_option}), none exists. Put the file '
                f'at one of those paths, or name it: --cfg-options {self.pretrained_option}='
                '/path/to/weights')
        digest = local_metadata.get('frozen_sha256')
        for found in existing:
            print_log(f'Task checkpoint: loading the frozen backbone from {found}' + (
                f' (the file it was trained with; the config names {own})'
                if own and osp.abspath(own) != osp.abspath(found) else ''), logger='current')
            self._loading_pretrained = True
            try:
                self.load_pretrained(found)
            finally:
                self._loading_pretrained = False
            self._frozen_loaded = True
            if digest is None or self.frozen_digest() == digest:
                return
            print_log(f'{found}: not the frozen weights this task was trained on (sha256 '
                      'differs)', logger='current', level=logging.WARNING)
        raise ValueError(
            f'none of {existing} holds the frozen weights this task was trained on (the '
            f'task file records their sha256 {digest[:16]}...; same architecture, other '
            'values): put the pretrained file the task was made with next to it.')

    @staticmethod
    def _partial_frozen_message(state_dict, prefix, frozen, present) -> str:
        """Why a checkpoint with some, not all, frozen weights is refused, and what it
        looks like: a task file with leaked frozen keys, or a full one missing some."""
        tuned = [k for k in state_dict if k.startswith(prefix) and k not in frozen
                 and not k.endswith('signature')]
        if len(present) <= len(frozen) // 2:
            return (f'checkpoint looks like a task file ({len(tuned)} tuned tensors, '
                    f'{len(frozen) - len(present)} of the {len(frozen)} frozen backbone '
                    'weights absent) but holds frozen weights that should not be there: '
                    f'{_listing(present)}. A task file takes the frozen backbone from the '
                    'pretrained file; remove these keys (or re-save it with '
                    'save_frozen=False), or save a full checkpoint with save_frozen=True.')
        missing = [k for k in frozen if k not in state_dict]
        return (f'checkpoint looks like a full checkpoint ({len(present)} of the '
                f'{len(frozen)} frozen backbone weights) but lacks {_listing(missing)}; '
                'is it truncated or made for another backbone?')
