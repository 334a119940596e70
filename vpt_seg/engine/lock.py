"""One training run per work dir: a lock file that dies with its process.

Two runs writing into one work dir overwrite each other's ``iter_N.pth``, rotate away each
other's checkpoints (``max_keep_ckpts``) and fight over ``last_checkpoint``; both exit 0.
:class:`WorkDirLock` makes the second one refuse, naming the run that holds the dir.

Design: ``WORK_DIR/train.lock`` holds the owner's pid, host and start time (JSON, for the
messages), and the owner holds an exclusive ``flock`` on it. The kernel drops a ``flock``
when its process ends however it ends, ``kill -9`` included, so a lock file left behind by
a dead run is never mistaken for a live one: the next run (``--resume``) takes it over,
with a note naming the run that left it. A lock file written on another host is not taken
over (its process cannot be checked from here, and ``flock`` may not reach across hosts):
the error says to delete it if that run is over. File systems without ``flock`` fall back
to the recorded pid, checked on this host.
"""
import atexit
import datetime
import errno
import json
import os
import os.path as osp
import socket
from typing import Dict, Optional

try:
    import fcntl
except ImportError:  # Windows: pid check only
    fcntl = None

__all__ = ['WorkDirLock', 'WorkDirLockedError', 'LOCK_NAME']

LOCK_NAME = 'train.lock'

# Locks this process holds, by path: a second run of this process into the same dir (an
# earlier Runner.train() that raised, so its after_run never came) reuses the file.
_HELD: Dict[str, 'WorkDirLock'] = {}


class WorkDirLockedError(RuntimeError):
    """Another training run holds the work dir."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _read(fd: int) -> Optional[dict]:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b''
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    try:
        owner = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _describe(owner: Optional[dict]) -> str:
    if not owner:
        return 'a run that left no details'
    return (f"pid {owner.get('pid')} on host {owner.get('host')!r}, started "
            f"{owner.get('started', '?')}")


class WorkDirLock:
    """An exclusive lock on a work dir for one training run.

    Args:
        work_dir: The run's work dir (created if missing).
    """

    def __init__(self, work_dir: str):
        self.work_dir = work_dir
        self.path = osp.join(work_dir, LOCK_NAME)
        self._fd: Optional[int] = None

    def _try_flock(self, fd: int) -> Optional[bool]:
        """True: locked; False: another process holds it; None: no flock here."""
        if fcntl is None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EACCES):
                return False
            return None  # ENOLCK, EINVAL: the file system has no flock

    def acquire(self) -> Optional[str]:
        """Take the lock.

        Returns:
            A note when a stale lock (a run that is gone) was taken over, else None.

        Raises:
            WorkDirLockedError: another live run holds the work dir, or a run on another
                host left its lock (naming its pid, host and the lock file).
        """
        held = _HELD.get(osp.abspath(self.path))
        if held is not None:  # an earlier run of this process that raised
            held.release()
        os.makedirs(self.work_dir, exist_ok=True)
        host, pid = socket.gethostname(), os.getpid()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            locked = self._try_flock(fd)
            owner = _read(fd)
            if locked is False:
                os.close(fd)
                raise WorkDirLockedError(self._busy(owner))
            try:  # the file we locked may have been released (deleted) meanwhile
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        note = None
        if owner:
            alive = owner.get('host') == host and isinstance(owner.get('pid'), int) \
                and owner['pid'] != pid and _pid_alive(owner['pid'])
            if owner.get('host') != host or (locked is None and alive):
                os.close(fd)
                raise WorkDirLockedError(self._busy(owner))
            note = (f'{self.work_dir}: taking over the lock of an earlier run that is gone '
                    f'({_describe(owner)}; killed or crashed). Its checkpoints stay; '
                    'without --resume this run starts over.')
        record = dict(pid=pid, host=host,
                      started=datetime.datetime.now().isoformat(timespec='seconds'))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(record).encode())
        os.fsync(fd)
        self._fd = fd
        _HELD[osp.abspath(self.path)] = self
        return note

    def _busy(self, owner: Optional[dict]) -> str:
        here = owner and owner.get('host') == socket.gethostname()
        return (f'work dir {self.work_dir} is in use by another training run '
                f'({_describe(owner)}): two runs in one work dir overwrite and rotate away '
                'each other\'s checkpoints. Use another --work-dir, or wait for that run to '
                'end' + ('' if here else
                         f'; if it is over (it ran on another host), delete {self.path}')
                + '.')

    def release(self):
        """Give the lock up and delete the file (idempotent)."""
        if self._fd is None:
            return
        _HELD.pop(osp.abspath(self.path), None)
        try:
            os.unlink(self.path)  # before unlocking: a waiting opener re-checks the inode
        except FileNotFoundError:
            pass
        os.close(self._fd)  # drops the flock
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


@atexit.register
def _release_all():
    """A run that raised never reaches after_run; its lock goes when the process exits."""
    for lock in list(_HELD.values()):
        lock.release()

