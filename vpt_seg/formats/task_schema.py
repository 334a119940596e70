"""The task-file header as a schema: the architecture as typed data vpt-seg defines.

A task file's header stores the config a task was trained with (``config_json``). It
is never built as it is: :func:`read_header_config` reads it into this schema and
returns only what the schema types, and only that is ever built. The schema is a table
(:data:`TABLE`): for each *kind* of module a header may name (``model``, ``backbone``,
``decode_head``, ``neck``, ``cls_head``, ``loss``, ``data_preprocessor``,
``transform``), the module types allowed and, for each, every argument with its type and
range (:class:`Int`, :class:`Float`, :class:`Bool`, :class:`Choice`, :class:`Name`,
:class:`Seq`, :class:`Struct`, :class:`Module`, :class:`PretrainedFile`, ...).

What is read, and how:

* ``model``: every key is typed; an unknown key, another type or a value out of range is
  refused naming the header key (``model.decode_head.loss_decode.class_weight: ...``).
  Strings are accepted only where the schema says they are names (a timm model name, a
  choice among fixed words, class names) or the backbone's pretrained file
  (:class:`PretrainedFile`: a local path, looked for as :mod:`.task_file` says; a URL
  is dropped with a note, never fetched).
* ``test_dataloader.dataset.pipeline``: the test transforms (typed the same way), and
  ``visualizer`` (no paths), for MMSeg's ``MMSegInferencer``; ``default_scope``
  (``'mmseg'``).
* Everything else (training settings, datasets, hooks, paths) is dropped unread.
* Keys are identifiers at any depth of what is read (and dotted names, such as an
  optimizer's ``custom_keys``, in what is dropped): nothing else is accepted.

:func:`check_header_shapes` then compares the sizes the header declares (the backbone's
signature fields, ``num_prompts``, LoRA ``rank``, adapter ``width``, class counts) with
the file's tensor shapes and ``signature``, read from the safetensors header without
loading a tensor, before any module is allocated.

Adding a module type is one entry (see :func:`register`)::

    register('cls_head', 'TextClsHead', dict(
        in_channels=Int(1, 16384), vocabulary=Seq(Name(), 1, 100000),
        n_ctx=Int(0, 512), csc=Bool(), class_position=Choice('end', 'middle', 'front'),
        text_encoder=Module('text_encoder')))
    register('text_encoder', 'CoOpTextEncoder', dict(
        embed_dims=Int(1, 8192), checkpoint=PretrainedFile()), required=('embed_dims', ))

A new kind (``'text_encoder'`` above) is created by its first entry. An entry may also
check the sizes it declares against the file's tensors (``shapes=``, see :class:`Entry`).
"""
import json
import math
import re
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from .pretrained_key import FLAG_NAMES

__all__ = ['HeaderSchemaError', 'Field', 'Int', 'Float', 'Bool', 'Choice', 'Name', 'Opt',
           'Seq', 'OneOf', 'Struct', 'Module', 'PretrainedFile', 'Entry', 'TABLE', 'register',
           'read_header_config', 'parse_header_json', 'check_header_shapes', 'tensor_shapes',
           'MAX_DEPTH']

#: How deep a header's JSON may nest (today's configs nest about 6 deep).
MAX_DEPTH = 32
#: The most parameters a header may declare for its backbone before anything is built.
MAX_BACKBONE_PARAMS = 2_000_000_000
_TUPLE = '__tuple__'
_DOTTED = re.compile(r'[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*')


class HeaderSchemaError(ValueError):
    """A header value the schema does not admit; ``key`` is its path (``model.x.y``)."""

    def __init__(self, key: str, what: str):
        self.key = key
        super().__init__(f'{key}: {what}')


class _Context:
    """What a check reports besides its value: notes (a URL dropped)."""

    def __init__(self):
        self.notes: List[str] = []


# ------------------------------------------------------------------ field types
class Field:
    """A typed header value: :meth:`check` returns the value to build with, or raises
    :class:`HeaderSchemaError` naming ``key``."""

    def check(self, value: Any, key: str, ctx: _Context) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Int(Field):
    """An integer in ``[lo, hi]``."""

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi

    def check(self, value, key, ctx):
        if not isinstance(value, int) or isinstance(value, bool):
            raise HeaderSchemaError(key, f'{value!r:.60} is not {self.describe()}')
        if not self.lo <= value <= self.hi:
            raise HeaderSchemaError(key, f'{value} is out of range ({self.describe()})')
        return value

    def describe(self):
        return f'an integer in [{self.lo}, {self.hi}]'


class Float(Field):
    """A finite number in ``[lo, hi]`` (an integer is taken as it is)."""

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi = lo, hi

    def check(self, value, key, ctx):
        if not _number(value) or not math.isfinite(value):
            raise HeaderSchemaError(key, f'{value!r:.60} is not {self.describe()}')
        if not self.lo <= value <= self.hi:
            raise HeaderSchemaError(key, f'{value} is out of range ({self.describe()})')
        return value

    def describe(self):
        return f'a number in [{self.lo:g}, {self.hi:g}]'


class Bool(Field):
    """``true`` or ``false``."""

    def check(self, value, key, ctx):
        if not isinstance(value, bool):
            raise HeaderSchemaError(key, f'{value!r:.60} is not {self.describe()}')
        return value

    def describe(self):
        return 'true or false'


class Choice(Field):
    """One of fixed values (words, numbers or None)."""

    def __init__(self, *values):
        self.values = values

    def check(self, value, key, ctx):
        ok = any(value == v and type(value) is type(v) for v in self.values)
        if not ok:
            raise HeaderSchemaError(key, f'{value!r:.60} is not {self.describe()}')
        return value

    def describe(self):
        return 'one of ' + ', '.join(map(repr, self.values))


class Name(Field):
    """A name (a class name, a timm model name): a string of at most ``max_len``
    characters with no path separator, no ``://``, no control character, no ``{{``."""

    def __init__(self, pattern: Optional[str] = None, max_len: int = 200):
        self.pattern = re.compile(pattern) if pattern else None
        self.max_len = max_len

    def check(self, value, key, ctx):
        if not isinstance(value, str):
            raise HeaderSchemaError(key, f'{value!r:.60} is not {self.describe()}')
        bad = (len(value) > self.max_len or '/' in value or '\\' in value or '://' in value
               or '{{' in value or any(ord(c) < 32 for c in value)
               or (self.pattern is not None and not self.pattern.fullmatch(value)))
        if bad:
            raise HeaderSchemaError(key, f'{value!r:.80} is not {self.describe()}')
        return value

    def describe(self):
        return 'a name' + (f' matching {self.pattern.pattern}' if self.pattern else
                           f' (at most {self.max_len} characters, no path, no URL)')


class PretrainedFile(Field):
    """The frozen weights' file as the config named it (a local path; :mod:`.task_file`
    looks for its file name next to the task file first). A URL is dropped with a note,
    never fetched: the value becomes None."""

    def check(self, value, key, ctx):
        if value is None:
            return None
        if not isinstance(value, str) or not value or len(value) > 4096 or '\0' in value \
                or '{{' in value:
            raise HeaderSchemaError(key, f'{value!r:.60} is not {self.describe()}')
        if '://' in value:
            ctx.notes.append(f'{key} {value!r} is a URL, which is never fetched: dropped')
            return None
        return value

    def describe(self):
        return 'a local file path or null (never a URL)'


class Opt(Field):
    """None, or what ``field`` admits."""

    def __init__(self, field: Field):
        self.field = field

    def check(self, value, key, ctx):
        return None if value is None else self.field.check(value, key, ctx)

    def describe(self):
        return f'null or {self.field.describe()}'


class Seq(Field):
    """A list (or tuple: kept a tuple) of ``lo`` to ``hi`` items of ``field``."""

    def __init__(self, field: Field, lo: int = 0, hi: int = 1024):
        self.field, self.lo, self.hi = field, lo, hi

    def check(self, value, key, ctx):
        if not isinstance(value, (list, tuple)):
            raise HeaderSchemaError(key, f'{value!r:.60} is not {self.describe()}')
        if not self.lo <= len(value) <= self.hi:
            raise HeaderSchemaError(key, f'{len(value)} items; expected {self.describe()}')
        out = [self.field.check(v, f'{key}[{i}]', ctx) for i, v in enumerate(value)]
        return tuple(out) if isinstance(value, tuple) else out

    def describe(self):
        return f'a list of {self.lo} to {self.hi} items, each {self.field.describe()}'


class OneOf(Field):
    """What the first of ``fields`` that admits the value makes of it."""

    def __init__(self, *fields: Field):
        self.fields = fields

    def check(self, value, key, ctx):
        errors = []
        for field in self.fields:
            try:
                return field.check(value, key, ctx)
            except HeaderSchemaError as err:
                errors.append(err)
        deeper = [e for e in errors if e.key != key]  # a branch that took the value's form
        if deeper:
            raise max(deeper, key=lambda e: len(e.key))
        raise HeaderSchemaError(key, f'{value!r:.60} is not {self.describe()}')

    def describe(self):
        return ' or '.join(f.describe() for f in self.fields)


class Struct(Field):
    """A mapping with fixed keys, each typed; unknown keys refused (``drop_unknown``:
    dropped unread, for the config's sections the schema does not read)."""

    def __init__(self, fields: Mapping[str, Field], required: Sequence[str] = (),
                 drop_unknown: bool = False):
        self.fields, self.required, self.drop_unknown = dict(fields), tuple(required), \
            drop_unknown

    def check(self, value, key, ctx):
        if not isinstance(value, dict):
            raise HeaderSchemaError(key, f'{value!r:.60} is not a mapping')
        out = {}
        for name, item in value.items():
            where = f'{key}.{name}' if key else name
            field = self.fields.get(name)
            if field is None:
                if self.drop_unknown:
                    continue
                raise HeaderSchemaError(where, 'not a field this schema has (it takes '
                                        f'{", ".join(self.fields) or "no fields"})')
            out[name] = field.check(item, where, ctx)
        for name in self.required:
            if name not in value:
                raise HeaderSchemaError(f'{key}.{name}' if key else name, 'missing')
        return out

    def describe(self):
        return 'a mapping of ' + ', '.join(self.fields)


class Entry:
    """One module type a header may name: its typed arguments, which are required, and
    optionally ``shapes(cfg, key, tensors)``: checks of the sizes ``cfg`` declares
    against the file's tensor shapes under the module (``tensors``: key relative to the
    module -> shape), raising :class:`HeaderSchemaError` naming ``key.<field>``; run by
    :func:`check_header_shapes` before anything is built."""

    def __init__(self, fields: Mapping[str, Field], required: Sequence[str] = (),
                 shapes: Optional[Callable[[dict, str, Mapping[str, tuple]], None]] = None):
        self.fields = dict(fields)
        self.required = tuple(required)
        self.shapes = shapes


#: kind -> module type -> :class:`Entry`. Filled below; :func:`register` adds to it.
TABLE: Dict[str, Dict[str, Entry]] = {}


def register(kind: str, type_name: str, fields: Mapping[str, Field],
             required: Sequence[str] = (), shapes=None) -> Entry:
    """Admit ``type_name`` where the schema takes a module of ``kind`` (a
    :class:`Module` field), with these typed arguments (and ``shapes``, see
    :class:`Entry`). The type must be a registered module of that name; nothing else
    about it is trusted."""
    entry = Entry(fields, required, shapes)
    TABLE.setdefault(kind, {})[type_name] = entry
    return entry


class Module(Field):
    """A ``dict(type=..., ...)`` of a module of ``kind``: the type one of
    :data:`TABLE` ``[kind]``, its arguments that entry's fields."""

    def __init__(self, kind: str):
        self.kind = kind

    def check(self, value, key, ctx):
        types = TABLE.get(self.kind, {})
        if not isinstance(value, dict):
            raise HeaderSchemaError(key, f'{value!r:.60} is not a mapping with a type')
        kind = value.get('type')
        if not isinstance(kind, str) or kind not in types:
            raise HeaderSchemaError(f'{key}.type', f'{kind!r:.60} is not a {self.kind} '
                                    f'kind a task file may name ({", ".join(types)})')
        entry = types[kind]
        fields = dict(entry.fields, type=Choice(kind), _scope_=Choice('mmseg'))
        return Struct(fields, entry.required).check(value, key, ctx)

    def describe(self):
        return f'a {self.kind} ({", ".join(TABLE.get(self.kind, {}))})'


# ------------------------------------------------------------------ the table
_SIZE = Int(1, 16384)
_PAIR = Seq(Int(1, 16384), 2, 2)
_SIZE_OR_PAIR = OneOf(Int(1, 16384), _PAIR)
#: A backbone's input size (its position embedding is allocated for it).
_IMG_SIZE = OneOf(Int(1, 4096), Seq(Int(1, 4096), 2, 2))
_INDEX = Int(-128, 127)
_INDICES = OneOf(_INDEX, Seq(_INDEX, 1, 128))
_RATE = Float(0.0, 1.0)
_CLASSES = Int(1, 65535)
_NORM = Struct(dict(type=Choice('BN', 'SyncBN', 'LN', 'GN', 'BN2d'), requires_grad=Bool(),
                    eps=Float(0.0, 1.0), momentum=Opt(_RATE), num_groups=Int(1, 4096)),
               required=('type', ))
_ACT = Struct(dict(type=Choice('ReLU', 'GELU'), inplace=Bool()), required=('type', ))
_INIT_PRETRAINED = Struct(dict(type=Choice('Pretrained'), checkpoint=PretrainedFile(),
                               prefix=Opt(Name(r'[A-Za-z_][\w.]*'))), required=('type', ))
_NONE = Choice(None)
_LORA = Struct(dict(rank=Int(1, 4096), alpha=Float(1e-6, 1e6),
                    targets=OneOf(Choice('q', 'k', 'v', 'proj', 'fc1', 'fc2'),
                                  Seq(Choice('q', 'k', 'v', 'proj', 'fc1', 'fc2'), 1, 6)),
                    dropout=Float(0.0, 0.999)))
_ADAPTER = Struct(dict(width=Int(1, 16384), scale=Float(-1e6, 1e6), dropout=Float(0.0, 0.999)))
_MEANS = Seq(Float(-1e6, 1e6), 1, 64)
_STDS = Seq(Float(1e-12, 1e6), 1, 64)

#: What vpt-seg's backbones add to the ViT they wrap (models/options.py), typed; the
#: user-only ``prefer_configured`` (and its earlier names, ``FLAG_NAMES``) is never the
#: file's word and is dropped before the schema reads the backbone.
PROMPTED_FIELDS = dict(
    num_prompts=Int(0, 4096), deep=Bool(), prompt_layers=Opt(Seq(Int(0, 127), 0, 128)),
    prompt_dropout=Float(0.0, 0.999), prompt_init=Choice('xavier_uniform', 'normal', 'zeros'),
    freeze=Bool(), tune_bias=Bool(), lora=Opt(_LORA), adapter=Opt(_ADAPTER),
    save_frozen=Bool(), fast_path=Opt(Bool()))

register('backbone', 'PromptedVisionTransformer', dict(
    PROMPTED_FIELDS,
    img_size=_IMG_SIZE, patch_size=Int(1, 1024), patch_pad=Choice('corner', 'same'),
    in_channels=Int(1, 64), embed_dims=Int(1, 8192), num_layers=Int(1, 128),
    num_heads=Int(1, 256), mlp_ratio=Float(0.01, 64.0), out_origin=Bool(),
    out_indices=_INDICES, qkv_bias=Bool(), drop_rate=_RATE, attn_drop_rate=_RATE,
    drop_path_rate=_RATE, with_cls_token=Bool(), output_cls_token=Bool(), norm_cfg=_NORM,
    act_cfg=_ACT, patch_norm=Bool(), patch_bias=Bool(), pre_norm=Bool(), final_norm=Bool(),
    interpolate_mode=Choice('bicubic', 'bilinear', 'nearest'), num_fcs=Int(1, 8),
    norm_eval=Bool(), with_cp=Bool(), frozen_exclude=Seq(Name(r'[\w.]+'), 0, 64),
    pretrained=_NONE, init_cfg=Opt(_INIT_PRETRAINED)))

#: timm ``model_kwargs`` a header may set (sizes of the timm architecture).
TIMM_KWARGS = dict(
    embed_dim=Int(1, 8192), depth=Int(1, 128), num_heads=Int(1, 256),
    mlp_ratio=Float(0.01, 64.0), reg_tokens=Int(0, 64), class_token=Bool(),
    no_embed_class=Bool(), init_values=Opt(Float(0.0, 1e6)), qkv_bias=Bool(),
    in_chans=Int(1, 64), drop_rate=_RATE, attn_drop_rate=_RATE, drop_path_rate=_RATE,
    pos_drop_rate=_RATE, proj_drop_rate=_RATE,
    num_classes=Int(0, 8192))  # CLIP's projection width (with keep_projection)
register('backbone', 'PromptedTimmViT', dict(
    PROMPTED_FIELDS,
    model_name=Name(r'[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}'), checkpoint=PretrainedFile(),
    model_kwargs=Opt(Struct(TIMM_KWARGS)), img_size=Opt(_IMG_SIZE),
    patch_size=Opt(Int(1, 1024)), dynamic_img_size=Bool(), out_indices=_INDICES,
    final_norm=Bool(), with_cp=Bool(), output_cls_token=Bool(), keep_projection=Bool(),
    project_out=Bool(), init_cfg=_NONE),
    required=('model_name', ))

register('loss', 'CrossEntropyLoss', dict(
    use_sigmoid=Bool(), use_mask=Bool(), reduction=Choice('none', 'mean', 'sum'),
    class_weight=Opt(Seq(Float(0.0, 1e6), 1, 65535)), loss_weight=Float(0.0, 1e6),
    loss_name=Name(r'loss_\w{1,60}'), avg_non_ignore=Bool()))

#: MMSeg's ``BaseDecodeHead`` arguments: the loss by kind and weight, never a path.
DECODE_HEAD_FIELDS = dict(
    in_channels=OneOf(_SIZE, Seq(_SIZE, 1, 64)), channels=_SIZE, num_classes=_CLASSES,
    out_channels=Opt(_CLASSES), threshold=Opt(_RATE), dropout_ratio=_RATE,
    conv_cfg=_NONE, norm_cfg=Opt(_NORM), act_cfg=Opt(_ACT), in_index=_INDICES,
    input_transform=Opt(Choice('resize_concat', 'multiple_select')),
    loss_decode=OneOf(Module('loss'), Seq(Module('loss'), 1, 8)),
    ignore_index=Int(0, 65535), sampler=_NONE, align_corners=Bool(), init_cfg=_NONE)
_REQUIRED_HEAD = ('in_channels', 'channels', 'num_classes')
_UP = dict(norm_layer=_NORM, num_convs=Int(0, 16), up_scale=Int(1, 16),
           kernel_size=Choice(1, 3, 5, 7))
register('decode_head', 'LeanSETRUPHead', dict(DECODE_HEAD_FIELDS, **_UP), _REQUIRED_HEAD)
register('decode_head', 'SETRUPHead', dict(DECODE_HEAD_FIELDS, **_UP), _REQUIRED_HEAD)
register('decode_head', 'SETRMLAHead', dict(DECODE_HEAD_FIELDS, mla_channels=_SIZE,
                                            up_scale=Int(1, 16)), _REQUIRED_HEAD)
register('decode_head', 'FCNHead', dict(DECODE_HEAD_FIELDS, num_convs=Int(0, 16),
                                        kernel_size=Choice(1, 3, 5, 7), concat_input=Bool(),
                                        dilation=Int(1, 16)), _REQUIRED_HEAD)

register('neck', 'MLANeck', dict(in_channels=Seq(_SIZE, 1, 64), out_channels=_SIZE,
                                 norm_layer=_NORM, norm_cfg=Opt(_NORM), act_cfg=Opt(_ACT)),
         ('in_channels', 'out_channels'))

_CLS_HEAD = dict(in_channels=_SIZE, num_classes=_CLASSES, loss_weight=Float(0.0, 1e6),
                 label_smoothing=Float(0.0, 0.999), multi_label=Bool(), dropout=_RATE)
register('cls_head', 'LinearClsHead', _CLS_HEAD, ('in_channels', 'num_classes'))
register('cls_head', 'MLPClsHead', dict(
    _CLS_HEAD, hidden_channels=Opt(OneOf(_SIZE, Seq(_SIZE, 1, 16))),
    norm=Choice('BN', 'LN', None)), ('in_channels', 'num_classes'))



def _text_encoder_shapes(cfg: dict, key: str, tensors: Mapping[str, tuple]):
    """A CoOp task's context ``prompt.ctx`` is ``(n_ctx, embed_dims)`` (``(K, n_ctx,
    embed_dims)`` with ``csc``), and the frozen text tower it implies is bounded, before
    anything is built (the tower is allocated before its CLIP file is read)."""
    dims = cfg.get('embed_dims', 512)
    tower = (cfg.get('num_layers', 12) * 12 * dims * dims
             + (cfg.get('total_vocab_size', 49408) + cfg.get('context_length', 77)) * dims)
    if tower > MAX_BACKBONE_PARAMS:
        raise HeaderSchemaError(f'{key}.embed_dims', f'a text tower of about {tower:.3g} '
                                f'parameters is declared; at most {MAX_BACKBONE_PARAMS:.3g}')
    ctx = tensors.get('prompt.ctx')
    n_ctx = cfg.get('n_ctx', 16)
    if ctx is None:
        if n_ctx and not cfg.get('ctx_init'):
            raise HeaderSchemaError(f'{key}.n_ctx', f'n_ctx={n_ctx} declares a learned context '
                                    'but the file holds no prompt.ctx tensor')
        return
    _fits(f'{key}.embed_dims', dims, ctx[-1], f'prompt.ctx shape {ctx}')
    if not cfg.get('ctx_init'):  # with ctx_init, n_ctx is the words' token count
        _fits(f'{key}.n_ctx', n_ctx, ctx[-2], f'prompt.ctx shape {ctx}')
    _fits(f'{key}.csc', bool(cfg.get('csc', False)), len(ctx) == 3, f'prompt.ctx shape {ctx}')


#: CoOp (models/text_encoder.py, models/text_cls_head.py): class names and words are
#: names, templates are names with one ``{}``, the CLIP file is a pretrained file.
_TEMPLATE = Name(r'[^{}]*\{\}[^{}]*', max_len=300)
register('text_encoder', 'CoOpTextEncoder', dict(
    dataset_name=Opt(Name(r'\w{1,60}')), vocabulary=Opt(Seq(Name(), 1, 100_000)),
    templates=Opt(OneOf(Choice('vild', 'imagenet'), _TEMPLATE, Seq(_TEMPLATE, 1, 1000))),
    total_vocab_size=Int(1, 1_000_000), context_length=Int(3, 1024), embed_dims=Int(1, 8192),
    num_layers=Int(1, 128), num_heads=Int(1, 256), mlp_ratio=Float(0.01, 64.0),
    output_dims=Int(1, 8192), checkpoint=PretrainedFile(), n_ctx=Int(0, 1021),
    ctx_init=Opt(Name(max_len=1000)), csc=Bool(), class_position=Choice('end', 'middle', 'front'),
    quick_gelu=Bool(), with_cp=Bool(), init_cfg=_NONE), shapes=_text_encoder_shapes)
register('cls_head', 'TextClsHead', dict(
    text_encoder=Module('text_encoder'), loss_weight=Float(0.0, 1e6),
    label_smoothing=Float(0.0, 0.999), init_cfg=_NONE), ('text_encoder', ))
register('decode_head', 'TextSegHead', dict(
    DECODE_HEAD_FIELDS, num_classes=Opt(_CLASSES), embed_dims=Opt(Int(1, 8192)),
    text_encoder=OneOf(Module('text_encoder'), Choice('shared', None)),
    num_convs=Int(0, 16), up_scale=Int(1, 16), kernel_size=Choice(1, 3), residual=Bool(),
    class_names=Opt(Seq(Name(), 1, 100_000))), ('in_channels', 'channels'))

_SEG_PRE_TEST = Struct(dict(size=Opt(_PAIR), size_divisor=Opt(_SIZE)))
register('data_preprocessor', 'SegDataPreProcessor', dict(
    mean=Opt(_MEANS), std=Opt(_STDS), size=Opt(_PAIR), size_divisor=Opt(_SIZE),
    pad_val=Float(-1e6, 1e6), seg_pad_val=Int(0, 65535), bgr_to_rgb=Bool(),
    rgb_to_bgr=Bool(), batch_augments=_NONE, test_cfg=Opt(_SEG_PRE_TEST)))
register('data_preprocessor', 'ImgDataPreprocessor', dict(
    mean=Opt(_MEANS), std=Opt(_STDS), pad_size_divisor=_SIZE, pad_value=Float(-1e6, 1e6),
    bgr_to_rgb=Bool(), rgb_to_bgr=Bool(), non_blocking=Bool()))

#: ``model.test_cfg`` of a segmentor.
TEST_CFG = Struct(dict(mode=Choice('whole', 'slide'), crop_size=Opt(_PAIR), stride=Opt(_PAIR)))
_SEGMENTOR = dict(
    backbone=Module('backbone'), decode_head=Module('decode_head'), neck=Opt(Module('neck')),
    auxiliary_head=Opt(OneOf(Module('decode_head'), Seq(Module('decode_head'), 1, 8))),
    train_cfg=Opt(Struct({})), test_cfg=Opt(TEST_CFG),
    data_preprocessor=Opt(Module('data_preprocessor')), pretrained=_NONE, init_cfg=_NONE)
register('model', 'BoundedEncoderDecoder', dict(_SEGMENTOR, logits_budget=Int(1, 2 ** 40)),
         ('backbone', 'decode_head'))
register('model', 'EncoderDecoder', _SEGMENTOR, ('backbone', 'decode_head'))
register('model', 'VPTClassifier', dict(
    backbone=Module('backbone'), head=Module('cls_head'),
    data_preprocessor=Opt(Module('data_preprocessor')), init_cfg=_NONE), ('backbone', 'head'))

_LOAD_IMAGE = dict(to_float32=Bool(), color_type=Choice('color', 'grayscale', 'unchanged'),
                   imdecode_backend=Choice('cv2', 'pillow'), ignore_empty=Bool())
_LOAD_ANN = dict(reduce_zero_label=Opt(Bool()), imdecode_backend=Choice('cv2', 'pillow'))
_META_KEYS = Seq(Name(r'\w{1,60}'), 0, 64)
#: A header may lower the pixel limit of the checked loaders, never raise it above
#: ``datasets.checks.DEFAULT_MAX_PIXELS`` (a task file must not open the door to a bomb).
HEADER_MAX_PIXELS = 2 ** 27
_CHECKED = dict(max_pixels=Opt(Int(1, HEADER_MAX_PIXELS)))
register('transform', 'LoadImageFromFile', _LOAD_IMAGE)
register('transform', 'CheckedLoadImageFromFile', dict(_LOAD_IMAGE, check_orientation=Bool(),
                                                        **_CHECKED))
register('transform', 'LoadAnnotations', _LOAD_ANN)
register('transform', 'CheckedLoadAnnotations', dict(_LOAD_ANN, num_classes=Opt(_CLASSES),
                                                     ignore_index=Int(0, 65535), **_CHECKED))
register('transform', 'Resize', dict(
    scale=Opt(_SIZE_OR_PAIR), scale_factor=Opt(OneOf(Float(1e-3, 1e3),
                                                     Seq(Float(1e-3, 1e3), 2, 2))),
    keep_ratio=Bool(), clip_object_border=Bool(),
    interpolation=Choice('nearest', 'bilinear', 'bicubic', 'area', 'lanczos')))
register('transform', 'CenterCrop', dict(crop_size=_SIZE_OR_PAIR), ('crop_size', ))
register('transform', 'PackSegInputs', dict(meta_keys=_META_KEYS))
register('transform', 'PackClsInputs', dict(meta_keys=_META_KEYS))

# MMSeg's MMSegInferencer needs a visualizer; a backend's save_dir (a path) is not
# admitted (without it, MMEngine builds no backend: nothing is written).
register('vis_backend', 'LocalVisBackend', {})
register('visualizer', 'SegLocalVisualizer', dict(
    name=Name(r'\w{1,60}'), vis_backends=Opt(Seq(Module('vis_backend'), 0, 4)),
    alpha=Float(0.0, 1.0)))

#: The config sections a header is read for; the rest is dropped unread.
HEADER = Struct(dict(
    model=Module('model'), default_scope=Choice('mmseg'), visualizer=Module('visualizer'),
    test_dataloader=Struct(dict(dataset=Struct(dict(
        pipeline=Seq(Module('transform'), 1, 32)), drop_unknown=True)), drop_unknown=True)),
    required=('model', ), drop_unknown=True)


# ------------------------------------------------------------------ reading
def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f'{text} is not a finite number')
    return value


def _refuse_constant(name: str):
    raise ValueError(f'{name} is not a finite number')


def _decode(obj: Any, key: str, depth: int, read: bool) -> Any:
    """Tuples untagged; depth and keys checked (identifiers where ``read``)."""
    if depth > MAX_DEPTH:
        raise HeaderSchemaError(key or 'config', f'nested deeper than {MAX_DEPTH} levels')
    if isinstance(obj, dict):
        if set(obj) == {_TUPLE} and isinstance(obj[_TUPLE], list):
            return tuple(_decode(v, f'{key}[{i}]', depth + 1, read)
                         for i, v in enumerate(obj[_TUPLE]))
        out = {}
        for name, value in obj.items():
            where = f'{key}.{name}' if key else name
            inner = read and (depth > 0 or name in HEADER.fields)
            if not (name.isidentifier() if inner else _DOTTED.fullmatch(name)) or \
                    (inner and name == _TUPLE):
                raise HeaderSchemaError(f'{key}.{name!r:.60}' if key else repr(name)[:60],
                                        'not an identifier (keys of what a task file '
                                        'stores must be plain names)')
            out[name] = _decode(value, where, depth + 1, inner)
        return out
    if isinstance(obj, list):
        return [_decode(v, f'{key}[{i}]', depth + 1, read) for i, v in enumerate(obj)]
    return obj


def parse_header_json(text: str) -> Any:
    """``config_json`` as data: JSON with finite numbers only, at most
    :data:`MAX_DEPTH` deep, tuples untagged, keys plain names.

    Raises:
        HeaderSchemaError: naming the key (``config`` for the whole text).
    """
    if not isinstance(text, str):
        raise HeaderSchemaError('config', 'not text')
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise HeaderSchemaError('config', f'nested deeper than {MAX_DEPTH} levels') from None
    except ValueError as err:  # json.JSONDecodeError, a non-finite number, a huge int
        raise HeaderSchemaError('config', f'not valid JSON of finite numbers ({err})') from None
    if not isinstance(data, dict):
        raise HeaderSchemaError('config', f'a {type(data).__name__}, not a mapping')
    return _decode(data, '', 0, True)


def read_header_config(text: str, notes: Optional[List[str]] = None) -> dict:
    """A header's ``config_json`` read into the schema: only what the schema types, in
    the types it says (see the module docstring).

    Args:
        text: The JSON text.
        notes: Where notes go (a URL dropped), if given.

    Returns:
        ``dict(model=..., [default_scope=...], [test_dataloader=dict(dataset=dict(
        pipeline=[...]))])``.

    Raises:
        HeaderSchemaError: naming the header key and what the schema takes there.
    """
    data = parse_header_json(text)
    backbone = (data.get('model') or {}).get('backbone') if isinstance(
        data.get('model'), dict) else None
    if isinstance(backbone, dict):
        for flag in FLAG_NAMES:  # the user's word, never the file's
            backbone.pop(flag, None)
    ctx = _Context()
    out = HEADER.check(data, '', ctx)
    init = ((out['model'].get('backbone') or {}).get('init_cfg'))
    if isinstance(init, dict) and init.get('checkpoint') is None:
        out['model']['backbone']['init_cfg'] = None  # its URL was dropped: no file named
    if notes is not None:
        notes.extend(ctx.notes)
    return out


# ------------------------------------------------------------------ shapes
def tensor_shapes(path: str) -> Dict[str, tuple]:
    """Every tensor's shape in a safetensors file, read from its header (no tensor is
    loaded)."""
    from safetensors import safe_open
    with safe_open(path, framework='pt') as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _vit_sizes(backbone: dict) -> Dict[str, int]:
    """The signature fields an MMSeg-layout backbone's config declares."""
    dims = backbone.get('embed_dims', 768)
    return dict(embed_dims=dims, num_layers=backbone.get('num_layers', 12),
                num_heads=backbone.get('num_heads', 12),
                patch_size=backbone.get('patch_size', 16),
                in_channels=backbone.get('in_channels', 3),
                feedforward_channels=int(backbone.get('mlp_ratio', 4) * dims))


def _timm_sizes(backbone: dict) -> Dict[str, int]:
    kwargs = backbone.get('model_kwargs') or {}
    names = dict(embed_dim='embed_dims', depth='num_layers', num_heads='num_heads',
                 in_chans='in_channels')
    return {field: kwargs[k] for k, field in names.items() if k in kwargs}


#: Backbone type -> the signature fields its config declares (header names).
SIGNATURE_SIZES: Dict[str, Callable[[dict], Dict[str, int]]] = {
    'PromptedVisionTransformer': _vit_sizes, 'PromptedTimmViT': _timm_sizes}
_OPTION_OF = dict(embed_dims='embed_dims', num_layers='num_layers', num_heads='num_heads',
                  patch_size='patch_size', in_channels='in_channels',
                  feedforward_channels='mlp_ratio')
_TIMM_OPTION = dict(embed_dims='model_kwargs.embed_dim', num_layers='model_kwargs.depth',
                    num_heads='model_kwargs.num_heads', in_channels='model_kwargs.in_chans')


def _fits(key: str, declared, found, what: str):
    if declared != found:
        raise HeaderSchemaError(key, f'{declared!r} in the header, but the file\'s {what} '
                                f'says {found!r}; the file is inconsistent')


def check_header_shapes(model: dict, shapes: Mapping[str, tuple],
                        signature: Optional[Sequence[int]] = None,
                        signature_fields: Sequence[str] = (), prefix: str = 'backbone.'):
    """Compare the sizes a schema-read ``model`` declares with a task file's tensors,
    before anything is built.

    Args:
        model: ``read_header_config(...)['model']``.
        shapes: The file's tensor shapes (:func:`tensor_shapes`).
        signature: The file's ``signature`` values, if it has one.
        signature_fields: Their names (the header's ``signature_fields``).
        prefix: Where the backbone's keys start.

    Raises:
        HeaderSchemaError: naming the header key that disagrees with the file.
    """
    backbone = model['backbone']
    dims = _check_declared_size(backbone, signature, signature_fields)
    _check_prompt_shapes(backbone, shapes, prefix, dims)
    _check_tuner_shapes(backbone, shapes, prefix)
    _entry_shapes(model, shapes)
    _check_head_shapes(model, shapes)


def _check_declared_size(backbone: dict, signature: Optional[Sequence[int]],
                         signature_fields: Sequence[str]) -> int:
    """The backbone's declared sizes against the file's ``signature``, and its size
    against :data:`MAX_BACKBONE_PARAMS` (before anything is allocated); its width."""
    kind = backbone['type']
    sizes = SIGNATURE_SIZES.get(kind, lambda b: {})(backbone)
    names = _TIMM_OPTION if kind == 'PromptedTimmViT' else _OPTION_OF
    found = dict(zip(signature_fields, signature)) if signature is not None else {}
    for field, declared in sizes.items():
        if field in found:
            _fits(f'model.backbone.{names[field]}', declared, int(found[field]),
                  f'signature ({field})')
    dims = int(found.get('embed_dims', sizes.get('embed_dims', 0)) or 0)
    layers = int(found.get('num_layers', sizes.get('num_layers', 0)) or 0)
    ffn = int(found.get('feedforward_channels', 4 * dims) or 0)
    size = backbone.get('img_size') or 224
    h, w = (size, size) if isinstance(size, int) else size
    patch = int(found.get('patch_size', backbone.get('patch_size') or 16) or 16)
    tokens = (h // patch + 1) * (w // patch + 1)  # the position embedding's grid
    params = dims * (4 * dims + 2 * ffn) * layers + tokens * dims
    if params > MAX_BACKBONE_PARAMS:
        raise HeaderSchemaError('model.backbone', f'declares a ViT of about {params:.3g} '
                                f'parameters (width {dims}, depth {layers}, a {h}x{w} '
                                f'input; more than {MAX_BACKBONE_PARAMS:.3g}); refused '
                                'before anything is allocated')
    return dims


def _check_prompt_shapes(backbone: dict, shapes: Mapping[str, tuple], prefix: str, dims: int):
    """``num_prompts`` and the width against the file's prompt tensor."""
    prompt = shapes.get(prefix + 'prompt.embeddings')
    num = backbone.get('num_prompts', 0)
    if prompt is None:
        if num:
            raise HeaderSchemaError('model.backbone.num_prompts', f'{num} in the header, but '
                                    'the file holds no prompts (prompt.embeddings)')
    else:
        _fits('model.backbone.num_prompts', num, prompt[1] if len(prompt) == 3 else None,
              'prompt.embeddings shape ' + str(prompt))
        if dims:
            _fits('model.backbone.num_prompts', dims, prompt[2],
                  'prompt width (embed dims) ' + str(prompt))


def _check_tuner_shapes(backbone: dict, shapes: Mapping[str, tuple], prefix: str):
    """LoRA's rank and the adapters' width against their tensors."""
    for part, option, suffix, dim in (('lora', 'rank', '.A', 0),
                                      ('adapter', 'width', '.down.weight', 0)):
        cfg = backbone.get(part)
        tensors = [s for k, s in shapes.items()
                   if k.startswith(f'{prefix}{part}.') and k.endswith(suffix)]
        if cfg is None:
            continue
        declared = cfg.get(option, 8 if part == 'lora' else 64)
        for shape in tensors:
            _fits(f'model.backbone.{part}.{option}', declared, shape[dim],
                  f'{part} tensors ({shape})')


def _check_head_shapes(model: dict, shapes: Mapping[str, tuple]):
    """Each head's classes and channels against its last layer's weight."""
    heads = [('decode_head', model.get('decode_head'), 'decode_head.conv_seg.weight'),
             ('head', model.get('head'), 'head.fc.weight')]
    aux = model.get('auxiliary_head')
    for i, head in enumerate(aux if isinstance(aux, (list, tuple)) else [aux]):
        if head is not None:
            where = f'auxiliary_head[{i}]' if isinstance(aux, (list, tuple)) else \
                'auxiliary_head'
            key = f'auxiliary_head.{i}.conv_seg.weight' if isinstance(aux, (list, tuple)) \
                else 'auxiliary_head.conv_seg.weight'
            heads.append((where, head, key))
    for where, head, key in heads:
        shape = shapes.get(key)
        if head is None or shape is None:
            continue
        outputs = head.get('out_channels') or head['num_classes']
        if shape[0] not in (outputs, head['num_classes']):
            _fits(f'model.{where}.num_classes', head['num_classes'], shape[0],
                  f'{key} shape {shape}')
        if 'channels' in head:
            _fits(f'model.{where}.channels', head['channels'], shape[1], f'{key} shape {shape}')
        elif where == 'head':
            _fits('model.head.in_channels', head['in_channels'], shape[1],
                  f'{key} shape {shape}')

def _modules(data: Any, key: str, state: str):
    """``(header key, state-dict prefix, cfg)`` of every module config under ``data``."""
    if isinstance(data, dict):
        if isinstance(data.get('type'), str):
            yield key, state, data
        for name, value in data.items():
            yield from _modules(value, f'{key}.{name}', f'{state}{name}.')
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            yield from _modules(value, f'{key}[{i}]', f'{state}{i}.')


def _entry_shapes(model: dict, shapes: Mapping[str, tuple]):
    """Each entry's own ``shapes`` check, on the tensors under its module."""
    entries = {t: e for kind in TABLE.values() for t, e in kind.items() if e.shapes}
    for key, state, cfg in _modules(model, 'model', ''):
        entry = entries.get(cfg['type'])
        if entry is not None:
            entry.shapes(cfg, key, {k[len(state):]: v for k, v in shapes.items()
                                    if k.startswith(state)})


def walk_keys(data: Any, key: str = '') -> Iterable[str]:
    """Every key path of nested mappings (for messages and tests)."""
    if isinstance(data, dict):
        for name, value in data.items():
            path = f'{key}.{name}' if key else name
            yield path
            yield from walk_keys(value, path)
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            yield from walk_keys(value, f'{key}[{i}]')
