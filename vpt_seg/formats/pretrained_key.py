"""Which config key holds a module's pretrained file: the rule of the module's class.

The rule itself is two classmethods of the class
(:meth:`~vpt_seg.models.frozen.FrozenBackboneMixin.pretrained_in` and
:meth:`~vpt_seg.models.frozen.FrozenBackboneMixin.set_pretrained`); this module only finds
the class a config names, through MMSeg's registry, so file formats need not import the
models. A class that declares no rule (MMSeg's own ``VisionTransformer``) follows MMSeg's
layout, ``init_cfg.checkpoint``.
"""
from typing import Mapping, MutableMapping, Optional

__all__ = ['NAMED_FLAG', 'FLAG_NAMES', 'rule_of', 'pretrained_in', 'set_pretrained']

#: The backbone argument that says the user named its pretrained file (the tools set it
#: when ``--cfg-options`` names the file; see ``FrozenBackboneMixin.prefer_configured``).
NAMED_FLAG = 'prefer_configured'
#: Every name that flag has had (``prefer_init_cfg``, ``prefer_checkpoint`` before it):
#: the user's word, dropped from what a task file or a folded checkpoint's config keeps.
FLAG_NAMES = (NAMED_FLAG, 'prefer_init_cfg', 'prefer_checkpoint')

#: The registered class whose rule a module without one follows (MMSeg's layout).
MMSEG_LAYOUT = 'PromptedVisionTransformer'


def rule_of(module_cfg: Mapping) -> type:
    """The class whose pretrained-file rule a module config (e.g. ``model.backbone``)
    follows: its registered class when that declares one, else MMSeg's layout."""
    from mmseg.registry import MODELS
    kind = module_cfg.get('type') if isinstance(module_cfg, Mapping) else None
    cls = MODELS.get(kind) if isinstance(kind, str) else kind
    if not hasattr(cls, 'pretrained_in'):
        cls = MODELS.get(MMSEG_LAYOUT)
    return cls


def pretrained_in(module_cfg: Mapping) -> Optional[str]:
    """The pretrained file a module config names (None: none)."""
    return rule_of(module_cfg).pretrained_in(module_cfg)


def set_pretrained(module_cfg: MutableMapping, path: Optional[str]) -> None:
    """Name ``path`` as a module config's pretrained file (None: no file)."""
    rule_of(module_cfg).set_pretrained(module_cfg, path)
