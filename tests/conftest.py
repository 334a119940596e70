"""Shared fixtures: tiny models on the device named by $VPT_SEG_TEST_DEVICE (CPU default).

Thread policy: the tests, and the tool subprocesses they start (which inherit this
environment), run torch with $VPT_SEG_TEST_THREADS intra-op threads, 1 by default. Tiny
models gain nothing from more, a busy machine loses many times over when every process
takes one thread per core, and the end-to-end results then do not depend on the machine's
core count (the float order of reductions does)."""
import os

THREADS = int(os.environ.get('VPT_SEG_TEST_THREADS', '1'))
for _var in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ[_var] = str(THREADS)  # before torch starts, and for every subprocess

import pytest  # noqa: E402
import torch  # noqa: E402

import vpt_seg  # noqa: F401,E402  (patches before any mmseg import)

# isort: split
from mmseg.utils import register_all_modules  # noqa: E402

torch.set_num_threads(THREADS)
register_all_modules(init_default_scope=True)  # what mmseg's own tools do

DEVICE = torch.device(os.environ.get('VPT_SEG_TEST_DEVICE', 'cpu'))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(scope='module')
def clip_file(tmp_path_factory):
    """``(path, model)``: :func:`helpers.tiny_clip_file` in a folder of its own, one per
    test module."""
    from helpers import tiny_clip_file
    return tiny_clip_file(tmp_path_factory.mktemp('clip'))


class FileServer:
    """Files of a folder over http on 127.0.0.1 (a port of its own), in a thread; every
    request path is recorded in ``requests``."""

    def __init__(self, root):
        import functools
        import http.server
        import threading
        self.root, self.requests = root, []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ('127.0.0.1', 0), functools.partial(Handler, directory=str(root)))
        self.httpd.timeout = 10
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs=dict(poll_interval=0.05), daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f'http://127.0.0.1:{self.httpd.server_address[1]}/{name}'

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def file_server(tmp_path, monkeypatch):
    """A :class:`FileServer` of ``tmp_path/'served'``, stopped after the test; torch.hub's
    cache (where downloads go) is ``tmp_path/'hub'``, also for tool subprocesses
    (``TORCH_HOME``)."""
    root = tmp_path / 'served'
    root.mkdir()
    hub = tmp_path / 'hub'
    before = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    server = FileServer(root)
    try:
        yield server
    finally:
        server.stop()
        torch.hub.set_dir(before)


def payload_pickle(path, marker):
    """A torch file whose unpickling runs ``__reduce__``: it writes ``marker``."""
    class Payload:
        def __reduce__(self):
            return (exec, (f'open({str(marker)!r}, "w").write("ran")',))

    torch.save({'state_dict': {'w': torch.zeros(1)}, 'extra': Payload()}, path)
    return path
