"""Multi-label image tags: ADE20KTagsDataset, multi-hot packing, the BCE head, the
multi-label VPTClassifier, mAP/F1, and a tools/train.py run on generated data."""
import math
import os
import os.path as osp
import re
import shutil

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vpt_seg  # noqa: F401  (before mmseg)

# isort: split
import helpers
from helpers import ROOT, run_tool
from mmengine.registry import init_default_scope
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.registry import MODELS

from vpt_seg.datasets import ADE20KTagsDataset, PackClsInputs, make_ade20k
from vpt_seg.datasets.ade_tags import label_lut
from vpt_seg.evaluation import MeanAveragePrecision, average_precision

init_default_scope('mmseg')
DEMO_CONFIG = osp.join(ROOT, 'configs', 'demo', 'vpt_cls_tiny_ade_tags.py')
# The synthetic target task draws ADE ids 20..27; as a class subset they become 0..7.
CLASSES = ('chair', 'car', 'water', 'painting', 'sofa', 'shelf', 'house', 'sea')
ADE_IDS = np.arange(20, 28)
ARCH = dict(helpers.ARCH, num_layers=2)
SPLITS = {'train': 'training', 'val': 'validation'}


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return make_ade20k(str(tmp_path_factory.mktemp('ade_tags')), num_train=6, num_val=2,
                       task='target')


def tags_dataset(root, split='train', classes=CLASSES, **kw):
    folder = SPLITS[split]
    metainfo = None if classes is None else dict(classes=classes)
    return ADE20KTagsDataset(
        data_root=root, metainfo=metainfo,
        data_prefix=dict(img_path=f'images/{folder}', seg_map_path=f'annotations/{folder}'),
        pipeline=[dict(type='LoadImageFromFile'), dict(type='RandomFlip', prob=0.5),
                  dict(type='PackClsInputs')], **kw)


def expected_tags(png, min_fraction=0.0):
    """Tags from the raw ADE ids, without MMSeg: a class of the subset is tagged when its
    pixels are more than ``min_fraction`` of the pixels of any subset class."""
    ann = np.array(Image.open(png))
    counts = np.array([(ann == i).sum() for i in ADE_IDS])
    return (counts > min_fraction * counts.sum()).astype(np.uint8)


# ---------------------------------------------------------------------- dataset
@pytest.mark.parametrize('split', ['train', 'val'])
def test_tags_are_the_classes_in_each_annotation(data_root, split):
    ds = tags_dataset(data_root, split)
    assert len(ds) == {'train': 6, 'val': 2}[split]
    assert ds.metainfo['classes'] == CLASSES
    tags = []
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        assert info['gt_label'].dtype == np.uint8 and info['gt_label'].shape == (8,)
        np.testing.assert_array_equal(info['gt_label'], expected_tags(info['seg_map_path']))
        tags.append(info['gt_label'])
    tags = np.stack(tags)
    assert 0 < tags.sum() < tags.size  # some classes present, some absent in each split
    item = ds[0]
    assert item['data_samples'].gt_label.dtype == torch.float32
    assert torch.equal(item['data_samples'].gt_label, torch.from_numpy(tags[0]).float())


def test_all_150_classes_without_a_subset(data_root):
    ds = tags_dataset(data_root, classes=None)
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        ann = np.array(Image.open(info['seg_map_path']))
        present = sorted(set(np.unique(ann).tolist()) - {0})              # 0 is "other"
        assert info['gt_label'].shape == (150,)
        assert np.flatnonzero(info['gt_label']).tolist() == [v - 1 for v in present]


@pytest.mark.parametrize('classes', [None, CLASSES, ('sea', 'wall', 'chair')])
def test_label_mapping_is_mmsegs_load_annotations(tmp_path, classes):
    """Every uint8 value maps as LoadAnnotations maps it for the same dataset."""
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    path = str(tmp_path / 'all.png')
    Image.fromarray(values).save(path)
    label_map = ADE20KTagsDataset.get_label_map(classes)
    results = dict(seg_map_path=path, reduce_zero_label=True, label_map=label_map,
                   seg_fields=[])
    ours = label_lut(True, label_map)[values]
    theirs = LoadAnnotations()(results)['gt_seg_map']  # reduce_zero_label from results
    np.testing.assert_array_equal(ours, theirs)
    if classes is not None:  # ('sea', 'wall', 'chair'): ADE 27 -> 0, 1 -> 1, 20 -> 2
        assert (ours[values == 0] == 255).all() and (ours[values == 2] == 255).all()
        if classes[0] == 'sea':
            assert ours[values == 27].tolist() == [0] and ours[values == 20].tolist() == [2]


def test_min_fraction_drops_small_classes(data_root):
    full = tags_dataset(data_root)
    some = tags_dataset(data_root, min_fraction=0.1)
    dropped = 0
    for i in range(len(full)):
        info = some.get_data_info(i)
        np.testing.assert_array_equal(info['gt_label'],
                                      expected_tags(info['seg_map_path'], 0.1))
        a, b = full.get_data_info(i)['gt_label'], info['gt_label']
        assert (b <= a).all()
        dropped += int(a.sum() - b.sum())
    assert dropped > 0  # the generated images have classes under 10% of their pixels
    with pytest.raises(ValueError, match=r'min_fraction must be in \[0, 1\)'):
        tags_dataset(data_root, min_fraction=1.0)


def test_missing_or_broken_annotation_is_a_clear_error(data_root, tmp_path):
    root = shutil.copytree(data_root, str(tmp_path / 'ADEChallengeData2016'))
    ann = osp.join(root, 'annotations', 'training', 'ADE_train_00000003.png')
    os.remove(ann)
    with pytest.raises(FileNotFoundError, match='ADE_train_00000003.png'):
        tags_dataset(root)
    with open(ann, 'wb') as f:
        f.write(b'not a png')
    with pytest.raises(ValueError, match='annotation file .*ADE_train_00000003.png.* cannot '
                       'be read: its header is not that of an image format'):
        tags_dataset(root)
    from bad_images import png_bomb  # 12000x12000 declared: refused from its header
    png_bomb(ann)
    with pytest.raises(ValueError, match="annotation file .*ADE_train_00000003.png' declares "
                       r'12000x12000 pixels \(WxH: 144,000,000\) in its header, over the limit'):
        tags_dataset(root)
    cv2.imwrite(ann, np.full((8, 8), 300, np.uint16))  # would wrap to 44 as uint8
    with pytest.raises(ValueError, match='ADE_train_00000003.png.* is uint16 with values up '
                       'to 300'):
        tags_dataset(root)


# ---------------------------------------------------------------------- packing
def test_pack_cls_inputs_multi_hot_and_single_label():
    img = np.zeros((4, 6, 3), np.uint8)
    tags = np.array([0, 1, 1, 0, 1], np.uint8)
    packed = PackClsInputs()(dict(img=img, gt_label=tags))['data_samples'].gt_label
    assert packed.dtype == torch.float32 and packed.shape == (5,)
    assert packed.tolist() == [0., 1., 1., 0., 1.]
    single = PackClsInputs()(dict(img=img, gt_label=3))['data_samples'].gt_label
    assert single.dtype == torch.long and single.shape == () and int(single) == 3


# ---------------------------------------------------------------------- head loss
@pytest.mark.parametrize('head', ['LinearClsHead', 'MLPClsHead'])
def test_bce_loss_of_a_hand_example(head):
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.5, 0.0, -3.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])

    def bce(x, y):  # -[y log s(x) + (1 - y) log(1 - s(x))]
        s = 1 / (1 + math.exp(-x))
        return -(y * math.log(s) + (1 - y) * math.log(1 - s))

    by_hand = sum(bce(x, y) for x, y in zip(logits.flatten().tolist(),
                                             labels.flatten().tolist())) / 6
    m = MODELS.build(dict(type=head, in_channels=4, num_classes=3, multi_label=True,
                          loss_weight=2.0))
    loss = m.loss(logits, labels)['loss_cls']
    assert loss.item() == pytest.approx(2 * by_hand, rel=1e-6)
    torch.testing.assert_close(loss, 2 * F.binary_cross_entropy_with_logits(logits, labels))
    with pytest.raises(ValueError, match='shaped like the logits'):
        m.loss(logits, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match='label_smoothing'):
        MODELS.build(dict(type=head, in_channels=4, num_classes=3, multi_label=True,
                          label_smoothing=0.1))


# ---------------------------------------------------------------------- metrics
# Three classes, four samples. Class 0 ranks pos, neg, pos, neg: AP = (1/1 + 2/3) / 2.
# Class 1 ranks neg, pos, pos, neg: AP = (1/2 + 2/3) / 2. Class 2 has no positive: NaN.
SCORES = torch.tensor([[0.9, 0.8, 0.6], [0.7, 0.1, 0.2], [0.4, 0.6, 0.3], [0.2, 0.5, 0.1]])
LABELS = torch.tensor([[1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 1, 0]])


def test_average_precision_of_a_hand_example():
    ap = average_precision(SCORES, LABELS)
    assert ap.shape == (3,)
    assert ap[0].item() == pytest.approx(5 / 6) and ap[1].item() == pytest.approx(7 / 12)
    assert math.isnan(ap[2].item())
    # numpy in, and a perfect ranking has AP 1 whatever the scores
    assert average_precision(np.array([[3.], [2.], [1.]]), np.array([[1], [1], [0]])).item() == 1
    with pytest.raises(ValueError, match=r'\(N, K\)'):
        average_precision(SCORES, LABELS[:, :2])


def test_average_precision_matches_sklearn():
    metrics = pytest.importorskip('sklearn.metrics')
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(40, 5, generator=gen, dtype=torch.float64)
    labels = (torch.rand(40, 5, generator=gen) < 0.3).long()
    labels[0] = 1  # every class has a positive
    ours = average_precision(scores, labels)
    for k in range(5):
        ref = metrics.average_precision_score(labels[:, k].numpy(), scores[:, k].numpy())
        assert ours[k].item() == pytest.approx(ref)


def test_mean_average_precision_metric():
    metric = MeanAveragePrecision()
    metric.process(None, [dict(pred_score=s, gt_label=label.float())
                          for s, label in zip(SCORES, LABELS)])
    out = metric.compute_metrics(metric.results)
    assert out['mAP'] == pytest.approx((5 / 6 + 7 / 12) / 2 * 100)
    # at 0.5: class 0 predicts samples 0, 1 (TP 1, FP 1, FN 1) -> F1 = 2/4; class 1
    # predicts 0, 2 (TP 1, FP 1, FN 1) -> 2/4; class 2 predicts 0 with no positive -> 0
    assert out['F1'] == pytest.approx((0.5 + 0.5 + 0.0) / 3 * 100)
    assert MeanAveragePrecision.default_prefix == 'multi-label'
    with pytest.raises(ValueError, match='multi-hot gt_label'):
        metric.process(None, [dict(pred_score=SCORES[0], gt_label=torch.tensor(1))])


# ---------------------------------------------------------------------- classifier
def classifier(head='LinearClsHead', num_classes=8):
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='VPTClassifier',
        backbone=dict(type='PromptedVisionTransformer', num_prompts=4, **ARCH),
        head=dict(type=head, in_channels=32, num_classes=num_classes, multi_label=True)))
    model.init_weights()
    return model


@pytest.mark.parametrize('head', ['LinearClsHead', 'MLPClsHead'])
def test_multi_label_classifier_learns_tags_and_predicts_sigmoid(data_root, head):
    ds = tags_dataset(data_root)
    items = [ds[i] for i in range(len(ds))]
    model = classifier(head)
    data = model.data_preprocessor(dict(inputs=[it['inputs'] for it in items],
                                        data_samples=[it['data_samples'] for it in items]),
                                   True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        out = model(**data, mode='loss')
        opt.zero_grad()
        out['loss_cls'].backward()
        opt.step()
        losses.append(out['loss_cls'].item())
    assert losses[-1] < 0.8 * losses[0], losses
    labels = torch.stack([ds.gt_label for ds in data['data_samples']])
    model.eval()
    with torch.no_grad():
        out = model(**data, mode='loss')
        logits = model(data['inputs'], mode='tensor')                    # (6, 8)
        preds = model(**data, mode='predict')
    hits = (logits.sigmoid() > 0.5) == labels.bool()
    assert out['acc'].item() == pytest.approx(hits.float().mean().item() * 100)
    torch.testing.assert_close(out['loss_cls'],
                               F.binary_cross_entropy_with_logits(logits, labels))
    for pred, logit in zip(preds, logits):
        torch.testing.assert_close(pred.pred_score, logit.sigmoid())
        assert pred.pred_label.dtype == torch.long and pred.pred_label.shape == (8,)
        assert torch.equal(pred.pred_label, (logit.sigmoid() > 0.5).long())
        assert 'gt_label' in pred  # the data sample is filled in, not replaced


def test_postprocess_follows_the_head():
    """The scoring rule is the model's: softmax for a single-label head, sigmoid above 0.5
    for a multi-label one (tools/serve.py calls the same method)."""
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    single_model = MODELS.build(dict(
        type='VPTClassifier', backbone=dict(type='PromptedVisionTransformer', **ARCH),
        head=dict(type='LinearClsHead', in_channels=32, num_classes=3)))
    single = single_model.postprocess(logits)[0]
    torch.testing.assert_close(single.pred_score, logits[0].softmax(0))
    assert single.pred_label.shape == () and int(single.pred_label) == 1
    multi = classifier(num_classes=3).postprocess(logits)[0]
    torch.testing.assert_close(multi.pred_score, logits[0].sigmoid())
    assert multi.pred_label.tolist() == [0, 1, 1]  # sigmoid(0) = 0.5 is not above 0.5


# ---------------------------------------------------------------------- end to end
def test_train_tool_runs_tags_config_and_logs_map(data_root, tmp_path):
    work = tmp_path / 'work'
    options = [f'{loader}.dataset.data_root={data_root}'
               for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    proc = run_tool(  # the command, in a forked child (tests/helpers.py)
        'train.py', DEMO_CONFIG, '--work-dir', str(work), '--cfg-options', *options,
        'train_dataloader.batch_size=4', 'train_cfg.max_iters=10', 'train_cfg.val_interval=10',
        'default_hooks.checkpoint.interval=10', 'param_scheduler.0.end=10')
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout
    assert 'ADE20KTagsDataset: 6 images' in log and 'ADE20KTagsDataset: 2 images' in log
    found = re.findall(r'multi-label/mAP: ([\d.]+)\s+multi-label/F1: ([\d.]+)', log)
    assert found, log[-2000:]
    assert 0 < float(found[-1][0]) <= 100 and 0 <= float(found[-1][1]) <= 100
    # the whole ViT was trained; its checkpoint is a pretrained file for a prompted ViT
    ckpt = str(work / 'iter_10.pth')
    state = torch.load(ckpt, weights_only=False)['state_dict']
    vit = MODELS.build(dict(type='PromptedVisionTransformer', num_prompts=4,
                            **dict(ARCH, num_layers=4),
                            init_cfg=dict(type='Pretrained', checkpoint=ckpt)))
    vit.init_weights()
    for key in ('layers.3.ffn.layers.1.weight', 'patch_embed.projection.weight'):
        assert torch.equal(vit.get_parameter(key), state['backbone.' + key])
