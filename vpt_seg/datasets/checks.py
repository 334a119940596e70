"""Data that would train silently wrong is refused, naming the file.

Two layers share the checks of :func:`read_image` and :func:`read_label`:

* **On load**, in the pipeline: :class:`CheckedLoadImageFromFile` and
  :class:`CheckedLoadAnnotations` (MMSeg's transforms, same arguments) fail on the first
  bad file, naming it: an image that is missing, truncated, not an image, or a photo
  with an EXIF Orientation other than 1 (decoded turned upright while its annotation is
  read as stored); an annotation that is missing, JPEG data (lossy, whatever its name),
  not single-channel, 16-bit with values over 255 (MMSeg would wrap them to 0..255), of
  another size than its image, or with class ids outside ``0..num_classes-1`` other than
  the ignore value. Annotations are read as MMSeg's ``LoadAnnotations`` reads them
  (pillow, ``'unchanged'``): a palette PNG gives its indices, a ``1xW`` one stays ``1xW``.
* **Before training**, :func:`check_dataset` scans a whole split the same way and reports
  every problem at once with a class histogram (``tools/check_data.py CONFIG``, or
  :class:`~vpt_seg.engine.DataCheckHook` at start-up); :func:`check_split_layout` refuses an
  empty split or images without annotations when the dataset is built, and
  :func:`check_split_has_labels` a split without a single valid label (reading up to the
  first labelled file); :func:`check_class_counts` heads whose ``num_classes`` is not
  the dataset's.

**Bounded.** Every reader (these, ``tools/serve.py``, ``tools/check_data.py``) reads an
image's size from its header before decoding it (:func:`check_image_data`) and refuses one
over :func:`pixel_limit` (default :data:`DEFAULT_MAX_PIXELS`), naming the file, its declared
size and the limit, so a small file declaring a huge image (a decompression bomb) is not
decoded: OpenCV alone accepts up to 2^30 pixels, 3 GiB of BGR from a 17 KB PNG.

Policy: nothing is skipped. A bad file is an error, never a silent gap in the data: a
skipped image would change what the run trains on without a trace in its numbers.
"""
import io
import os
import os.path as osp
import warnings
from contextlib import contextmanager
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import mmcv
import mmengine.fileio as fileio
import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.registry import TRANSFORMS

__all__ = ['DataError', 'read_image', 'read_label', 'CheckedLoadImageFromFile',
           'CheckedLoadAnnotations', 'check_split_layout', 'check_dataset',
           'ClassCountError', 'head_classes', 'check_class_counts', 'check_split_has_labels',
           'exif_orientation', 'use_checked_loaders', 'DEFAULT_MAX_PIXELS', 'MAX_PIXELS_ENV',
           'ImageTooLargeError', 'pixel_limit', 'image_size', 'check_image_data',
           'check_image', 'decode']

LAYOUT = ('images/<split>/NAME.jpg with annotations/<split>/NAME.png (ADE20k: '
          'ADEChallengeData2016/{images,annotations}/{training,validation})')


class DataError(ValueError):
    """A data file that cannot be trained on as it is; the message names it."""


class ImageTooLargeError(DataError):
    """An image whose header declares more pixels than the limit (:func:`pixel_limit`)."""


#: The largest image, in pixels, any reader of vpt-seg decodes unless told otherwise:
#: 2**27 = 134,217,728 (e.g. 16384x8192, or 11585x11585). Above the 100-megapixel cameras
#: and phones (11648x8736, 12000x9000), so real photos pass; its BGR decode is 384 MiB,
#: the label map and overlay serve.py makes at that size about as much again, so a host
#: with a few GiB survives the largest image allowed. OpenCV's own limit, 2**30 pixels, is
#: 3 GiB of BGR and far more once resized and labelled, from a file of a few KB.
DEFAULT_MAX_PIXELS = 2 ** 27
#: Environment variable that sets the limit for every reader (the data loaders' and
#: tools/serve.py's ``max_pixels`` / ``--max-pixels`` win over it).
MAX_PIXELS_ENV = 'VPT_SEG_MAX_PIXELS'
_RAISE_LIMIT = (f'tools/serve.py --max-pixels N; in a config, max_pixels=N in '
                'CheckedLoadImageFromFile / CheckedLoadAnnotations; for every reader, the '
                f'environment variable {MAX_PIXELS_ENV}=N')


def pixel_limit(value: Optional[int] = None) -> int:
    """The pixel limit: ``value``, else ``$VPT_SEG_MAX_PIXELS``, else
    :data:`DEFAULT_MAX_PIXELS`.

    Raises:
        ValueError: ``value`` or the variable is not an integer >= 1 (naming which).
    """
    where = 'max_pixels'
    if value is None:
        text = os.environ.get(MAX_PIXELS_ENV, '').strip()
        if not text:
            return DEFAULT_MAX_PIXELS
        where = f'the environment variable {MAX_PIXELS_ENV}'
        try:
            value = int(text.replace('_', ''))
        except ValueError:
            value = text
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{where}={value!r}: give the largest image to read, in pixels, '
                         f'as an integer >= 1 (default {DEFAULT_MAX_PIXELS}, i.e. 2**27)')
    return value


@contextmanager
def _pil_limit(limit: Optional[int]):
    """PIL's own bomb check (a warning above ``MAX_IMAGE_PIXELS``, an error above twice
    it) set to ``limit`` (None: off) for the block: ours has run first and names the file
    and the option; PIL's would refuse a limit the user raised. Process-global, as PIL's
    setting is; the loaders run in processes, not threads."""
    from PIL import Image
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def image_size(data: bytes) -> Optional[Tuple[int, int]]:
    """``(H, W)`` as an encoded image's header declares it, no pixel decoded (PIL's lazy
    open: PNG IHDR, JPEG SOF, ...); None if PIL does not know the format."""
    from PIL import Image
    try:
        with _pil_limit(None), Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Exception:  # PIL raises its own types for every kind of unknown or bad header
        return None
    return int(h), int(w)


def _jpeg_ends(data: bytes) -> bool:
    """Whether a JPEG's segments and scans run to its end marker (EOI).

    Walks the marker segments by their lengths (so an EXIF thumbnail's own end marker,
    inside APP1, does not count) and each scan's entropy-coded data to the next marker
    (``FF 00`` stuffing and restart markers are part of the scan). Data after EOI (a
    phone's appended video, a camera's trailer) is allowed, as the decoders allow it.
    """
    i, n = 2, len(data)
    while i + 1 < n:
        if data[i] != 0xFF:
            return False                                  # not a marker: damaged
        marker = data[i + 1]
        if marker == 0xD9:
            return True
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD8:
            i += 1 if marker == 0xFF else 2               # fill byte; markers without length
            continue
        if i + 4 > n:
            return False
        i += 2 + int.from_bytes(data[i + 2:i + 4], 'big')
        if marker != 0xDA:
            continue
        while True:                                       # the scan: up to the next marker
            i = data.find(b'\xff', i)
            if i < 0 or i + 1 >= n:
                return False
            if data[i + 1] == 0 or 0xD0 <= data[i + 1] <= 0xD7:
                i += 2
                continue
            if data[i + 1] == 0xFF:
                i += 1
                continue
            break
    return False


def _truncated(data: bytes) -> bool:
    """A JPEG whose data stops before its end marker, or a PNG without its IEND chunk."""
    if data[:2] == b'\xff\xd8':
        return not _jpeg_ends(data)
    if data[:8] == b'\x89PNG\r\n\x1a\n':
        return b'IEND' not in data[-16:]
    return False


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b'\xff\xd8\xff'


# EXIF Orientation (tag 0x0112) values other than 1: how a viewer must turn the stored
# pixels to show the photo upright.
_ORIENTATIONS = {2: 'mirrored', 3: 'rotated 180 degrees', 4: 'flipped upside down',
                 5: 'mirrored and rotated 90 degrees', 6: 'rotated 90 degrees clockwise',
                 7: 'mirrored and rotated 270 degrees', 8: 'rotated 90 degrees counter-clockwise'}


def exif_orientation(data: bytes) -> int:
    """The EXIF Orientation of an encoded image (1, upright as stored, when it has none)."""
    from PIL import Image
    try:  # the header and EXIF only: no pixel is decoded
        with _pil_limit(None), Image.open(io.BytesIO(data)) as im:
            value = im.getexif().get(0x0112, 1)
    except Exception:  # not something PIL reads: the decoder names the problem
        return 1
    return value if isinstance(value, int) else 1


def _read_bytes(path: str, what: str, backend_args=None) -> bytes:
    try:
        return fileio.get(path, backend_args=backend_args)
    except FileNotFoundError:
        raise FileNotFoundError(f'{what} not found: {path!r} (expected layout: {LAYOUT})') \
            from None


def check_image_data(data: bytes, path: str, what: str = 'image',
                     limit: Optional[int] = None) -> Tuple[int, int]:
    """Check an encoded image before it is decoded: not truncated, its header readable and
    within the pixel limit. Returns its declared ``(H, W)``.

    Args:
        data: The file's bytes.
        path: Its name, for the messages.
        what: ``'image'`` or ``'annotation'``, for the messages.
        limit: Pixel limit (None: :func:`pixel_limit`).

    Raises:
        DataError: truncated (no JPEG end marker or PNG IEND), or a header that is no
            image format vpt-seg reads.
        ImageTooLargeError: more pixels than the limit, naming the declared size, the
            limit and how to raise it.
    """
    if _truncated(data):
        raise DataError(f'{what} {path!r} is truncated (its last bytes are missing); '
                        're-copy or remove it')
    limit = pixel_limit(limit)
    size = image_size(data)
    if size is None:
        raise DataError(f'{what} {path!r} cannot be read: its header is not that of an image '
                        'format vpt-seg reads (JPEG, PNG, BMP, TIFF, WebP); it is not an '
                        'image file or is damaged: re-copy or remove it')
    h, w = size
    if h * w > limit:
        raise ImageTooLargeError(
            f'{what} {path!r} declares {w}x{h} pixels (WxH: {h * w:,}) in its header, over '
            f'the limit of {limit:,} pixels; decoding it would take {h * w * 3 / 2**30:.1f} '
            'GiB or more, so it is not decoded. A small file declaring a huge image is a '
            'decompression bomb: remove it. If it is a real image, downscale it or raise '
            f'the limit: {_RAISE_LIMIT}.')
    return h, w


def decode(data: bytes, flag: str = 'color', backend: str = 'cv2',
           limit: Optional[int] = None) -> Optional[np.ndarray]:
    """``mmcv.imfrombytes`` of data :func:`check_image_data` has passed, with pillow's own
    bomb check at the same limit (it would otherwise refuse a limit raised above twice
    its 89 MP, with its own words)."""
    with _pil_limit(pixel_limit(limit)):
        return mmcv.imfrombytes(data, flag=flag, backend=backend)


def check_image(path: str, limit: Optional[int] = None, what: str = 'image',
                backend_args=None) -> Tuple[int, int]:
    """:func:`check_image_data` of the file at ``path`` (its ``(H, W)``); nothing decoded.

    Raises:
        FileNotFoundError: no such file. DataError: as :func:`check_image_data`.
    """
    return check_image_data(_read_bytes(path, what, backend_args), path, what, limit)


def read_image(path: str, flag: str = 'color', backend: str = 'cv2',
               backend_args=None, limit: Optional[int] = None,
               check_orientation: bool = True) -> np.ndarray:
    """Decode an image, refusing by name truncated and unreadable files, images over the
    pixel limit (:func:`check_image_data`, before decoding), and photos with an EXIF
    Orientation other than 1 (the decoders turn those upright, their annotations are
    read as stored: policy "detect and name", see the README).

    Args:
        limit: Pixel limit (None: :func:`pixel_limit`).
        check_orientation: False where no annotation is read with the image (serving):
            the photo is then decoded upright, as ``cv2.imread`` gives it.
    """
    data = _read_bytes(path, 'image', backend_args)
    check_image_data(data, path, 'image', limit)
    orientation = exif_orientation(data) if check_orientation else 1
    if orientation != 1:
        raise DataError(
            f'image {path!r} has EXIF Orientation {orientation} (stored '
            f'{_ORIENTATIONS.get(orientation, "turned")}): the image decoders turn it upright '
            'while its annotation is read as stored, so labels would not line up with '
            'pixels. Write the image with the turn applied and the tag removed, turning its '
            'annotation the same way if it was drawn on the stored pixels (e.g. PIL: '
            'ImageOps.exif_transpose(Image.open(path)).save(path)).')
    try:
        img = decode(data, flag, backend, limit)
    except Exception as err:  # the decoders raise their own types
        img, reason = None, f'{type(err).__name__}: {err}'
    else:
        reason = 'the decoder returned nothing'
    if img is None:
        raise DataError(f'image {path!r} cannot be read ({reason}); it is not an image '
                        'file or is damaged: re-copy or remove it')
    return img


def map_labels(raw: np.ndarray, reduce_zero_label: bool,
               label_map: Optional[Mapping[int, int]]) -> np.ndarray:
    """Raw annotation ids to training ids, exactly as MMSeg's ``LoadAnnotations``."""
    label = raw.astype(np.uint8)
    if reduce_zero_label:
        label[label == 0] = 255
        label = label - 1
        label[label == 254] = 255
    if label_map:
        copy = label.copy()
        for old, new in label_map.items():
            label[copy == old] = new
    return label


def read_label(path: str, *, img_shape: Optional[Tuple[int, int]] = None,
               reduce_zero_label: bool = False, label_map: Optional[Mapping] = None,
               num_classes: Optional[int] = None, ignore_index: int = 255,
               img_path: str = '', backend: str = 'pillow', backend_args=None,
               limit: Optional[int] = None) -> np.ndarray:
    """Decode an annotation and check it; returns the training ids ``(H, W)`` uint8.

    Read as MMSeg's ``LoadAnnotations`` reads it (``flag='unchanged'``, the pillow backend
    by default): a palette-mode (``P``) PNG gives its palette indices as class ids (OpenCV
    would expand it to colours), and a ``1xW`` annotation stays ``1xW``.

    Raises:
        FileNotFoundError: no such file (the message gives the image and the layout).
        DataError: truncated, over the pixel limit (``limit``, None:
            :func:`pixel_limit`), not decodable, JPEG data (lossy), not one channel, values
            over 255, another size than ``img_shape``, or class ids outside
            ``0..num_classes-1`` other than ``ignore_index`` (naming the value as stored in
            the file).
    """
    try:
        data = _read_bytes(path, 'annotation', backend_args)
    except FileNotFoundError as err:
        raise FileNotFoundError(f'{err}; it is the annotation of image {img_path!r}'
                                if img_path else str(err)) from None
    check_image_data(data, path, 'annotation', limit)
    if _is_jpeg(data):
        named = ' under a .png name' if path.lower().endswith('.png') else ''
        raise DataError(f'annotation {path!r} is JPEG data{named}: JPEG is lossy, so its class '
                        'ids are changed around every edge. Export the labels losslessly '
                        '(PNG, one channel of class ids) from their source.')
    raw = decode(data, 'unchanged', backend, limit)
    if raw is None:
        raise DataError(f'annotation {path!r} cannot be read: not an image file')
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[..., 0]
    if raw.ndim != 2:
        raise DataError(f'annotation {path!r} has shape {raw.shape}: expected one channel '
                        'of class ids (a grey or palette PNG), not a colour image')
    if raw.dtype != np.uint8:
        top = int(raw.max()) if raw.size else 0
        if top > 255 or raw.min() < 0:
            raise DataError(f'annotation {path!r} is {raw.dtype} with values up to {top}: '
                            'class ids must fit in 0..255 (8-bit PNG); MMSeg would wrap '
                            'them and train on wrong labels')
    if img_shape is not None and tuple(raw.shape) != tuple(img_shape[:2]):
        raise DataError(f'annotation {path!r} is {raw.shape[0]}x{raw.shape[1]} (HxW) but '
                        f'its image {img_path!r} is {img_shape[0]}x{img_shape[1]}: labels '
                        'would not line up with pixels')
    label = map_labels(raw, reduce_zero_label, label_map)
    if num_classes is not None:
        values = np.unique(raw)
        mapped = map_labels(values, reduce_zero_label, label_map)
        bad = [(int(v), int(m)) for v, m in zip(values, mapped)
               if m != ignore_index and not 0 <= m < num_classes]
        if bad:
            shown = ', '.join(f'{v} (class id {m})' if m != v else str(v) for v, m in bad[:8])
            in_file = (f'; in the file that is 0 (ignored) or 1..{num_classes}, as '
                       'reduce_zero_label=True subtracts 1' if reduce_zero_label
                       and not label_map else '')
            raise DataError(
                f'annotation {path!r} has label values outside the {num_classes} classes: '
                f'{shown}. Class ids must be in 0..{num_classes - 1} or {ignore_index} '
                f'(ignored){in_file}.')
    return label


@TRANSFORMS.register_module()
class CheckedLoadImageFromFile(LoadImageFromFile):
    """MMCV's ``LoadImageFromFile`` that names a missing, truncated, unreadable or too
    large file (:func:`read_image`).

    Args:
        max_pixels: Pixel limit, checked from the header before decoding (None:
            ``$VPT_SEG_MAX_PIXELS``, else :data:`DEFAULT_MAX_PIXELS`).
        check_orientation: Refuse photos with an EXIF Orientation other than 1 (their
            annotations would not line up). False for classification, where no
            annotation is read: such a photo is then decoded upright, as
            ``LoadImageFromFile`` gives it.
        **kwargs: ``LoadImageFromFile``'s (``color_type``, ``imdecode_backend``, ...).
    """

    def __init__(self, max_pixels: Optional[int] = None, check_orientation: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        if max_pixels is not None:
            pixel_limit(max_pixels)  # a bad value fails when the pipeline is built
        self.max_pixels, self.check_orientation = max_pixels, check_orientation

    def transform(self, results: dict) -> dict:
        img = read_image(results['img_path'], self.color_type, self.imdecode_backend,
                         self.backend_args, limit=self.max_pixels,
                         check_orientation=self.check_orientation)
        if self.to_float32:
            img = img.astype(np.float32)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results


@TRANSFORMS.register_module()
class CheckedLoadAnnotations(LoadAnnotations):
    """MMSeg's ``LoadAnnotations`` that checks each annotation (:func:`read_label`).

    Args:
        num_classes: Classes of the dataset; class ids outside ``0..num_classes-1``
            (other than ``ignore_index``) are refused. None: not checked.
        ignore_index: The ignore value (MMSeg's 255).
        max_pixels: Pixel limit, as :class:`CheckedLoadImageFromFile`'s.
        **kwargs: ``LoadAnnotations``'s (``reduce_zero_label``, ...).
    """

    def __init__(self, num_classes: Optional[int] = None, ignore_index: int = 255,
                 max_pixels: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        if max_pixels is not None:
            pixel_limit(max_pixels)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.max_pixels = max_pixels

    def transform(self, results: dict) -> dict:
        if 'seg_map_path' not in results:
            # An image to predict, not a dataset sample (MMSeg's inference_model runs the
            # test pipeline on bare image paths and drops only transforms it finds by the
            # name 'LoadAnnotations'): there is nothing to load or check.
            return results
        return super().transform(results)

    def _load_seg_map(self, results: dict) -> None:
        if self.reduce_zero_label is None:
            self.reduce_zero_label = results['reduce_zero_label']
        if self.reduce_zero_label != results['reduce_zero_label']:
            raise ValueError(f'the dataset has reduce_zero_label={results["reduce_zero_label"]}'
                             f', the pipeline\'s annotation loader {self.reduce_zero_label}')
        results['gt_seg_map'] = read_label(
            results['seg_map_path'], img_shape=results.get('ori_shape'),
            reduce_zero_label=self.reduce_zero_label, label_map=results.get('label_map'),
            num_classes=self.num_classes, ignore_index=self.ignore_index,
            img_path=results.get('img_path', ''), backend=self.imdecode_backend,
            backend_args=self.backend_args, limit=self.max_pixels)
        results['seg_fields'].append('gt_seg_map')


class ClassCountError(ValueError):
    """The segmentation heads classify another number of classes than the dataset has."""


def head_classes(model) -> Dict[str, int]:
    """``{'decode_head': n, 'auxiliary_head.0': n, ...}``: the ``num_classes`` of a
    segmentor's heads, from its config (a dict; a TTA model's ``module`` is looked into)
    or from the built model (an ``nn.Module``). Empty for models without such heads."""
    if isinstance(model, Mapping):
        while 'decode_head' not in model and isinstance(model.get('module'), Mapping):
            model = model['module']
        get = model.get
    else:
        get = lambda name: getattr(model, name, None)  # noqa: E731
    found = {}
    for name in ('decode_head', 'auxiliary_head'):
        heads = get(name)
        if heads is None:
            continue
        many = isinstance(heads, (list, tuple)) or type(heads).__name__ == 'ModuleList'
        for i, head in enumerate(heads if many else [heads]):
            n = head.get('num_classes') if isinstance(head, Mapping) else \
                getattr(head, 'num_classes', None)
            if n is not None:
                found[f'{name}.{i}' if many else name] = n
    return found


def check_class_counts(heads: Mapping[str, int], classes: Optional[Sequence[str]],
                       where: str):
    """Refuse heads whose ``num_classes`` is not the dataset's class count.

    Args:
        heads: From :func:`head_classes`.
        classes: The dataset's classes (its ``METAINFO``, or the config's
            ``metainfo=dict(classes=...)``); None or empty: not checked.
        where: What the dataset is, for the message (``'train_dataloader: ADE20KDataset'``).

    Raises:
        ClassCountError: naming each head's count and the dataset's.
    """
    if not classes:
        return
    bad = {name: n for name, n in heads.items() if n != len(classes)}
    if not bad:
        return
    counts = ', '.join(f'{name}.num_classes={n}' for name, n in bad.items())
    raise ClassCountError(
        f'{counts}, but the dataset of {where} has {len(classes)} classes (its METAINFO, or '
        "the config's metainfo=dict(classes=...)): heads with fewer classes fail on the "
        'first label above them, heads with more train outputs no label has, and a test '
        f'reports a wrong mIoU. Set num_classes={len(classes)} in model.decode_head and '
        'every auxiliary head, or give the dataset the classes of your labels '
        '(dataset.metainfo=dict(classes=(...))).')


_CHECKED = {'LoadImageFromFile': 'CheckedLoadImageFromFile',
            'LoadAnnotations': 'CheckedLoadAnnotations'}


def use_checked_loaders(pipeline: Sequence, num_classes: Optional[int] = None) -> List:
    """A pipeline config with MMCV's/MMSeg's ``LoadImageFromFile`` and ``LoadAnnotations``
    replaced by the checked loaders (same arguments), inside ``TestTimeAug`` branches too;
    ``CheckedLoadAnnotations`` without ``num_classes`` gets ``num_classes``.

    ``tools/test.py --tta`` runs a config's ``tta_pipeline`` through it, so a config
    inheriting MMSeg's unchecked TTA pipeline is checked like the rest."""
    out = []
    for step in pipeline:
        if isinstance(step, (list, tuple)):  # a TestTimeAug branch
            out.append(use_checked_loaders(step, num_classes))
            continue
        step = dict(step)
        kind = step.get('type')
        kind = kind.split('.')[-1] if isinstance(kind, str) else kind
        if kind in _CHECKED:
            step['type'] = _CHECKED[kind]
        if step.get('type') == 'CheckedLoadAnnotations' and step.get('num_classes') is None:
            step['num_classes'] = num_classes
        if isinstance(step.get('transforms'), (list, tuple)):
            step['transforms'] = use_checked_loaders(step['transforms'], num_classes)
        out.append(step)
    return out


def check_split_layout(data_list: Sequence[dict], where: str):
    """Refuse an empty split, and images without an annotation, naming them.

    Raises:
        FileNotFoundError: no images in ``where``, or images whose annotation is missing.
    """
    if not data_list:
        raise FileNotFoundError(f'{where}: no images found. Expected layout: {LAYOUT}')
    lost = [d for d in data_list if d.get('seg_map_path') and not osp.isfile(d['seg_map_path'])]
    if lost:
        shown = ', '.join(repr(d['img_path']) for d in lost[:5])
        raise FileNotFoundError(
            f'{where}: {len(lost)} of {len(data_list)} images have no annotation, e.g. '
            f'{shown} (expected {lost[0]["seg_map_path"]!r}). Expected layout: {LAYOUT}')


def _no_label_message(count: int, ignore: int, reduce_zero_label: bool,
                      label_map) -> str:
    why = []
    if reduce_zero_label:
        why.append('reduce_zero_label=True makes 0 in a file the ignore value')
    if label_map:
        why.append("the config's metainfo classes map every other id to "
                   f'{ignore}')
    return (f'no valid label: every pixel of its {count} annotations is ignored ({ignore}'
            f'{" after mapping" if why else ""}), so training would run with loss 0 and '
            f'testing report mIoU nan{" (" + "; ".join(why) + ")" if why else ""}. Check '
            'the annotation folder, reduce_zero_label and metainfo.classes.')


def check_split_has_labels(data_list: Iterable[dict], where: str, ignore_index: int = 255):
    """Refuse a split with no valid label at all (every pixel ``ignore_index``).

    Reads annotations in order up to the first one with a label, so a normal split costs
    one file; only a split without labels is read through (then it is refused). Files that
    do not decode are left to the loaders and ``tools/check_data.py``, which name them.

    Args:
        data_list: The dataset's items (``seg_map_path``, ``reduce_zero_label``,
            ``label_map``), e.g. ``dataset.load_data_list()``; read lazily.

    Raises:
        DataError: no annotation of the split has a pixel other than ``ignore_index``.
    """
    seen, first = 0, None
    for info in data_list:
        if not info.get('seg_map_path'):
            continue
        first = first or info
        try:
            label = read_label(info['seg_map_path'],
                               reduce_zero_label=info.get('reduce_zero_label', False),
                               label_map=info.get('label_map'))
        except (DataError, FileNotFoundError):
            continue
        seen += 1
        if (label != ignore_index).any():
            return
    if seen:
        raise DataError(f'{where}: ' + _no_label_message(
            seen, ignore_index, first.get('reduce_zero_label', False), first.get('label_map')))


def check_dataset(dataset, progress: bool = True) -> Dict:
    """Scan a built segmentation dataset: every image and annotation, read and checked.

    Returns:
        ``dict(num_images, problems=[message, ...], histogram={class id: pixels},
        sizes={(h, w): count}, num_classes)``; nothing raised for a bad file, so one scan
        lists them all.
    """
    from mmengine.utils import ProgressBar
    meta = dataset.metainfo
    num_classes = len(meta.get('classes', ())) or None
    ignore = getattr(dataset, 'ignore_index', 255)
    problems: List[str] = []
    hist = np.zeros(256, np.int64)
    sizes: Dict[Tuple[int, int], int] = {}
    items = [dataset.get_data_info(i) for i in range(len(dataset))]
    bar = ProgressBar(len(items)) if progress and items else None
    for info in items:
        shape = None
        try:
            shape = read_image(info['img_path'], 'unchanged').shape[:2]
            sizes[shape] = sizes.get(shape, 0) + 1
        except (DataError, FileNotFoundError) as err:
            problems.append(str(err))
        if info.get('seg_map_path'):
            try:
                label = read_label(info['seg_map_path'], img_shape=shape,
                                   reduce_zero_label=info.get('reduce_zero_label', False),
                                   label_map=info.get('label_map'), num_classes=num_classes,
                                   ignore_index=ignore, img_path=info['img_path'])
                hist += np.bincount(label.ravel(), minlength=256)
            except (DataError, FileNotFoundError) as err:
                problems.append(str(err))
        if bar is not None:
            bar.update()
    if bar is not None:
        print()
    read = int(hist.sum())
    if read and read == hist[ignore]:
        first = items[0]
        problems.append(_no_label_message(
            len(items), ignore, first.get('reduce_zero_label', False), first.get('label_map')))
    return dict(num_images=len(items), problems=problems, num_classes=num_classes,
                histogram={int(i): int(n) for i, n in enumerate(hist) if n},
                sizes=sizes, classes=tuple(meta.get('classes', ())), ignore_index=ignore)


def transform_idx_finding_subclasses(find_by_name):
    """MMSeg's ``MMSegInferencer`` finds ``LoadImageFromFile`` and ``LoadAnnotations`` in
    a config's test pipeline by type name, to swap the one for its own loader and drop the
    other. The method returned (for ``MMSegInferencer._get_transform_idx``, set by
    :mod:`vpt_seg.patches`) finds their checked subclasses (:class:`CheckedLoadImageFromFile`,
    :class:`CheckedLoadAnnotations`) too, so ``MMSegInferencer(model=config)`` works with
    vpt-seg's configs.

    Args:
        find_by_name: MMSeg's own ``_get_transform_idx``, asked first.
    """
    def _get_transform_idx(self, pipeline_cfg, name: str) -> int:
        idx = find_by_name(self, pipeline_cfg, name)
        base = TRANSFORMS.get(name)
        if idx != -1 or base is None:
            return idx
        for i, transform in enumerate(pipeline_cfg):
            kind = transform['type']
            cls = TRANSFORMS.get(kind) if isinstance(kind, str) else kind
            if isinstance(cls, type) and issubclass(cls, base):
                return i
        return -1

    _get_transform_idx.finds_subclasses = True
    return _get_transform_idx
