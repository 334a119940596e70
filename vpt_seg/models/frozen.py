"""What a backbone with frozen pretrained weights declares for task checkpoints.

The rules (what a task checkpoint holds, where its frozen weights come from, whether
they match) live in :mod:`vpt_seg.formats.frozen_weights`; this mixin only wires a backbone to them
and names what the backbone must declare:

* what is frozen: its parameters with ``requires_grad=False`` (the tuning rule,
  :func:`vpt_seg.tuners.tuning.frozen_state_keys`);
* ``signature`` (a buffer of integers) and ``signature_fields`` (their names);
* ``save_frozen``, ``pretrained_file`` (the file its frozen weights were loaded from,
  or None), ``pretrained_option`` (the config key of that file, for messages);
* the pretrained-file rule, two classmethods every site that reads or names the file
  in a config calls: :meth:`pretrained_in` (the file a config of this class names) and
  :meth:`set_pretrained` (name one, or none);
* :meth:`configured_pretrained` (the file its config names) and
  :meth:`load_pretrained` (load the frozen weights from a file);
* optionally :meth:`check_checkpoint_fits` (extra checks of a checkpoint's tensors);
* :meth:`lora_sites` (what each LoRA target names in its blocks), for the LoRA and
  adapter options that :meth:`init_tuners` builds.

It calls :meth:`init_frozen_hooks` at the end of ``__init__``. The load pre-hook stays
the trigger because every loader (MMEngine's runner, MMSeg's ``init_model`` and
``MMSegInferencer``) ends in ``load_state_dict``; it is one call into
:func:`vpt_seg.formats.frozen_weights.prepare_state_dict`.
"""
from typing import Dict, List, Mapping, MutableMapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..formats import frozen_weights
from ..tuners.adapter import Adapter, check_adapter_options
from ..tuners.lora import LORA_TARGETS, LoRA, check_lora_options

__all__ = ['FrozenBackboneMixin']


class FrozenBackboneMixin:
    """What a frozen backbone declares so that :mod:`vpt_seg.formats.frozen_weights` can save, load
    and check its task checkpoints (see the module docstring).

    Attributes:
        signature_fields: Names of the ``signature`` buffer's entries (for messages).
        pretrained_option: The config key users set to name the pretrained file.
        pretrained_key: That key inside this module's own config (``pretrained_option``
            less the module's place, dotted), which :meth:`pretrained_in` and
            :meth:`set_pretrained` read and set.
        prefer_configured: When a task checkpoint is loaded, take its frozen weights from
            :meth:`configured_pretrained` only (the user named it), not from the file the
            checkpoint records; their sha256 is still checked. Its config argument has
            the same name; the tools set it when ``--cfg-options`` names the file.
    """

    signature_fields: Sequence[str] = ()
    pretrained_option = 'model.backbone.checkpoint'
    pretrained_key = 'checkpoint'
    prefer_configured = False

    # ---------------------------------------------- the pretrained-file rule
    @classmethod
    def pretrained_in(cls, cfg: Mapping) -> Optional[str]:
        """The pretrained file a config of this class names (at its ``pretrained_key``);
        None: none."""
        value = cfg
        for key in cls.pretrained_key.split('.'):
            value = value.get(key) if isinstance(value, Mapping) else None
        return value if isinstance(value, str) else None

    @classmethod
    def set_pretrained(cls, cfg: MutableMapping, path: Optional[str]) -> None:
        """Name ``path`` as the pretrained file in a config of this class (None: no
        file)."""
        *outer, last = cls.pretrained_key.split('.')
        for key in outer:
            cfg = cfg.setdefault(key, {})
        cfg[last] = path

    @classmethod
    def names_pretrained(cls, option: str) -> bool:
        """Whether a ``--cfg-options`` key names the pretrained file: its key, or the
        entry of this module's config that holds it (``model.backbone.init_cfg``)."""
        module = cls.pretrained_option[:-len(cls.pretrained_key)]
        holder = module + cls.pretrained_key.split('.')[0]
        return option == holder or option.startswith(holder + '.')

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
        frozen_weights.check_shapes(self, state_dict, prefix)

    def lora_sites(self, target: str) -> Dict[str, Tuple[int, int]]:
        """The sites a LoRA ``target`` names in each block, ``{site: (in, out)}``; empty
        where the blocks have no such layer."""
        raise NotImplementedError

    # ------------------------------------------------------------- tuners
    def init_tuners(self, lora: Optional[Mapping], adapter: Optional[Mapping],
                    num_layers: int, embed_dims: int):
        """Build ``self.lora`` and ``self.adapter`` (None when the option is None) from
        the backbone's ``lora`` and ``adapter`` options; call after the ViT is built.

        Raises:
            ValueError: an option out of range, or a LoRA target naming no layer of
                this backbone's blocks.
        """
        self.lora = self.adapter = None
        self.lora_cfg = check_lora_options(lora) if lora is not None else None
        self.adapter_cfg = check_adapter_options(adapter) if adapter is not None else None
        if self.lora_cfg is not None:
            sites = {}
            for target in self.lora_cfg['targets']:
                found = self.lora_sites(target)
                if not found:
                    raise ValueError(
                        f'model.backbone.lora.targets: {target!r} names no layer of '
                        f"{type(self).__name__}'s blocks; it has "
                        f'{[t for t in LORA_TARGETS if self.lora_sites(t)]}')
                sites.update(found)
            self.lora = LoRA([sites] * num_layers, **self.lora_cfg)
        if self.adapter_cfg is not None:
            self.adapter = Adapter(num_layers, embed_dims, **self.adapter_cfg)

    def lora_weight(self, layer: int, site: str) -> Tuple[nn.Parameter, Optional[slice]]:
        """The frozen weight a LoRA site updates in block ``layer``, and its rows (a slice
        of a packed projection) or None."""
        raise NotImplementedError

    @torch.no_grad()
    def fold_lora(self) -> None:
        """Merge ``(alpha / r) B A`` into the weights LoRA updates and drop ``self.lora``:
        the same function, no LoRA cost at inference. The pretrained weights change, so
        the backbone is then a model of its own (save it with ``save_frozen=True``)."""
        if self.lora is None:
            return
        for layer, sites in self.lora.sites().items():
            for site in sites:
                weight, rows = self.lora_weight(layer, site)
                target = weight if rows is None else weight[rows]
                target.add_(self.lora.merged(layer, site).to(weight.dtype))
        self.lora = self.lora_cfg = None

    def tuner_modules(self) -> List[nn.Module]:
        """The method's own modules (prompts, LoRA, adapters): tuned, and in train mode
        when the model trains, whatever else is frozen."""
        return [m for m in (getattr(self, 'prompt', None), self.lora, self.adapter)
                if m is not None]

    # ------------------------------------------------------------------ set-up
    def init_frozen_hooks(self):
        """Register the state-dict hooks; call at the end of ``__init__``."""
        self._frozen_loaded = False     # set once the frozen weights came from a file
        self._loading_pretrained = False  # guards the load pre-hook against re-entry
        self._digest = (None, None)     # (versions of the frozen tensors, sha256)
        self._checkpoint_source = None  # the checkpoint being loaded, where known
        self.register_state_dict_post_hook(FrozenBackboneMixin._record)
        self.register_load_state_dict_pre_hook(FrozenBackboneMixin._prepare)

    def frozen_digest(self) -> str:
        """sha256 of the frozen weights as loaded
        (:func:`vpt_seg.formats.frozen_weights.frozen_digest`)."""
        return frozen_weights.frozen_digest(self)

    @staticmethod
    def _record(module, state_dict, prefix, local_metadata):
        frozen_weights.record_pretrained(module, state_dict, prefix, local_metadata)

    def _prepare(self, state_dict, prefix, local_metadata, strict, missing_keys,
                 unexpected_keys, error_msgs):
        frozen_weights.prepare_state_dict(self, state_dict, prefix, local_metadata)
