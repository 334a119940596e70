"""mmcv-lite stand-in for MMSeg's compiled-op imports, and safe checkpoint loading."""
import io
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from mmengine.logging import HistoryBuffer, MessageHub

from vpt_seg import patches as compat


@pytest.mark.skipif(compat.MMCV_FULL, reason='the stand-in is only installed with mmcv-lite')
def test_mmcv_lite_stand_in_serves_pure_python_ops_and_refuses_compiled_ones():
    from mmcv.ops import point_sample, sigmoid_focal_loss
    feats = torch.randn(2, 3, 8, 8)
    points = torch.rand(2, 5, 2)
    expected = F.grid_sample(feats, (2 * points - 1).unsqueeze(2), align_corners=False)
    torch.testing.assert_close(point_sample(feats, points), expected.squeeze(3))
    with pytest.raises(RuntimeError, match='needs the compiled mmcv ops'):
        sigmoid_focal_loss(torch.randn(2, 3), torch.tensor([0, 1]), 2.0, 0.25, None, 'none')


#: A script's first lines: a stand-in for the compiled extension, so mmcv is "full".
FAKE_FULL_MMCV = '''
import sys, types
ext = types.ModuleType('mmcv._ext')
def op(name):
    if name.startswith('_'):
        raise AttributeError(name)
    return lambda *args, **kwargs: None
ext.__getattr__ = op
sys.modules['mmcv._ext'] = ext
'''


def test_full_mmcv_is_used_as_is_when_its_compiled_ops_import():
    """With a compiled ``mmcv._ext`` present, vpt_seg must not touch ``mmcv.ops``."""
    script = FAKE_FULL_MMCV + textwrap.dedent('''
        import vpt_seg
        from vpt_seg import patches as compat
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


def _run(script, *args, env=None):
    return subprocess.run([sys.executable, '-W', 'ignore', '-c', textwrap.dedent(script), *args],
                          capture_output=True, text=True, env=env)


def test_import_order_does_not_matter_with_the_start_up_hook(tmp_path):
    """What pip installs (vpt_seg_mmcv_lite.pth) lets mmseg be imported before vpt_seg."""
    import os.path as osp
    import shutil
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    shutil.copy(osp.join(root, 'vpt_seg', 'mmcv_lite.pth'), tmp_path / 'vpt_seg_mmcv_lite.pth')
    hooked = _run('''
        import site, sys
        site.addsitedir(sys.argv[1])               # processes the .pth, as at start-up
        from mmseg.apis import init_model, MMSegInferencer
        import mmcv.ops
        from vpt_seg import patches as compat
        assert compat.MMCV_FULL is (not getattr(mmcv.ops, '__vpt_seg_shim__', False))
        print('mmseg first ok', compat.MMCV_FULL)
    ''', str(tmp_path))
    assert hooked.returncode == 0, hooked.stderr[-2000:]
    assert 'mmseg first ok' in hooked.stdout
    if not compat.MMCV_FULL:  # without the hook, mmcv-lite fails exactly as reported
        import os
        bare = _run('from mmseg.apis import init_model',
                    env=dict(os.environ, VPT_SEG_NO_MMCV_HOOK='1'))  # even if pip put it in
        assert bare.returncode != 0 and "No module named 'mmcv._ext'" in bare.stderr


def test_start_up_hook_steps_aside_for_a_full_mmcv(tmp_path):
    import os.path as osp
    import shutil
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    shutil.copy(osp.join(root, 'vpt_seg', 'mmcv_lite.pth'), tmp_path / 'vpt_seg_mmcv_lite.pth')
    out = _run(FAKE_FULL_MMCV + textwrap.dedent('''
        import site
        site.addsitedir(sys.argv[1])             # the start-up hook, as pip installs it
        assert 'vpt_seg' not in sys.modules and 'torch' not in sys.modules
        import mmcv.ops
        assert not getattr(mmcv.ops, '__vpt_seg_shim__', False)
        assert mmcv.ops.__file__.endswith('mmcv/ops/__init__.py')
        print('full mmcv untouched')
    '''), str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'full mmcv untouched' in out.stdout


def test_flop_counter_counts_cpu_flash_attention():
    """Registered at import (patch 6): the benchmark counts attention's FLOPs on CPU."""
    from torch.utils import flop_counter
    fwd = getattr(torch.ops.aten, '_scaled_dot_product_flash_attention_for_cpu', None)
    if fwd is None:
        pytest.skip('this torch has no CPU flash-attention kernel to count')
    assert fwd in flop_counter.flop_registry
    q, k, v = (torch.randn(1, 2, 16, 8, requires_grad=True) for _ in range(3))
    with flop_counter.FlopCounterMode(display=False) as counter:
        out = F.scaled_dot_product_attention(q, k, v)
    forward = counter.get_total_flops()
    assert forward == flop_counter.sdpa_flop_count(q.shape, k.shape, v.shape)
    with flop_counter.FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == flop_counter.sdpa_backward_flop_count(
        out.shape, q.shape, k.shape, v.shape) > forward
