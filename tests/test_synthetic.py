"""The synthetic ADE20k-layout data: layout, label range, determinism, MMSeg loading."""
import glob
import hashlib
import os.path as osp

import numpy as np
import pytest
from PIL import Image

import vpt_seg  # noqa: F401  (before mmseg)

# isort: split
from mmseg.datasets import ADE20KDataset

from vpt_seg.datasets import TASK_CLASSES, make_ade20k

# As in MMSeg's ADE20k configs; reduce_zero_label comes from the dataset.
PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]


def _digest(folder):
    h = hashlib.sha256()
    for split in ('images/training', 'annotations/training', 'images/validation',
                  'annotations/validation'):
        for path in sorted(glob.glob(osp.join(folder, split, '*'))):
            h.update(osp.basename(path).encode())
            h.update(open(path, 'rb').read())
    return h.hexdigest()


@pytest.mark.parametrize('task', ['source', 'target'])
def test_layout_and_labels(tmp_path, task):
    root = make_ade20k(str(tmp_path), num_train=6, num_val=3, size=(48, 40), task=task)
    assert root == osp.join(str(tmp_path), 'ADEChallengeData2016')
    for folder, prefix, count in (('training', 'train', 6), ('validation', 'val', 3)):
        for i in range(1, count + 1):
            img = Image.open(osp.join(root, 'images', folder, f'ADE_{prefix}_{i:08d}.jpg'))
            ann = Image.open(osp.join(root, 'annotations', folder, f'ADE_{prefix}_{i:08d}.png'))
            assert img.mode == 'RGB' and img.size == (40, 48)
            assert ann.mode == 'L' and ann.size == (40, 48)
            values = set(np.unique(np.asarray(ann)).tolist())
            assert values <= {0, *TASK_CLASSES[task]}
            assert len(values - {0}) >= 2  # a background and at least one shape
    assert set(TASK_CLASSES['source']).isdisjoint(TASK_CLASSES['target'])
    assert all(1 <= k <= 150 for k in TASK_CLASSES[task])


def test_deterministic_for_a_seed(tmp_path):
    a = make_ade20k(str(tmp_path / 'a'), num_train=4, num_val=2, seed=3)
    b = make_ade20k(str(tmp_path / 'b'), num_train=4, num_val=2, seed=3)
    c = make_ade20k(str(tmp_path / 'c'), num_train=4, num_val=2, seed=4)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_tasks_differ_in_appearance(tmp_path):
    src = make_ade20k(str(tmp_path / 's'), num_train=2, num_val=0, task='source')
    tgt = make_ade20k(str(tmp_path / 't'), num_train=2, num_val=0, task='target')
    name = 'images/training/ADE_train_00000001.jpg'
    assert not np.array_equal(np.asarray(Image.open(osp.join(src, name))),
                              np.asarray(Image.open(osp.join(tgt, name))))


def test_rejects_unknown_task(tmp_path):
    with pytest.raises(ValueError, match='task must be one of'):
        make_ade20k(str(tmp_path), task='imagenet')


@pytest.mark.parametrize('task', ['source', 'target'])
def test_loads_through_mmseg_ade20k_dataset(tmp_path, task):
    root = make_ade20k(str(tmp_path), num_train=2, num_val=2, task=task)
    raw = np.asarray(Image.open(osp.join(root, 'annotations/validation/ADE_val_00000001.png')))

    # All 150 ADE classes: reduce_zero_label maps 0 -> 255 and k -> k - 1.
    full = ADE20KDataset(data_root=root, pipeline=PIPELINE,
                         data_prefix=dict(img_path='images/validation',
                                          seg_map_path='annotations/validation'))
    assert len(full) == 2
    sample = full[0]
    gt = sample['data_samples'].gt_sem_seg.data.numpy()[0]
    assert sample['inputs'].shape == (3, 64, 64)
    np.testing.assert_array_equal(gt, np.where(raw == 0, 255, raw.astype(np.int64) - 1))

    # The task's own 8 classes by name (as configs/study does): MMSeg's label map sends
    # them to 0..7 and everything else to 255.
    names = [ADE20KDataset.METAINFO['classes'][k - 1] for k in TASK_CLASSES[task]]
    subset = ADE20KDataset(data_root=root, pipeline=PIPELINE, metainfo=dict(classes=names),
                           data_prefix=dict(img_path='images/validation',
                                            seg_map_path='annotations/validation'))
    gt = subset[0]['data_samples'].gt_sem_seg.data.numpy()[0]
    expected = np.full(raw.shape, 255)
    for new_id, ade_id in enumerate(TASK_CLASSES[task]):
        expected[raw == ade_id] = new_id
    np.testing.assert_array_equal(gt, expected)
    assert set(np.unique(gt).tolist()) <= set(range(8)) | {255}
