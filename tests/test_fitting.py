"""Fitting MMSeg-named ViT weights to a backbone (vpt_seg.formats.fitting); the loading
paths that fit whole files are in test_weights.py."""
import pytest
import torch

from vpt_seg.formats import fitting as ckpt_lib


def test_resample_pos_embed_keeps_cls_apart():
    pos = torch.randn(1, 1 + 16, 8)
    new = ckpt_lib.resample_pos_embed(pos, (6, 2))
    assert new.shape == (1, 1 + 12, 8)
    torch.testing.assert_close(new[:, :1], pos[:, :1], atol=0, rtol=0)
    assert ckpt_lib.resample_pos_embed(pos, (4, 4)) is pos
    with pytest.raises(ValueError, match='square grid'):
        ckpt_lib.resample_pos_embed(torch.randn(1, 1 + 15, 8), (4, 4))
