"""Tool scripts run as forked children of this process: ``python tools/X.py ARGS`` without
the interpreter's and the libraries' start-up (about 10 s of CPU a run on 2 cores: Python,
torch, MMEngine, MMSeg and the registries), for the study's many short runs and the tests.

A fork copies the parent as it is, so the parent must not be inside torch when it forks:
:data:`FORK_LOCK` is held around every fork, and code that runs torch in a process that
also forks tool runs from other threads holds it around that work
(:func:`torch_in_this_process`). A parent whose OpenMP team is up (more than one torch
thread) starts real subprocesses instead: GNU libgomp has no fork handler, and a child of
such a parent hangs in its first parallel region.
"""
import os
import os.path as osp
import threading
from contextlib import contextmanager

import torch

__all__ = ['ForkedPopen', 'FORK_LOCK', 'fork_call', 'torch_in_this_process', 'warm_tool_imports']

#: Held while forking, and by this process's own torch work while others may fork.
FORK_LOCK = threading.RLock()


@contextmanager
def torch_in_this_process():
    """Hold :data:`FORK_LOCK` around torch work of this process (building a model,
    training in-process) while other threads may fork tool runs: a child forked in the
    middle of a torch operation could inherit a lock that no thread will release."""
    with FORK_LOCK:
        yield


def warm_tool_imports(*scripts: str):
    """Run the imports of tool scripts (``tools/train.py``, ...) in this process once, so
    that their forked runs start with everything loaded: each script is loaded as a module
    that is not ``__main__``, so its imports run and its ``main()`` does not."""
    import importlib.util
    for path in scripts:
        name = '_warm_' + osp.splitext(osp.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


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
        with FORK_LOCK:
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

    from . import lock

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


def fork_call(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a forked child of this process; returns its result, which
    must be JSON data (the child sends it back through a pipe).

    For torch work of this process while other threads fork tool runs: the child holds no
    lock of theirs, and the parent's threads go on forking meanwhile. A parent with more
    than one torch thread runs ``fn`` here instead (holding :data:`FORK_LOCK`).

    Raises:
        RuntimeError: ``fn`` raised (its traceback is in the message) or the child died.
    """
    import json
    import sys
    if torch.get_num_threads() > 1:
        with FORK_LOCK:
            return fn(*args, **kwargs)
    read_end, write_end = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    with FORK_LOCK:
        pid = os.fork()
    if pid == 0:  # the child: never returns into the caller
        os.close(read_end)
        code = 1
        try:
            reply = json.dumps(dict(result=fn(*args, **kwargs)))
            code = 0
        except BaseException:
            import traceback
            reply = json.dumps(dict(error=traceback.format_exc()))
        finally:
            try:
                with os.fdopen(write_end, 'w') as pipe:
                    pipe.write(reply)
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        reply = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not reply:
        raise RuntimeError(f'{getattr(fn, "__name__", fn)} in a forked child ended without '
                           f'a result (exit status {os.waitstatus_to_exitcode(status)})')
    reply = json.loads(reply)
    if 'error' in reply:
        raise RuntimeError(f'{getattr(fn, "__name__", fn)} failed in a forked child:\n'
                           f'{reply["error"]}')
    return reply['result']
