"""mmcv-lite stand-in for MMSeg's compiled-op imports, and safe checkpoint loading."""
import io
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from mmengine.logging import HistoryBuffer, MessageHub

from vpt_seg import compat


@pytest.mark.skipif(compat.MMCV_FULL, reason='the stand-in is only installed with mmcv-lite')
def test_mmcv_lite_stand_in_serves_pure_python_ops_and_refuses_compiled_ones():
    from mmcv.ops import point_sample, sigmoid_focal_loss
    feats = torch.randn(2, 3, 8, 8)
    points = torch.rand(2, 5, 2)
    expected = F.grid_sample(feats, (2 * points - 1).unsqueeze(2), align_corners=False)
    torch.testing.assert_close(point_sample(feats, points), expected.squeeze(3))
    with pytest.raises(RuntimeError, match='needs the compiled mmcv ops'):
        sigmoid_focal_loss(torch.randn(2, 3), torch.tensor([0, 1]), 2.0, 0.25, None, 'none')


def test_full_mmcv_is_used_as_is_when_its_compiled_ops_import():
    """With a compiled ``mmcv._ext`` present, vpt_seg must not touch ``mmcv.ops``."""
    script = textwrap.dedent('''
        import sys, types
        ext = types.ModuleType('mmcv._ext')
        def op(name):
            if name.startswith('_'):
                raise AttributeError(name)
            return lambda *args, **kwargs: None
        ext.__getattr__ = op
        sys.modules['mmcv._ext'] = ext          # stands for the compiled extension
        import vpt_seg
        from vpt_seg import compat
        import mmcv.ops
        assert compat.MMCV_FULL is True
        assert not getattr(mmcv.ops, '__vpt_seg_shim__', False)
        assert mmcv.ops.__file__.endswith('mmcv/ops/__init__.py')
        import mmseg.models
        print('full mmcv ok')
    ''')
    out = subprocess.run([sys.executable, '-W', 'ignore', '-c', script],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'full mmcv ok' in out.stdout


def test_message_hub_state_loads_with_torch_safe_loader():
    hub = MessageHub.get_instance('compat-test')
    for i in range(3):
        hub.update_scalar('train/loss', 1.0 / (i + 1))
    hub.update_info('iter', 3)
    buffer = io.BytesIO()
    torch.save({'message_hub': hub.state_dict(), 'meta': {'seed': 0}}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)  # what torch >= 2.6 does by default
    restored = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(restored, HistoryBuffer)
    assert restored.mean() == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert restored.current() == pytest.approx(1 / 3)
