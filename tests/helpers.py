"""What many test modules share: the repository root, a tiny MMSeg-layout ViT, tiny
pretrained files (a ViT's, a CLIP's), trained-like tasks (built, initialised, then moved
as training would move them, without training) and tools run as commands without the
start-up cost (:func:`run_tool`)."""
import os
import os.path as osp

import torch
from mmseg.registry import MODELS

#: The repository root (configs/, tools/, docs/).
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

#: A tiny MMSeg ``VisionTransformer`` / ``PromptedVisionTransformer``: 32x32 images,
#: 4x4 patches of width 32, 4 layers, LayerNorm eps as timm's ViTs.
ARCH = dict(img_size=(32, 32), patch_size=8, embed_dims=32, num_layers=4, num_heads=4,
            patch_bias=True, norm_cfg=dict(type='LN', eps=1e-6))


def tiny_pretrained(path: str, arch: dict = ARCH, seed: int = 0, **kwargs) -> str:
    """A random MMSeg ViT of ``arch`` saved as a pretrained file at ``path``; returns it."""
    from mmseg.models.backbones import VisionTransformer
    torch.manual_seed(seed)
    vit = VisionTransformer(**arch, **kwargs)
    vit.init_weights()
    torch.save(vit.state_dict(), path)
    return path


def perturb_tuned(model: torch.nn.Module, scale: float = 0.1, batchnorm: bool = False):
    """Move every tuned weight by ``scale * randn`` (and with ``batchnorm`` every BN
    layer's running statistics), in module order: a task as training leaves it."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))
        if batchnorm:
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.running_mean.normal_()
                    m.running_var.uniform_(0.5, 2)


def trained_like(model_cfg, seed=None, scale: float = 0.1, batchnorm: bool = False):
    """Build ``model_cfg`` (after ``torch.manual_seed(seed)`` unless None), initialise it
    (its pretrained file included) and :func:`perturb_tuned` it."""
    if seed is not None:
        torch.manual_seed(seed)
    model = MODELS.build(model_cfg)
    model.init_weights()
    perturb_tuned(model, scale, batchnorm)
    return model


def tiny_clip():
    """A tiny CLIP as open_clip builds it (real tokenizer vocabulary, OpenAI's keys)."""
    import open_clip
    torch.manual_seed(7)
    model = open_clip.create_model(
        'ViT-B-16', pretrained=None, quick_gelu=True, embed_dim=32,
        vision_cfg=dict(image_size=32, layers=1, width=64, patch_size=16),
        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=1))
    with torch.no_grad():  # non-trivial norms, biases and temperature
        for name, p in model.named_parameters():
            if name.endswith('bias') or 'ln' in name:
                p.add_(0.1 * torch.randn_like(p))
        model.logit_scale.fill_(2.5)
    return model.eval()


def tiny_clip_file(folder: str):
    """:func:`tiny_clip` saved as ``folder/open_clip_model.safetensors`` (open_clip's
    keys, as a published CLIP file); returns ``(path, model)``."""
    from safetensors.torch import save_file
    model = tiny_clip()
    path = osp.join(str(folder), 'open_clip_model.safetensors')
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path, model


def tool(name: str):
    """``tools/NAME.py`` as a module, to call its ``main()`` in this process."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, osp.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(tool: str, *args, cwd: str = ROOT, timeout: float = 900):
    """``python tools/TOOL ARGS`` (run from ``cwd``) in a forked child of this process
    (:class:`ForkedPopen`): the same exit code, stdout and stderr as that command, without
    paying the interpreter's and the libraries' start-up again (seconds a call on 2 cores).

    Returns:
        subprocess.CompletedProcess: ``returncode`` (negative: the signal that ended it),
        ``stdout`` and ``stderr`` as text.
    """
    import subprocess
    import sys
    import tempfile
    cmd = [sys.executable, osp.join(ROOT, 'tools', tool), *map(str, args)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = ForkedPopen(cmd, stdout=out, stderr=err, cwd=cwd)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read().decode('utf-8', errors='replace'))
    return subprocess.CompletedProcess(cmd, proc.returncode, *texts)


class ForkedPopen:
    """``subprocess.Popen([sys.executable, SCRIPT, *ARGS], ...)`` run in a forked child of
    this process: the script starts without the interpreter's and the libraries' start-up
    (what this process imported and registered is already there).

    Otherwise the child starts as a fresh interpreter would: the script runs as
    ``__main__`` with ``sys.argv`` and ``sys.path[0]`` as Python sets them, in ``cwd``,
    with ``env`` (torch's thread count from its ``OMP_NUM_THREADS``, as torch reads it at
    start-up); stdout and stderr go to the given files; MMEngine's loggers, message hubs
    and visualizers are gone (they hold the streams and work dirs of this process's
    runs); warnings print to stderr under Python's default filters; an uncaught exception
    prints its traceback and exits 1, a ``SystemExit`` exits as the interpreter would, and
    the work-dir locks the run took are released as at interpreter exit. Tests about the
    process itself (the environment a tool starts with, two runs at once, a user's
    command line) start a real subprocess.

    Args:
        args: ``[sys.executable, script, *arguments]``.
        stdout: A file (with ``fileno``), or None for this process's.
        stderr: A file, ``subprocess.STDOUT`` or None.
        env: The child's environment (None: this one).
        cwd: Its working directory (None: this one).
    """

    def __init__(self, args, stdout=None, stderr=None, env=None, cwd=None):
        import subprocess
        import sys
        if len(args) < 2 or args[0] != sys.executable:
            raise ValueError(f'{args}: ForkedPopen runs [sys.executable, script, ...] only')
        out_fd = 1 if stdout is None else stdout.fileno()
        err_fd = out_fd if stderr == subprocess.STDOUT else \
            2 if stderr is None else stderr.fileno()
        self.args, self.returncode, self._popen = list(args), None, None
        if torch.get_num_threads() > 1:
            # A forked child of a process whose OpenMP team is up hangs in its first
            # parallel region (GNU libgomp has no fork handler): start a real one.
            self._popen = subprocess.Popen(self.args, stdout=stdout, stderr=stderr, env=env,
                                           cwd=cwd)
            self.pid = self._popen.pid
            return
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into the caller
            code = 1
            try:
                code = _script_child(self.args[1:], cwd, env, out_fd, err_fd)
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                os._exit(code)

    def poll(self):
        if self._popen is not None:
            self.returncode = self._popen.poll()
        elif self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None):
        import subprocess
        import time
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.02)
        return self.returncode

    def kill(self):
        if self.poll() is None:
            os.kill(self.pid, 9)


def _script_child(argv: list, cwd, env, out_fd: int, err_fd: int) -> int:
    """The child of :class:`ForkedPopen`: run the script, return its exit code."""
    import runpy
    import sys
    import traceback
    import warnings

    from mmengine.logging import MessageHub, MMLogger
    from mmengine.visualization import Visualizer

    from vpt_seg.engine import lock

    if cwd is not None:
        os.chdir(cwd)
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    if 'OMP_NUM_THREADS' in os.environ:
        torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
    os.dup2(out_fd, 1)
    if err_fd != 2:
        os.dup2(err_fd, 2)
    sys.stdout = open(1, 'w', buffering=1, closefd=False)
    sys.stderr = open(2, 'w', buffering=1, closefd=False)
    held = set(lock._HELD)
    code = 1
    try:
        def clear(cls):
            cls._instance_dict.clear()
            for sub in cls.__subclasses__():
                clear(sub)
        for cls in (MMLogger, MessageHub, Visualizer):
            clear(cls)
        warnings.resetwarnings()  # Python's defaults, not pytest's recording
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                         ResourceWarning):
            warnings.simplefilter('ignore', category)
        warnings.showwarning = lambda message, category, filename, lineno, file=None, \
            line=None: sys.stderr.write(warnings.formatwarning(message, category, filename,
                                                               lineno, line))
        torch.use_deterministic_algorithms(False)
        sys.argv = list(argv)
        sys.path.insert(0, osp.dirname(osp.abspath(argv[0])))
        try:
            runpy.run_path(argv[0], run_name='__main__')
            code = 0
        except SystemExit as exit_:
            if exit_.code is None or isinstance(exit_.code, int):
                code = exit_.code or 0
            else:
                print(exit_.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
    finally:
        for path, held_lock in list(lock._HELD.items()):  # as at interpreter exit
            if path not in held:
                held_lock.release()
        sys.stdout.flush()
        sys.stderr.flush()
    return code
