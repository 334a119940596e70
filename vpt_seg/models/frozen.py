"""What a backbone with frozen pretrained weights declares for task checkpoints.

The rules (what a task checkpoint holds, where its frozen weights come from, whether
they match) live in :mod:`vpt_seg.formats.loading`; this mixin only wires a backbone to them
and names what the backbone must declare:

* what is frozen: its parameters with ``requires_grad=False`` (the tuning rule,
  :func:`vpt_seg.tuners.tuning.frozen_state_keys`);
* ``signature`` (a buffer of integers) and ``signature_fields`` (their names);
* ``save_frozen``, ``pretrained_file`` (the file its frozen weights were loaded from,
  or None), ``pretrained_option`` (the config key of that file, for messages);
* :meth:`configured_pretrained` (the file its config names) and
  :meth:`load_pretrained` (load the frozen weights from a file);
* optionally :meth:`check_checkpoint_fits` (extra checks of a checkpoint's tensors).

It calls :meth:`init_frozen_hooks` at the end of ``__init__``. The load pre-hook stays
the trigger because every loader (MMEngine's runner, MMSeg's ``init_model`` and
``MMSegInferencer``) ends in ``load_state_dict``; it is one call into
:func:`vpt_seg.formats.loading.prepare_state_dict`.
"""
from typing import Optional, Sequence

from ..formats import loading

__all__ = ['FrozenBackboneMixin']


class FrozenBackboneMixin:
    """What a frozen backbone declares so that :mod:`vpt_seg.formats.loading` can save, load
    and check its task checkpoints (see the module docstring).

    Attributes:
        signature_fields: Names of the ``signature`` buffer's entries (for messages).
        pretrained_option: The config key users set to name the pretrained file.
        prefer_configured: When a task checkpoint is loaded, take its frozen weights from
            :meth:`configured_pretrained` only (the user named it), not from the file the
            checkpoint records; their sha256 is still checked.
    """

    signature_fields: Sequence[str] = ()
    pretrained_option = 'model.backbone.checkpoint'
    prefer_configured = False

    # ------------------------------------------------ what the backbone provides
    def configured_pretrained(self) -> Optional[str]:
        """The pretrained file the backbone's config names (None: none)."""
        raise NotImplementedError

    def load_pretrained(self, path: str) -> None:
        """Load the frozen weights from ``path`` (and set ``pretrained_file``).

        Raises:
            OSError, ValueError, RuntimeError: the file is missing, unreadable or holds
                another model (a task checkpoint then tries its next candidate).
        """
        raise NotImplementedError

    def check_checkpoint_fits(self, state_dict, prefix: str) -> None:
        """Raise ``ValueError`` if a checkpoint's tensors do not fit this backbone: every
        tensor must have this backbone's shape. Backbones extend it."""
        loading.check_shapes(self, state_dict, prefix)

    # ------------------------------------------------------------------ set-up
    def init_frozen_hooks(self):
        """Register the state-dict hooks; call at the end of ``__init__``."""
        self._frozen_loaded = False     # set once the frozen weights came from a file
        self._loading_pretrained = False  # guards the load pre-hook against re-entry
        self._digest = (None, None)     # (versions of the frozen tensors, sha256)
        self.register_state_dict_post_hook(FrozenBackboneMixin._record)
        self.register_load_state_dict_pre_hook(FrozenBackboneMixin._prepare)

    def frozen_digest(self) -> str:
        """sha256 of the frozen weights as loaded (:func:`vpt_seg.formats.loading.frozen_digest`)."""
        return loading.frozen_digest(self)

    @staticmethod
    def _record(module, state_dict, prefix, local_metadata):
        loading.record_pretrained(module, state_dict, prefix, local_metadata)

    def _prepare(self, state_dict, prefix, local_metadata, strict, missing_keys,
                 unexpected_keys, error_msgs):
        loading.prepare_state_dict(self, state_dict, prefix, local_metadata)
