from .prompted_vit import PromptedVisionTransformer
from .setr_head import LeanSETRUPHead
from .timm_vit import PromptedTimmViT

__all__ = ['PromptedVisionTransformer', 'LeanSETRUPHead', 'PromptedTimmViT']
from .classifier import VPTClassifier  # noqa: E402
from .cls_head import LinearClsHead, MLPClsHead  # noqa: E402

__all__ += ['LinearClsHead', 'MLPClsHead', 'VPTClassifier']
from .segmentor import BoundedEncoderDecoder, BoundedSegTTAModel  # noqa: E402

__all__ += ['BoundedEncoderDecoder', 'BoundedSegTTAModel']
from .text_cls_head import TextClsHead  # noqa: E402
from .text_encoder import CoOpTextEncoder  # noqa: E402
from .text_seg_head import TextSegHead  # noqa: E402

__all__ += ['CoOpTextEncoder', 'TextClsHead', 'TextSegHead']
from .stock import StockTimmViT  # noqa: E402

__all__ += ['StockTimmViT']
