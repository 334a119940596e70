"""``TextSegHead``: classify every pixel by CLIP's text embeddings of the class names.

The pixel path, as DenseCLIP and MaskCLIP take it: the image tower's patch tokens through
its final norm and CLIP's frozen visual projection (``PromptedTimmViT(project_out=True)``
gives them as the backbone's last map, ``(B, E, h, w)``), refined by a decoder of MMSeg's
bricks (SETR-PUP's up-sampling: ``num_convs`` x [``ConvModule``, x``up_scale``
bilinear], then a 1x1 convolution back to E), and classified by the scaled cosine:

    v     = up(x) + W_E(PUP(x))                               # (B, E, H, W), residual
    v^    = v / ||v||                                         # normalize_pixels
    logit = conv1x1(v^, class_embeddings())                   # (B, K, H, W)
          = exp(logit_scale) * cos(v, g(t_i))

``W_E`` starts at zero, so an untrained head is CLIP's dense zero-shot classifier on the
output tokens; with ``residual=False`` (auxiliary heads on intermediate layers, whose maps
are not in the joint space) ``v = W_E(PUP(x))``.

The class embeddings ``(K, E)`` come from, in this order of modes:

* ``text_encoder=dict(type='CoOpTextEncoder', ...)``: CoOp's learned context, or
  ``n_ctx=0`` with templates (the fixed-text baseline);
* ``text_encoder='shared'``: the decode head's text encoder (an auxiliary head;
  :class:`~vpt_seg.models.BoundedEncoderDecoder` links it), so one text pass per step
  serves every head (:meth:`~vpt_seg.models.text_classes.TextClassesMixin.text_step`);
* ``text_encoder=None`` with ``num_classes`` and ``embed_dims``: fixed class embeddings in
  ``conv_seg`` (a frozen, bias-free 1x1 convolution): a folded head, no text tower.
"""
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.utils import Upsample, resize
from mmseg.registry import MODELS
from torch import nn

from .text_classes import TextClassesMixin, normalize_embeddings

__all__ = ['TextSegHead']

SHARED = 'shared'


def _positive_int(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'TextSegHead: {key}={value!r}: expected a positive integer')
    return value


@MODELS.register_module()
class TextSegHead(TextClassesMixin, BaseDecodeHead):
    """Per-pixel CLIP embeddings, refined, classified by ``exp(logit_scale) * cos``
    against class-name text embeddings (see the module docstring).

    Args:
        in_channels: Width of the map read (``in_index``): E for the backbone's projected
            last map, the ViT's width for an intermediate layer.
        channels: Width of the decoder's convolutions.
        text_encoder: The text encoder's config (``CoOpTextEncoder``), ``'shared'`` (the
            decode head's; auxiliary heads) or None (fixed class embeddings in
            ``conv_seg``: give ``num_classes`` and ``embed_dims``).
        num_classes: K. With a text encoder it is the encoder's class count (a different
            value is refused); ``'shared'``: checked against the decode head's when linked.
        embed_dims: E, the width of CLIP's joint space. With a text encoder its
            ``output_dims``; ``'shared'``: the decode head's (the segmentor fills it in).
        num_convs: Convolution + up-sampling stages of the decoder (SETR-PUP's are 4, each
            x2); 0: only the 1x1 convolution to E.
        up_scale: Up-sampling factor of each stage.
        kernel_size: Of the decoder's convolutions (1 or 3).
        residual: ``v = up(x) + W_E(PUP(x))`` (``x`` must be E wide: the projected map);
            False: ``v = W_E(PUP(x))``.
        dropout_ratio: Dropout on the pixel embeddings before the cosine.
        class_names: Only without a text encoder: the names of the K fixed classes.
        **kwargs: ``BaseDecodeHead``'s (``in_index``, ``norm_cfg``, ``act_cfg``,
            ``align_corners``, ``loss_decode``, ``ignore_index``, ...).

    Shapes:
        ``inputs``: the backbone's maps; ``forward -> (B, K, h * up_scale**num_convs,
        w * up_scale**num_convs)`` logits.
    """

    def __init__(self,
                 in_channels: int,
                 channels: int,
                 text_encoder: Union[dict, str, None] = None,
                 num_classes: Optional[int] = None,
                 embed_dims: Optional[int] = None,
                 num_convs: int = 2,
                 up_scale: int = 2,
                 kernel_size: int = 3,
                 residual: bool = True,
                 dropout_ratio: float = 0.0,
                 class_names: Optional[Sequence[str]] = None,
                 init_cfg: Optional[dict] = None,
                 **kwargs):
        for key in ('out_channels', 'threshold'):
            if kwargs.get(key) is not None:
                raise ValueError(f'TextSegHead: {key} is not an option: the classes are the '
                                 'text encoder\'s, scored by softmax')
        encoder, num_classes, embed_dims = self._classes(text_encoder, num_classes,
                                                         embed_dims)
        if kernel_size not in (1, 3):
            raise ValueError(f'TextSegHead: kernel_size={kernel_size!r}: expected 1 or 3')
        if num_convs != 0:
            _positive_int(num_convs, 'num_convs')
        _positive_int(up_scale, 'up_scale')
        # BaseDecodeHead builds a conv_seg of num_classes; replaced below
        super().__init__(in_channels, channels, num_classes=num_classes or 2,
                         out_channels=num_classes or 2, dropout_ratio=dropout_ratio,
                         init_cfg=init_cfg, **kwargs)
        if not isinstance(self.in_channels, int):
            raise ValueError('TextSegHead reads one map (in_index an int, no input_transform)')
        if residual and embed_dims is not None and self.in_channels != embed_dims:
            raise ValueError(
                f'TextSegHead: residual=True adds the input map to the pixel embeddings, so '
                f'in_channels ({self.in_channels}) must be the joint space\'s width E '
                f'({embed_dims}): read the backbone\'s projected last map (project_out=True, '
                'in_index=-1), or set residual=False (an intermediate layer)')
        self.text_mode = SHARED if text_encoder == SHARED else \
            ('text' if encoder is not None else 'fixed')
        self.text_encoder = encoder
        self._owner = None  # the linked decode head ('shared'); not a submodule
        self._shared_num_classes = num_classes if self.text_mode == SHARED else None
        self.fixed_names = self._fixed_names(class_names, num_classes)
        self.residual = bool(residual)
        self.init_text_classes()
        del self.conv_seg
        if self.text_mode == 'fixed':
            self.conv_seg = nn.Conv2d(embed_dims, num_classes, kernel_size=1, bias=False)
            self.conv_seg.requires_grad_(False)
        self.decoder = self._decoder(num_convs, up_scale, kernel_size)
        width = channels if num_convs else self.in_channels
        self.to_embedding = nn.Conv2d(width, embed_dims, kernel_size=1)
        if self.residual:  # an untrained head is CLIP's own dense classifier
            nn.init.zeros_(self.to_embedding.weight)
            nn.init.zeros_(self.to_embedding.bias)
        self._built = True

    @staticmethod
    def _classes(text_encoder, num_classes, embed_dims):
        """``(encoder or None, K or None, E or None)`` from the three modes' options."""
        if text_encoder == SHARED:
            if embed_dims is None:
                raise ValueError("TextSegHead(text_encoder='shared') takes the decode head's "
                                 'class embeddings; build it as an auxiliary head of '
                                 'BoundedEncoderDecoder (which gives it embed_dims) or set '
                                 'embed_dims')
            return None, num_classes, _positive_int(embed_dims, 'embed_dims')
        if text_encoder is None:
            if num_classes is None or embed_dims is None:
                raise ValueError(
                    'TextSegHead needs text_encoder=dict(type=\'CoOpTextEncoder\', ...) '
                    "(or 'shared': the decode head's), or, without one, num_classes and "
                    'embed_dims for fixed class embeddings (a folded head)')
            return None, _positive_int(num_classes, 'num_classes'), \
                _positive_int(embed_dims, 'embed_dims')
        if not isinstance(text_encoder, dict) or 'type' not in text_encoder:
            raise ValueError("TextSegHead: text_encoder must be dict(type='CoOpTextEncoder', "
                             f"...), 'shared' or None; got {text_encoder!r:.200}")
        encoder = MODELS.build(text_encoder)
        # where a segmentation config names its CLIP file (messages of file checks)
        encoder.pretrained_option = 'model.decode_head.text_encoder.checkpoint'
        for key, given, theirs in (('num_classes', num_classes, encoder.num_classes),
                                   ('embed_dims', embed_dims, int(encoder.output_dims))):
            if given is not None and given != theirs:
                raise ValueError(f'TextSegHead: {key}={given}, but the text encoder gives '
                                 f'{theirs}; leave {key} out (the text encoder decides)')
        return encoder, encoder.num_classes, int(encoder.output_dims)

    def _fixed_names(self, names, num_classes) -> Optional[tuple]:
        if names is None:
            return None
        if self.text_mode != 'fixed':
            raise ValueError('TextSegHead: class_names is for fixed class embeddings (no text '
                             'encoder); the text encoder names its classes (vocabulary)')
        names = tuple(str(n) for n in names)
        if len(names) != num_classes:
            raise ValueError(f'TextSegHead: {len(names)} class_names for num_classes='
                             f'{num_classes}')
        return names

    def _decoder(self, num_convs: int, up_scale: int, kernel_size: int) -> nn.Sequential:
        """SETR-PUP's up-sampling path: [ConvModule, bilinear x up_scale] x num_convs."""
        stages = []
        for i in range(num_convs):
            stages += [ConvModule(self.in_channels if i == 0 else self.channels,
                                  self.channels, kernel_size, padding=kernel_size // 2,
                                  norm_cfg=self.norm_cfg, act_cfg=self.act_cfg),
                       Upsample(scale_factor=up_scale, mode='bilinear',
                                align_corners=self.align_corners)]
        return nn.Sequential(*stages)

    # ----------------------------------------------------------- the classes
    @property
    def num_classes(self) -> int:
        """K, the class list's length (the text encoder's, or ``conv_seg``'s)."""
        if not getattr(self, '_built', False):  # inside BaseDecodeHead.__init__
            return self.__dict__.get('_init_classes', 2)
        if self.text_mode == 'fixed':
            return self.conv_seg.out_channels
        if self.text_mode == SHARED and self._owner is None:
            return self._shared_num_classes or 0
        return self._num_classes()

    @num_classes.setter
    def num_classes(self, value):
        # BaseDecodeHead.__init__ assigns it; afterwards the class list decides
        if getattr(self, '_built', False):
            raise AttributeError('TextSegHead.num_classes is the class list\'s length: call '
                                 'set_classes(names)')
        self.__dict__['_init_classes'] = value

    @property
    def out_channels(self) -> int:
        return self.num_classes

    @out_channels.setter
    def out_channels(self, value):
        if getattr(self, '_built', False):
            raise AttributeError('TextSegHead.out_channels is the class list\'s length')

    @property
    def embed_dims(self) -> int:
        """E: the pixel embeddings' and class embeddings' width."""
        return self.to_embedding.out_channels

    @property
    def class_names(self) -> List[str]:
        if self.text_mode == 'fixed':
            return list(self.fixed_names or ())
        return super().class_names

    def set_classes(self, names: Sequence[str]):
        if self.text_mode == 'fixed':
            raise ValueError('TextSegHead: this head holds fixed class embeddings (a folded '
                             'head, no text encoder): its classes cannot change; fold the '
                             'task again with the new class list')
        super().set_classes(names)

    def text_owner(self) -> 'TextSegHead':
        if self.text_mode != SHARED:
            return self
        if self._owner is None:
            raise ValueError("TextSegHead(text_encoder='shared') uses the decode head's text "
                             'encoder, and is linked to it by BoundedEncoderDecoder: build it '
                             'as an auxiliary head of that segmentor')
        return self._owner

    def link_text(self, owner: 'TextSegHead') -> None:
        """Use ``owner``'s class embeddings (``text_encoder='shared'``; the segmentor calls
        this for its auxiliary heads).

        Raises:
            ValueError: ``owner`` has no text classifier, or another width E or class
                count than this head was built for.
        """
        if self.text_mode != SHARED:
            raise ValueError(f"link_text: this head's text_encoder is {self.text_mode!r}, "
                             "not 'shared'")
        if not isinstance(owner, TextSegHead) or owner.text_mode == SHARED:
            raise ValueError("an auxiliary TextSegHead(text_encoder='shared') uses the decode "
                             "head's text encoder, and the decode head "
                             f'({type(owner).__name__}) has none: make the decode head a '
                             'TextSegHead with a text encoder')
        if owner.embed_dims != self.embed_dims:
            raise ValueError(f"TextSegHead(text_encoder='shared'): embed_dims="
                             f'{self.embed_dims}, the decode head embeds into '
                             f'{owner.embed_dims}; leave embed_dims out')
        if self._shared_num_classes not in (None, owner.num_classes):
            raise ValueError(f"TextSegHead(text_encoder='shared'): num_classes="
                             f'{self._shared_num_classes}, the decode head classifies '
                             f'{owner.num_classes}; leave num_classes out')
        object.__setattr__(self, '_owner', owner)  # a reference, not a submodule

    def fixed_class_embeddings(self) -> Optional[torch.Tensor]:
        return self.conv_seg.weight[:, :, 0, 0] if self.text_mode == 'fixed' else None

    @torch.no_grad()
    def fold_text(self) -> dict:
        """Become a folded head in place: the class embeddings computed once into
        ``conv_seg`` (a frozen, bias-free 1x1 convolution, ``(K, E, 1, 1)``), the text
        encoder dropped (``tools/export_task.py --fold``). Returns what changes in the
        head's config. Auxiliary heads with ``text_encoder='shared'`` then use these
        fixed embeddings and stay as they are.

        Raises:
            ValueError: a head without its own text encoder (fixed, or ``'shared'``).
        """
        if self.text_mode != 'text':
            raise ValueError(f'TextSegHead: only a head with its own text encoder folds; this '
                             f'one\'s is {self.text_mode!r}')
        weight = self.class_embeddings().detach().clone()                # (K, E)
        names = self.class_names
        del self.text_encoder
        self.text_encoder = None
        self.text_mode = 'fixed'
        self.fixed_names = tuple(names)
        self.conv_seg = nn.Conv2d(weight.shape[1], weight.shape[0], kernel_size=1,
                                  bias=False).to(weight.device)
        self.conv_seg.weight.copy_(weight[:, :, None, None])
        self.conv_seg.requires_grad_(False)
        return dict(text_encoder=None, num_classes=int(weight.shape[0]),
                    embed_dims=int(weight.shape[1]), class_names=list(names))

    # -------------------------------------------------------------- forward
    def pixel_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, h, w) -> (B, E, H, W)``: the decoder's refinement (plus the
        input, up-sampled, with ``residual``), not normalised."""
        out = self.to_embedding(self.decoder(x))
        if self.residual:
            out = out + resize(x, size=out.shape[2:], mode='bilinear',
                               align_corners=self.align_corners)
        return out

    @staticmethod
    def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
        """The cosine's per-pixel normalisation, ``(B, E, H, W)`` to unit length along E."""
        return normalize_embeddings(pixels, dim=1)

    def classify_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, E, H, W)`` unit pixel embeddings -> ``(B, K, H, W)`` logits: a 1x1
        convolution whose K filters are the class embeddings (``conv_seg``'s weight when
        they are fixed)."""
        weight = self.class_embeddings()                                 # (K, E)
        return F.conv2d(pixels, weight.to(pixels.dtype)[:, :, None, None])

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        """Pixel embeddings ``(B, E, H, W)`` -> logits ``exp(logit_scale) * cos``."""
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.classify_pixels(self.normalize_pixels(feat))

    def forward(self, inputs) -> torch.Tensor:
        x = self._transform_inputs(inputs)                               # (B, C, h, w)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f'TextSegHead (in_index={self.in_index}) reads a map of {self.in_channels} '
                f'channels and got {tuple(x.shape)}: a text decode head reads the backbone\'s '
                'last map in CLIP\'s joint space (PromptedTimmViT with keep_projection, '
                'final_norm and project_out; BoundedEncoderDecoder sets them for it)')
        return self.cls_seg(self.pixel_embeddings(x))                    # (B, K, H, W)
