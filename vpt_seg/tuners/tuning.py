"""What is tuned, decided in one place (plain torch).

The rule: a parameter is *tuned* iff ``requires_grad`` is True. A prompted backbone
freezes its pretrained weights when it is built (:func:`freeze`), re-enabling only what
the method tunes (prompts, LoRA and adapter weights, and biases with
:func:`bias_parameters`); heads stay trainable. The same rule then selects what the optimizer gets
(:class:`vpt_seg.engine.TunedOptimWrapperConstructor`), what a task checkpoint holds
(:func:`frozen_state_keys`) and what :func:`parameter_report` counts.
"""
from collections import OrderedDict
from typing import Dict, Iterator, List, Tuple

from torch import nn

__all__ = ['BIAS_NAMES', 'bias_parameters', 'freeze', 'is_tuned', 'frozen_state_keys',
           'count_parameters', 'parameter_report', 'format_count']

#: Attribute names under which torch modules keep additive biases
#: (``nn.MultiheadAttention`` packs q, k, v biases into ``in_proj_bias``; timm's EVA and
#: BEiT attention keep ``q_bias`` and ``v_bias``, the key having none).
BIAS_NAMES = ('bias', 'in_proj_bias', 'q_bias', 'v_bias')


def is_tuned(param: nn.Parameter) -> bool:
    """The one rule: a parameter is tuned iff it requires grad."""
    return param.requires_grad


def bias_parameters(module: nn.Module) -> Iterator[Tuple[str, nn.Parameter]]:
    """Every bias term of ``module``'s layers (linear, conv, attention and norm biases),
    found by the attribute a module stores it under, not by matching full names."""
    for mod_name, mod in module.named_modules():
        for name, param in mod.named_parameters(recurse=False):
            if name in BIAS_NAMES and param is not None:
                yield (f'{mod_name}.{name}' if mod_name else name), param


def freeze(module: nn.Module, tune_bias: bool = False) -> None:
    """Freeze every parameter of ``module``; with ``tune_bias`` its biases stay tuned."""
    for param in module.parameters():
        param.requires_grad_(False)
    if tune_bias:
        for _, param in bias_parameters(module):
            param.requires_grad_(True)


def frozen_state_keys(module: nn.Module) -> List[str]:
    """State-dict keys of ``module``'s frozen parameters (what a task file leaves out)."""
    return [name for name, param in module.named_parameters() if not is_tuned(param)]


def count_parameters(module: nn.Module, tuned_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if is_tuned(p) or not tuned_only)


def format_count(n: int) -> str:
    return f'{n / 1e6:.2f}M' if n >= 1e5 else f'{n / 1e3:.1f}K' if n >= 1e3 else str(n)


def parameter_report(model: nn.Module, backbone: nn.Module,
                     prompt: nn.Module = None) -> 'OrderedDict[str, Dict[str, int]]':
    """Tuned and total parameter counts by part: prompts, LoRA and adapters (rows only
    where the backbone has them), backbone biases, the rest of the backbone, the parts
    that modules outside the backbone declare (a CoOp text encoder's ``context`` and
    ``text tower``, through a ``parameter_parts()`` method returning ``{row: [params]}``),
    heads (everything else).

    Returns:
        ``{part: {'tuned': int, 'total': int}}`` plus a ``'total'`` row.
    """
    methods = OrderedDict(prompts=prompt, LoRA=getattr(backbone, 'lora', None),
                          adapters=getattr(backbone, 'adapter', None))
    owner = {id(p): part for part, module in methods.items() if module is not None
             for p in module.parameters()}
    bias_ids = {id(p) for _, p in bias_parameters(backbone)} - set(owner)
    backbone_ids = {id(p) for p in backbone.parameters()}
    declared = OrderedDict()
    for module in model.modules():
        if module is not backbone and callable(getattr(module, 'parameter_parts', None)):
            for part, params in module.parameter_parts().items():
                declared.setdefault(part, [])
                owner.update({id(p): part for p in params})
    parts = OrderedDict((k, dict(tuned=0, total=0)) for k in
                        ['prompts'] + [k for k in ('LoRA', 'adapters') if methods[k] is not None]
                        + ['backbone biases', 'backbone other'] + list(declared) + ['heads'])
    for param in model.parameters():
        pid = id(param)
        part = (owner.get(pid) or ('backbone biases' if pid in bias_ids
                                   else 'backbone other' if pid in backbone_ids else 'heads'))
        parts[part]['total'] += param.numel()
        parts[part]['tuned'] += param.numel() if is_tuned(param) else 0
    parts['total'] = dict(tuned=sum(v['tuned'] for v in parts.values()),
                          total=sum(v['total'] for v in parts.values()))
    return parts
