from .prompted_vit import PromptedVisionTransformer

__all__ = ['PromptedVisionTransformer']
from .cls_head import LinearClsHead, MLPClsHead  # noqa: E402
from .classifier import VPTClassifier  # noqa: E402

__all__ += ['LinearClsHead', 'MLPClsHead', 'VPTClassifier']
