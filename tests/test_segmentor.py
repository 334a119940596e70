"""BoundedEncoderDecoder / BoundedSegTTAModel: MMSeg's label maps to the pixel below the
logits budget, the same labels computed in bands of rows above it."""
import pytest
import torch
import torch.nn.functional as F

import vpt_seg  # noqa: F401  (before mmseg)

# isort: split
from mmengine.config import ConfigDict
from mmengine.registry import init_default_scope
from mmseg.models.segmentors import SegTTAModel
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from vpt_seg.models import segmentor
from vpt_seg.models.segmentor import resize_rows, resized_labels

init_default_scope('mmseg')


def _model(kind, num_classes=5, align_corners=False, **kw):
    return MODELS.build(dict(
        type=kind, **kw,
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[100., 110., 120.],
                               std=[50., 60., 70.], bgr_to_rgb=True),
        backbone=dict(type='VisionTransformer', img_size=(32, 32), patch_size=8,
                      embed_dims=16, num_layers=2, num_heads=2),
        decode_head=dict(type='SETRUPHead', in_channels=16, channels=8, in_index=-1,
                         num_classes=num_classes, num_convs=1, up_scale=2, kernel_size=3,
                         norm_cfg=dict(type='BN'), align_corners=align_corners,
                         dropout_ratio=0, loss_decode=dict(type='CrossEntropyLoss')),
        test_cfg=ConfigDict(mode='whole'))).eval()


def _samples(ori_shape, n=1, flip=False, padding=(0, 0, 0, 0)):
    meta = dict(ori_shape=ori_shape, img_shape=ori_shape, padding_size=list(padding),
                flip=flip, flip_direction='horizontal' if flip else None, img_path='x.jpg')
    return [SegDataSample(metainfo=dict(meta)) for _ in range(n)]


def _near_tie(scores, eps=1e-4):
    """``(H, W)``: pixels whose two best classes of ``(C, H, W)`` scores are within
    float rounding of each other (where the argmax may flip either way)."""
    top2 = scores.topk(2, dim=0).values
    return (top2[0] - top2[1]) < eps


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('src,size,step', [((8, 8), (37, 53), 5), ((16, 24), (2000, 1500), 97),
                                           ((64, 48), (47, 31), 4), ((6, 7), (6, 7), 2)])
def test_bands_of_rows_are_the_full_resize(src, size, step, align_corners):
    torch.manual_seed(0)
    x = torch.randn(4, *src)
    full = F.interpolate(x[None], size=size, mode='bilinear', align_corners=align_corners)[0]
    bands = torch.cat([resize_rows(x, size, (r, min(r + step, size[0])), align_corners)
                       for r in range(0, size[0], step)], dim=1)
    assert bands.shape == full.shape
    torch.testing.assert_close(bands, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('flip,padding', [(False, (0, 0, 0, 0)), (True, (0, 3, 0, 2))])
@pytest.mark.parametrize('align_corners', [False, True])
def test_below_the_budget_the_results_are_mmsegs_to_the_pixel(flip, padding, align_corners):
    torch.manual_seed(0)
    ours = _model('BoundedEncoderDecoder', align_corners=align_corners)
    ref = _model('EncoderDecoder', align_corners=align_corners)
    logits = torch.randn(2, 5, 32, 32)
    got = ours.postprocess_result(logits, _samples((61, 45), 2, flip, padding))
    want = ref.postprocess_result(logits, _samples((61, 45), 2, flip, padding))
    for g, w in zip(got, want):
        assert torch.equal(g.pred_sem_seg.data, w.pred_sem_seg.data)
        assert torch.equal(g.seg_logits.data, w.seg_logits.data)
        assert 'seg_logits_resized' not in g.metainfo


@pytest.mark.parametrize('flip,padding', [(False, (0, 0, 0, 0)), (True, (0, 3, 0, 2))])
def test_a_big_image_is_labelled_in_bands_like_the_untiled_computation(
        monkeypatch, flip, padding):
    """2000x1500 from 32x32 logits: the labels of MMSeg's full-resolution resize, while
    no band of resized logits is larger than the budget."""
    torch.manual_seed(0)
    budget = 5 * 1500 * 4 * 64                                   # 64 rows of 5 classes
    ours = _model('BoundedEncoderDecoder', logits_budget=budget)
    ref = _model('EncoderDecoder')
    shapes = []

    def recording(x, size, rows, align_corners):
        out = resize_rows(x, size, rows, align_corners)
        shapes.append(tuple(out.shape))
        return out
    monkeypatch.setattr(segmentor, 'resize_rows', recording)

    logits = torch.randn(1, 5, 32, 32)
    (got, ) = ours.postprocess_result(logits, _samples((2000, 1500), 1, flip, padding))
    (want, ) = ref.postprocess_result(logits, _samples((2000, 1500), 1, flip, padding))
    assert shapes and sum(s[1] for s in shapes) == 2000          # every row, in bands
    assert max(s[0] * s[1] * s[2] * 4 for s in shapes) <= budget
    assert got.pred_sem_seg.shape == want.pred_sem_seg.shape == (2000, 1500)
    labels, expected = got.pred_sem_seg.data[0], want.pred_sem_seg.data[0]
    tie = _near_tie(want.seg_logits.data)
    assert ((labels == expected) | tie).all()
    assert (labels != expected).float().mean() < 1e-4
    # seg_logits stay at the model's resolution, unpadded and unflipped
    assert got.metainfo['seg_logits_resized'] is False
    small = got.seg_logits.data
    assert small.shape == (5, 32 - padding[3], 32 - padding[1])
    torch.testing.assert_close(F.interpolate(small[None], size=(2000, 1500), mode='bilinear',
                                             align_corners=False)[0], want.seg_logits.data)


def test_predict_of_a_big_image_through_the_model():
    """predict() end to end: a 32x32 input whose original image was 1500x2000."""
    torch.manual_seed(0)
    ours = _model('BoundedEncoderDecoder', logits_budget=5 * 2000 * 4 * 50)
    ref = _model('EncoderDecoder')
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        (got, ) = ours.predict(x, _samples((1500, 2000)))
        (want, ) = ref.predict(x, _samples((1500, 2000)))
    tie = _near_tie(want.seg_logits.data)
    assert ((got.pred_sem_seg.data[0] == want.pred_sem_seg.data[0]) | tie).all()
    assert len(want.pred_sem_seg.data.unique()) > 1


def test_one_class_heads_threshold_the_sigmoid_in_bands():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 8)
    full = F.interpolate(x[None], size=(300, 200), mode='bilinear', align_corners=False)[0]
    want = (full.sigmoid() > 0.3).float()
    got = resized_labels(x, (300, 200), False, budget=200 * 4 * 7)
    assert got.dtype == want.dtype and got.shape == (1, 300, 200)
    near = (full.sigmoid() - 0.3).abs() < 1e-5
    assert ((got == want) | near).all()


def test_tta_merges_big_images_in_bands_like_mmseg():
    """Two augmentations (one flipped) of a 2000x1500 image: the mean softmax's argmax."""
    torch.manual_seed(0)
    budget = 5 * 1500 * 4 * 40
    ours = MODELS.build(dict(type='BoundedSegTTAModel', module=_model(
        'BoundedEncoderDecoder', logits_budget=budget)))
    ref = SegTTAModel(module=_model('EncoderDecoder'))
    logits = [torch.randn(1, 5, 32, 32), torch.randn(1, 5, 24, 24)]

    def augmented(model):
        return [model.module.postprocess_result(lg, _samples((2000, 1500), 1, flip=f))[0]
                for lg, f in zip(logits, (False, True))]
    samples = augmented(ours)
    assert all(s.metainfo['seg_logits_resized'] is False for s in samples)
    (got, ) = ours.merge_preds([samples])
    want_samples = augmented(ref)
    (want, ) = ref.merge_preds([want_samples])
    tie = _near_tie(sum(s.seg_logits.data.softmax(0) for s in want_samples) / 2, 1e-5)
    labels = got.pred_sem_seg.data.reshape(2000, 1500)
    assert ((labels == want.pred_sem_seg.data.reshape(2000, 1500)) | tie).all()
    assert got.img_path == 'x.jpg'


def test_below_the_budget_tta_is_mmsegs():
    torch.manual_seed(0)
    ours = MODELS.build(dict(type='BoundedSegTTAModel', module=_model('BoundedEncoderDecoder')))
    ref = SegTTAModel(module=_model('EncoderDecoder'))
    logits = [torch.randn(1, 5, 32, 32), torch.randn(1, 5, 24, 24)]
    merged = [m.merge_preds([[m.module.postprocess_result(lg, _samples((50, 40)))[0]
                              for lg in logits]])[0] for m in (ours, ref)]
    assert torch.equal(merged[0].pred_sem_seg.data, merged[1].pred_sem_seg.data)


def test_a_budget_that_is_not_positive_is_refused():
    with pytest.raises(ValueError, match='logits_budget'):
        _model('BoundedEncoderDecoder', logits_budget=0)
