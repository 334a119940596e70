"""An optimizer constructor that sees only tuned parameters, with a prompt policy."""
import copy
import logging

from mmengine.logging import MMLogger, print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS

from ..tuners.adapter import Adapter
from ..tuners.lora import LoRA
from ..tuners.prompt import VisualPrompt
from ..tuners.tuning import count_parameters, format_count, is_tuned, parameter_report


def tuned_summary(model) -> str:
    """One line: how many parameters are tuned, of how many, and which parts they are in.

    E.g. ``tuned 13.39M of 317.54M parameters (4.22%): prompts 0.25M, backbone biases
    0.10M, heads 13.04M`` (parts of :func:`vpt_seg.tuners.tuning.parameter_report` with tuned
    parameters; a model without a ``backbone`` gets the two totals only).
    """
    backbone = getattr(model, 'backbone', None)
    if backbone is None:
        tuned, total = count_parameters(model, tuned_only=True), count_parameters(model)
        return f'tuned {format_count(tuned)} of {format_count(total)} parameters'
    report = parameter_report(model, backbone, getattr(backbone, 'prompt', None))
    row = report.pop('total')
    tuned, total = row['tuned'], row['total']
    parts = ', '.join(f'{part} {format_count(row["tuned"])}'
                      for part, row in report.items() if row['tuned'])
    return (f'tuned {format_count(tuned)} of {format_count(total)} parameters '
            f'({100 * tuned / max(total, 1):.2f}%)' + (f': {parts}' if parts else ''))


class _DropParamwiseLines(logging.Filter):
    def filter(self, record):
        return not str(record.msg).startswith('paramwise_options --')


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class TunedOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """:class:`~mmengine.optim.DefaultOptimWrapperConstructor` over tuned parameters only.

    Frozen parameters (``requires_grad=False``, see :mod:`vpt_seg.tuners.tuning`) never reach the
    optimizer, silently and without per-parameter warnings. Every other ``paramwise_cfg``
    option keeps MMEngine's meaning, and four more set the policy of the method's own
    weights, which start from scratch like the heads:

    Args (in ``paramwise_cfg``):
        prompt_lr_mult (float): learning-rate multiplier for prompt tokens. Default 1.
        prompt_decay_mult (float): weight-decay multiplier for prompt tokens. Default 0:
            prompts are input tokens, like [CLS] and position embeddings, and are not
            pulled towards zero.
        tuner_lr_mult (float): learning-rate multiplier for LoRA and adapter weights
            (:class:`~vpt_seg.tuners.lora.LoRA`, :class:`~vpt_seg.tuners.adapter.Adapter`).
            Default 1.
        tuner_decay_mult (float): weight-decay multiplier for them. Default 1: they are
            weights, decayed as the LoRA and AdaptFormer papers decay them.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        self.prompt_lr_mult = float(paramwise_cfg.pop('prompt_lr_mult', 1.0))
        self.prompt_decay_mult = float(paramwise_cfg.pop('prompt_decay_mult', 0.0))
        self.tuner_lr_mult = float(paramwise_cfg.pop('tuner_lr_mult', 1.0))
        self.tuner_decay_mult = float(paramwise_cfg.pop('tuner_decay_mult', 1.0))
        # A non-empty paramwise_cfg makes MMEngine group parameters through add_params.
        paramwise_cfg.setdefault('custom_keys', {})
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def add_params(self, params, module, prefix='', is_dcn_module=None):
        if not any(is_tuned(p) for p in module.parameters()):
            return  # a frozen subtree
        policy = next((mults for kind, mults in (
            (VisualPrompt, (self.prompt_lr_mult, self.prompt_decay_mult)),
            ((LoRA, Adapter), (self.tuner_lr_mult, self.tuner_decay_mult)))
            if isinstance(module, kind)), None)
        if policy is not None:
            lr_mult, decay_mult = policy
            for name, param in module.named_parameters():
                if is_tuned(param):
                    group = dict(params=[param], lr=self.base_lr * lr_mult)
                    if self.base_wd is not None:
                        group['weight_decay'] = self.base_wd * decay_mult
                    params.append(group)
            return
        # MMEngine's rules for this module's own tuned parameters; children recurse here.
        view = copy.copy(module)
        view.__dict__['_parameters'] = {k: p for k, p in module._parameters.items()
                                        if p is not None and is_tuned(p)}
        view.__dict__['_modules'] = {}
        super().add_params(params, view, prefix, is_dcn_module)
        for name, child in module.named_children():
            self.add_params(params, child, f'{prefix}.{name}' if prefix else name, is_dcn_module)

    def __call__(self, model):
        # MMEngine logs one line per parameter and option ("paramwise_options -- ..."):
        # thousands for a ViT-L. The one-line summary below says what matters.
        logger = MMLogger.get_current_instance()
        quiet = _DropParamwiseLines()
        logger.addFilter(quiet)
        try:
            wrapper = super().__call__(model)
        finally:
            logger.removeFilter(quiet)
        inner = getattr(model, 'module', model)
        print_log(f'Optimizer: {tuned_summary(inner)}', logger='current')
        return wrapper
