"""Bad data is refused by name (vpt_seg/datasets/checks.py), through the configs' own
pipelines, at start-up (vpt_seg/datasets/config_checks.py) and by tools/check_data.py."""
import os.path as osp
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from helpers import ROOT, run_tool
from mmengine.config import Config
from mmseg.registry import DATASETS, TRANSFORMS

from vpt_seg.datasets import DataError, check_dataset, make_ade20k
from vpt_seg.datasets.checks import ImageTooLargeError
from vpt_seg.datasets.config_checks import prepare_cfg
from vpt_seg.engine.hooks import DataCheckHook

DEMO = osp.join(ROOT, 'configs', 'demo', 'setr_vpt_tiny_ade20k.py')
STUDY = osp.join(ROOT, 'configs', 'study', 'vpt-deep.py')


def config(path, data_root):
    cfg = Config.fromfile(path)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = data_root
    return cfg


def dataset(cfg, loader='train_dataloader'):
    return DATASETS.build(cfg[loader].dataset)


def ann(root, i=1, split='training'):
    prefix = 'train' if split == 'training' else 'val'
    return osp.join(root, 'annotations', split, f'ADE_{prefix}_{i:08d}.png')


def img(root, i=1, split='training'):
    prefix = 'train' if split == 'training' else 'val'
    return osp.join(root, 'images', split, f'ADE_{prefix}_{i:08d}.jpg')


@pytest.fixture
def data(tmp_path):
    return make_ade20k(str(tmp_path / 'demo'), num_train=3, num_val=1, size=(32, 32))


def test_good_data_loads_through_the_checked_pipeline(data):
    sample = dataset(config(DEMO, data), 'val_dataloader')[0]
    seg = sample['data_samples'].gt_sem_seg.data
    raw = cv2.imread(ann(data, 1, 'validation'), cv2.IMREAD_UNCHANGED).astype(np.int64)
    assert seg.shape[-2:] == raw.shape  # the test pipeline keeps the original labels
    assert np.array_equal(seg[0].numpy(), np.where(raw == 0, 255, raw - 1))


@pytest.mark.parametrize('path,task,value,message', [
    # ADE20k, 150 classes: 200 in the file is class id 199 after reduce_zero_label.
    (DEMO, 'source', 200, "has label values outside the 150 classes: 200 (class id 199). "
     "Class ids must be in 0..149 or 255 (ignored); in the file that is 0 (ignored) or "
     "1..150"),
    # The study's 8-class subset: ADE ids outside the 150 have no class id either.
    (STUDY, 'target', 200, 'has label values outside the 8 classes: 200 (class id 199). '
     'Class ids must be in 0..7 or 255 (ignored).'),
])
def test_label_outside_the_classes_is_named(tmp_path, path, task, value, message):
    root = make_ade20k(str(tmp_path / 'd'), num_train=2, num_val=1, size=(32, 32), task=task)
    label = cv2.imread(ann(root), cv2.IMREAD_UNCHANGED)
    label[0, 0] = value
    cv2.imwrite(ann(root), label)
    ds = dataset(config(path, root))
    with pytest.raises(DataError, match='annotation .*ADE_train_00000001.png'):
        ds[0]
    with pytest.raises(DataError) as err:
        ds[0]
    assert f"annotation '{ann(root)}' " + message in str(err.value)
    ds[1]  # the other file is fine


def test_annotation_of_another_size_names_both_sizes(data):
    cv2.imwrite(ann(data), np.ones((32, 40), np.uint8))
    with pytest.raises(DataError) as err:
        dataset(config(DEMO, data))[0]
    assert f"annotation '{ann(data)}' is 32x40 (HxW) but its image '{img(data)}' is " \
        '32x32' in str(err.value)


def test_16_bit_annotation_with_values_over_255_is_refused(data):
    label = np.full((32, 32), 300, np.uint16)
    cv2.imwrite(ann(data), label)
    with pytest.raises(DataError, match=f"annotation '{ann(data)}' is uint16 with values up to "
                       '300: class ids must fit in 0..255'):
        dataset(config(DEMO, data))[0]


def test_truncated_image_is_named(data):
    with open(img(data), 'rb') as f:
        head = f.read(200)
    with open(img(data), 'wb') as f:
        f.write(head)
    with pytest.raises(DataError, match=f"image '{img(data)}' is truncated"):
        dataset(config(DEMO, data))[0]


def test_image_without_annotation_fails_at_start_up_and_on_load(data):
    import os
    os.remove(ann(data, 2))
    cfg = config(DEMO, data)
    with pytest.raises(FileNotFoundError) as err:
        prepare_cfg(cfg, training=True)
    assert f"train_dataloader: {data}/images/training: 1 of 3 images have no annotation, " \
        f"e.g. '{img(data, 2)}' (expected '{ann(data, 2)}')" in str(err.value)
    assert 'Expected layout: images/<split>/NAME.jpg' in str(err.value)
    with pytest.raises(FileNotFoundError, match=f"annotation not found: '{ann(data, 2)}'.*"
                       f"annotation of image '{img(data, 2)}'"):
        dataset(cfg)[1]


def test_empty_split_fails_at_start_up(tmp_path):
    root = make_ade20k(str(tmp_path / 'd'), num_train=2, num_val=0, size=(32, 32))
    with pytest.raises(FileNotFoundError, match=f'val_dataloader: {root}/images/validation: '
                       'no images found. Expected layout'):
        prepare_cfg(config(DEMO, root), training=True)


def test_scan_lists_every_problem_and_the_hook_stops_training(data):
    label = cv2.imread(ann(data, 1), cv2.IMREAD_UNCHANGED)
    label[0, 0] = 200
    cv2.imwrite(ann(data, 1), label)
    cv2.imwrite(ann(data, 3), np.ones((16, 16), np.uint8))
    ds = dataset(config(DEMO, data))
    report = check_dataset(ds, progress=False)
    assert report['num_images'] == 3 and report['sizes'] == {(32, 32): 3}
    assert len(report['problems']) == 2
    assert 'ADE_train_00000001.png' in report['problems'][0] and '200' in report['problems'][0]
    assert 'ADE_train_00000003.png' in report['problems'][1] and '16x16' in report['problems'][1]
    assert sum(report['histogram'].values()) == 32 * 32  # the one good annotation

    runner = SimpleNamespace(train_dataloader=SimpleNamespace(dataset=ds), val_loop=None)
    with pytest.raises(DataError, match='2 problems in the train data'):
        DataCheckHook().before_train(runner)


def test_check_data_tool_reports_and_exits_non_zero(data):
    cv2.imwrite(ann(data, 2), np.full((32, 32), 300, np.uint16))
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'check_data.py'), DEMO, '--cfg-options',
         f'train_dataloader.dataset.data_root={data}',
         f'val_dataloader.dataset.data_root={data}'],
        capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert 'train: 3 images, sizes (HxW): 32x32 (3)' in proc.stdout
    assert f"PROBLEM: annotation '{ann(data, 2)}' is uint16 with values up to 300" in proc.stdout
    assert 'val: 1 images' in proc.stdout
    assert '1 problems' in proc.stdout


def check_data_tool(cfg_path, data, *splits):
    """tools/check_data.py in a forked child (tests/helpers.py; the test above starts a
    new interpreter)."""
    return run_tool('check_data.py', cfg_path, '--cfg-options',
                    f'train_dataloader.dataset.data_root={data}',
                    f'val_dataloader.dataset.data_root={data}',
                    *(['--splits', *splits] if splits else []))


def test_split_without_a_valid_label_is_refused_at_start_up_and_by_the_scans(data):
    for i in (1, 2, 3):  # 0 everywhere: all ignored after reduce_zero_label
        cv2.imwrite(ann(data, i), np.zeros((32, 32), np.uint8))
    cfg = config(DEMO, data)
    message = ('no valid label: every pixel of its 3 annotations is ignored (255 after '
               'mapping), so training would run with loss 0 and testing report mIoU nan '
               '(reduce_zero_label=True makes 0 in a file the ignore value)')
    with pytest.raises(DataError) as err:
        prepare_cfg(cfg, training=True)
    assert str(err.value).startswith(f'train_dataloader: {data}/images/training: {message}')
    report = check_dataset(dataset(cfg), progress=False)
    assert report['problems'] == [message + '. Check the annotation folder, '
                                  'reduce_zero_label and metainfo.classes.']
    runner = SimpleNamespace(train_dataloader=SimpleNamespace(dataset=dataset(cfg)),
                             val_loop=None)
    with pytest.raises(DataError, match='1 problems in the train data:\n  no valid label'):
        DataCheckHook().before_train(runner)
    proc = check_data_tool(DEMO, data, 'train')
    assert proc.returncode == 1 and f'train: PROBLEM: train_dataloader: {data}' in proc.stdout


def test_one_labelled_pixel_is_enough(data):
    for i in (1, 2, 3):
        label = np.zeros((32, 32), np.uint8)
        label[5, 5] = 3 if i == 3 else 0
        cv2.imwrite(ann(data, i), label)
    prepare_cfg(config(DEMO, data), training=True)


def test_jpeg_annotation_under_a_png_name_is_named(data):
    label = cv2.imread(ann(data), cv2.IMREAD_UNCHANGED)
    ok, jpeg = cv2.imencode('.jpg', label)
    with open(ann(data), 'wb') as f:
        f.write(jpeg.tobytes())
    message = (f"annotation '{ann(data)}' is JPEG data under a .png name: JPEG is lossy, "
               'so its class ids are changed around every edge')
    with pytest.raises(DataError) as err:
        dataset(config(DEMO, data))[0]
    assert str(err.value).startswith(message)
    assert check_dataset(dataset(config(DEMO, data)), progress=False)['problems'][0] \
        .startswith(message)


@pytest.mark.parametrize('size', [(32, 32), (32, 24)])  # square: it would load misaligned
def test_exif_rotated_photo_is_named(data, size):
    from PIL import Image
    h, w = size
    photo = Image.fromarray(np.random.RandomState(0).randint(0, 255, (h, w, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    photo.save(img(data), 'JPEG', exif=exif.tobytes())
    cv2.imwrite(ann(data), np.ones((h, w), np.uint8))
    message = (f"image '{img(data)}' has EXIF Orientation 6 (stored rotated 90 degrees "
               'clockwise): the image decoders turn it upright while its annotation is read '
               'as stored')
    with pytest.raises(DataError) as err:
        dataset(config(DEMO, data))[0]
    assert str(err.value).startswith(message)
    report = check_dataset(dataset(config(DEMO, data)), progress=False)
    assert report['problems'][0].startswith(message)


def test_palette_and_one_row_annotations_are_accepted_as_mmseg_reads_them(data):
    from PIL import Image
    label = cv2.imread(ann(data, 1), cv2.IMREAD_UNCHANGED)
    palette = Image.fromarray(label, 'P')
    palette.putpalette([(i * 37) % 256 for i in range(768)])  # colours unlike the ids
    palette.save(ann(data, 1))
    cv2.imwrite(img(data, 2), np.full((1, 32, 3), 128, np.uint8))
    row = np.arange(1, 33, dtype=np.uint8)[None]
    cv2.imwrite(ann(data, 2), row)
    ds = dataset(config(DEMO, data))
    assert check_dataset(ds, progress=False)['problems'] == []
    # class ids are the palette indices, as in MMSeg's LoadAnnotations (pillow, unchanged)
    ids = np.where(label == 0, 255, label.astype(np.int64) - 1)
    from vpt_seg.datasets import CheckedLoadAnnotations
    from vpt_seg.datasets.checks import read_label
    loader = CheckedLoadAnnotations(reduce_zero_label=True, num_classes=150)
    for i, shape in ((0, (32, 32)), (1, (1, 32))):
        info = dict(ds.get_data_info(i), seg_fields=[], ori_shape=shape)
        assert loader(info)['gt_seg_map'].shape == shape
    assert np.array_equal(loader(dict(ds.get_data_info(0), seg_fields=[]))['gt_seg_map'], ids)
    assert np.array_equal(read_label(ann(data, 1), reduce_zero_label=True), ids)
    assert read_label(ann(data, 2), img_shape=(1, 32)).shape == (1, 32)
    proc = check_data_tool(DEMO, data, 'train')
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert 'No problems found.' in proc.stdout


def _loader_types(pipeline):
    for step in pipeline:
        if isinstance(step, (list, tuple)):
            yield from _loader_types(step)
        else:
            yield step['type']
            yield from _loader_types(step.get('transforms') or [])


@pytest.mark.parametrize('name', sorted(
    osp.relpath(p, osp.join(ROOT, 'configs')) for p in
    __import__('glob').glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
    if '_base_' not in p))
def test_every_shipped_tta_pipeline_uses_the_checked_loaders(name):
    cfg = Config.fromfile(osp.join(ROOT, 'configs', name))
    if 'tta_pipeline' not in cfg:
        return
    types = list(_loader_types(cfg.tta_pipeline))
    assert 'CheckedLoadImageFromFile' in types and 'CheckedLoadAnnotations' in types
    assert not {'LoadImageFromFile', 'LoadAnnotations'} & set(types), types


def test_images_and_annotations_over_the_pixel_limit_are_refused_before_decoding(
        data, monkeypatch):
    """A 140 KB PNG declaring 12000x12000 (144 MP, over the 2**27 default) as an image and
    as an annotation: refused on load and listed by the scan, naming the file, its size
    and the limit, and never handed to a decoder. (Before: decoded, 432 MB each.)"""
    import mmcv
    from bad_images import png_bomb
    monkeypatch.delenv('VPT_SEG_MAX_PIXELS', raising=False)
    png_bomb(img(data, 1))  # PNG data under the .jpg name: the decoders read what it is
    shutil.copy(img(data, 1), ann(data, 2))
    decoded, decode = [], mmcv.imfrombytes
    monkeypatch.setattr(mmcv, 'imfrombytes', lambda data, *a, **k: decoded.append(len(data))
                        or decode(data, *a, **k))
    ds = dataset(config(DEMO, data))
    over = "declares 12000x12000 pixels (WxH: 144,000,000) in its header, over the limit " \
        'of 134,217,728 pixels'
    with pytest.raises(ImageTooLargeError, match=re.escape(f"image '{img(data, 1)}' {over}")):
        ds[0]
    with pytest.raises(ImageTooLargeError,
                       match=re.escape(f"annotation '{ann(data, 2)}' {over}")):
        ds[1]
    problems = check_dataset(ds, progress=False)['problems']
    assert [p.split(' declares')[0] for p in problems] == [f"image '{img(data, 1)}'",
                                                          f"annotation '{ann(data, 2)}'"]
    assert all('decompression bomb' in p and 'VPT_SEG_MAX_PIXELS=N' in p for p in problems)
    assert decoded and max(decoded) < 10_000  # only the small files reached a decoder


@pytest.mark.parametrize('loader', ['CheckedLoadImageFromFile', 'CheckedLoadAnnotations'])
def test_the_pixel_limit_is_set_in_the_loaders_or_the_environment(data, monkeypatch, loader):
    monkeypatch.delenv('VPT_SEG_MAX_PIXELS', raising=False)
    what, path = ('image', img(data)) if loader == 'CheckedLoadImageFromFile' else \
        ('annotation', ann(data))
    over = re.escape(f"{what} '{path}' declares 32x32 pixels (WxH: 1,024) in its header, "
                     'over the limit of 1,000 pixels')
    cfg = config(DEMO, data)
    for step in cfg.train_dataloader.dataset.pipeline:
        if step['type'] == loader:
            step['max_pixels'] = 1000
    with pytest.raises(ImageTooLargeError, match=over):
        dataset(cfg)[0]
    with pytest.raises(ValueError, match=re.escape('max_pixels=0: give the largest image')):
        TRANSFORMS.build(dict(type=loader, max_pixels=0))
    if loader == 'CheckedLoadAnnotations':
        return
    monkeypatch.setenv('VPT_SEG_MAX_PIXELS', '1000')  # every reader, the scan included
    problems = check_dataset(dataset(config(DEMO, data)), progress=False)['problems']
    assert len(problems) == 6 and all('over the limit of 1,000 pixels' in p for p in problems)


def test_the_limit_raised_is_not_undone_by_pillows_own(data, monkeypatch):
    """Pillow (which decodes annotations) refuses above twice its MAX_IMAGE_PIXELS with its
    own error; within vpt-seg's limit, vpt-seg's limit decides."""
    from PIL import Image
    monkeypatch.delenv('VPT_SEG_MAX_PIXELS', raising=False)
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 100)  # as if 32x32 were a Pillow bomb
    sample = dataset(config(DEMO, data), 'val_dataloader')[0]
    assert sample['data_samples'].gt_sem_seg.data.shape[-2:] == (32, 32)
    assert Image.MAX_IMAGE_PIXELS == 100  # put back


@pytest.mark.parametrize('name', ['vpt_cls_demo.py', 'vpt_cls_imagefolder.py',
                                  'vpt_cls_ade20k_tags.py', 'demo/vpt_cls_tiny_ade_tags.py',
                                  'study/pretrain_source.py', 'coop_cls_imagefolder.py',
                                  'vpt-coop_cls_imagefolder.py', 'demo/coop_cls_tiny.py'])
def test_classification_configs_read_images_through_the_checked_loader(name):
    cfg = Config.fromfile(osp.join(ROOT, 'configs', name))
    for pipeline in (cfg.train_dataloader.dataset.pipeline,
                     cfg.test_dataloader.dataset.pipeline):
        (loader, ) = [s for s in pipeline if 'Load' in s['type']]
        assert loader == dict(type='CheckedLoadImageFromFile', check_orientation=False)


def test_classification_images_are_bounded_and_checked_but_photos_turned_upright(
        tmp_path, monkeypatch):
    """The classification configs' loader: a truncated image and one over the pixel limit
    are refused by name (before: a grey fill, and any size OpenCV takes); a photo with an
    EXIF Orientation is decoded upright as LoadImageFromFile gives it (no annotation to
    line up with, so not refused)."""
    from PIL import Image

    from vpt_seg.datasets import make_cls_folder
    monkeypatch.delenv('VPT_SEG_MAX_PIXELS', raising=False)
    root = make_cls_folder(str(tmp_path / 'cls'), num_train=1, num_val=1)
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'vpt_cls_demo.py'))
    ds = DATASETS.build(dict(cfg.train_dataloader.dataset, data_root=root,
                             pipeline=cfg.test_pipeline))  # no random flip
    paths = [ds.get_data_info(i)['img_path'] for i in range(3)]
    with open(paths[0], 'rb') as f:
        head = f.read(100)
    with open(paths[0], 'wb') as f:
        f.write(head)
    photo = Image.fromarray(np.random.RandomState(0).randint(0, 255, (32, 24, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: 24 high, 32 wide
    photo.save(paths[1], 'JPEG', exif=exif.tobytes())  # JPEG data under the .png name
    with pytest.raises(DataError, match=re.escape(f"image '{paths[0]}' is truncated")):
        ds[0]
    upright = ds[1]['inputs']
    assert upright.shape == (3, 24, 32)
    assert np.array_equal(upright.numpy().transpose(1, 2, 0), cv2.imread(paths[1]))
    monkeypatch.setenv('VPT_SEG_MAX_PIXELS', '1000')
    with pytest.raises(ImageTooLargeError, match=re.escape(
            f"image '{paths[2]}' declares 32x32 pixels (WxH: 1,024) in its header, over the "
            'limit of 1,000 pixels')):
        ds[2]


@pytest.mark.parametrize('params', [[], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1],
                                    [cv2.IMWRITE_JPEG_RST_INTERVAL, 1]],
                         ids=['baseline', 'progressive', 'restart-markers'])
def test_a_jpeg_is_truncated_when_cut_anywhere_not_when_data_follows_its_end(
        tmp_path, params):
    """The one truncation check of training and serving walks the JPEG's segments and
    scans to its end marker: cut anywhere, it is refused; with data after the end marker
    (a phone's motion photo appends its video) it reads as the decoders read it."""
    from vpt_seg.datasets.checks import read_image
    ok, data = cv2.imencode('.jpg', np.random.default_rng(0).integers(0, 256, (32, 48, 3),
                                                                       np.uint8), params)
    data, path = data.tobytes(), str(tmp_path / 'a.jpg')
    for cut in range(4, len(data) - 1, 37):
        with open(path, 'wb') as f:
            f.write(data[:cut])
        with pytest.raises(DataError, match='is truncated'):
            read_image(path)
    with open(path, 'wb') as f:
        f.write(data + b'\x00\x00\x00\x18ftypmp42' + bytes(300))
    assert np.array_equal(read_image(path), cv2.imdecode(np.frombuffer(data, np.uint8),
                                                         cv2.IMREAD_COLOR))


@pytest.mark.parametrize('loader', [dict(type='LoadImageFromFile'),
                                    dict(type='CheckedLoadImageFromFile', max_pixels=4096)])
def test_mmseg_inferencer_reads_files_through_the_checked_loader(tmp_path, loader):
    """MMSegInferencer turns the test pipeline's image loader into MMSeg's InferencerLoader
    (vpt_seg/patches.py): file paths go through the checked loader (a bomb refused from its
    header, a truncated JPEG refused), arrays as MMSeg reads them, a good file as
    LoadImageFromFile reads it."""
    from bad_images import png_bomb, truncated_jpeg
    from mmseg.apis import MMSegInferencer

    class Stub:
        _get_transform_idx = MMSegInferencer._get_transform_idx

    cfg = Config(dict(test_dataloader=dict(dataset=dict(pipeline=[
        dict(loader), dict(type='PackSegInputs')]))))
    pipeline = MMSegInferencer._init_pipeline(Stub(), cfg)
    bomb = str(tmp_path / 'bomb.png')
    png_bomb(bomb)
    with pytest.raises(ImageTooLargeError, match=re.escape(f"image '{bomb}' declares 12000x12000")):
        pipeline(bomb)
    cut = tmp_path / 'cut.jpg'
    truncated_jpeg(str(cut))
    with pytest.raises(DataError, match='truncated'):
        pipeline(str(cut))
    good = str(tmp_path / 'good.png')
    image = np.random.default_rng(0).integers(0, 256, (16, 24, 3), np.uint8)
    cv2.imwrite(good, image)
    assert np.array_equal(pipeline(good)['inputs'].numpy().transpose(1, 2, 0), image)
    assert np.array_equal(pipeline(image)['inputs'].numpy().transpose(1, 2, 0), image)
