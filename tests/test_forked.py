"""The study's way of running work beside itself: functions in forked children
(``fork_call``: their result or their traceback comes back), tool runs in a bounded number
of slots taken in priority order (``Slots``), and the tiny CLIP pretrained once when both
parts of the study ask for it from two threads."""
import os
import threading
import time

import pytest

from vpt_seg.engine.forked import fork_call
from vpt_seg.experiments import clip_pretrain
from vpt_seg.experiments.clip_pretrain import ClipPretrainSettings, pretrain_tiny_clip_once
from vpt_seg.experiments.study import Slots


def _square_and_pid(x):
    return dict(square=x * x, pid=os.getpid())


def _fails():
    raise KeyError('no such thing')


def _dies():
    os._exit(3)


def test_fork_call_returns_the_childs_result():
    result = fork_call(_square_and_pid, 7)
    assert result['square'] == 49
    assert result['pid'] != os.getpid()   # it ran in another process


def test_fork_call_reports_the_childs_error_and_death():
    with pytest.raises(RuntimeError, match=r"_fails failed in a forked child(.|\n)*"
                                           r"KeyError: 'no such thing'"):
        fork_call(_fails)
    with pytest.raises(RuntimeError, match=r'_dies in a forked child ended without a result '
                                           r'\(exit status 3\)'):
        fork_call(_dies)


def test_slots_bound_the_runs_and_start_the_lowest_priority_first():
    slots, order, busy, most = Slots(2), [], [0], [0]
    lock, release = threading.Lock(), threading.Event()

    def run(name, priority, wait=None):
        with slots.hold(priority):
            with lock:
                order.append(name)
                busy[0] += 1
                most[0] = max(most[0], busy[0])
            if wait is not None:
                wait.wait()
            else:
                time.sleep(0.01)
            with lock:
                busy[0] -= 1

    blockers = [threading.Thread(target=run, args=(f'block{i}', 0, release)) for i in (0, 1)]
    for t in blockers:
        t.start()
    while len(order) < 2:
        time.sleep(0.01)
    queued = [('coop a', 2), ('row a', 1), ('pretrain', 0), ('row b', 1), ('coop b', 2)]
    threads = []
    for name, priority in queued:   # they ask in this order while both slots are held
        threads.append(threading.Thread(target=run, args=(name, priority)))
        threads[-1].start()
        time.sleep(0.05)
    release.set()
    for t in blockers + threads:
        t.join()
    assert most[0] == 2
    assert order[2:] == ['pretrain', 'row a', 'row b', 'coop a', 'coop b']


def test_the_tiny_clip_is_pretrained_once_for_two_parts(tmp_path, monkeypatch):
    """Both parts of the study ask for the CLIP at once; one pretraining (in a forked
    child) serves both, and asking for the same folder with other settings is refused."""
    calls = tmp_path / 'calls'

    def fake_pretrain(folder, settings, log):
        with open(calls, 'a') as f:
            f.write(f'{os.getpid()}\n')
        time.sleep(0.3)
        os.makedirs(folder, exist_ok=True)
        open(os.path.join(folder, 'open_clip_model.safetensors'), 'w').close()
        return dict(loss=1.5, retrieval=50.0, tokens=45, seconds=0.3)

    monkeypatch.setattr(clip_pretrain, 'pretrain_tiny_clip', fake_pretrain)
    folder = str(tmp_path / 'tiny_clip')
    got = []
    threads = [threading.Thread(target=lambda: got.append(pretrain_tiny_clip_once(
        folder, log=lambda msg: None, slots=Slots(2)))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got[0] == got[1] == dict(loss=1.5, retrieval=50.0, tokens=45, seconds=0.3)
    pids = calls.read_text().split()
    assert len(pids) == 1 and int(pids[0]) != os.getpid()
    with pytest.raises(ValueError, match='asked for with .* give each its own folder'):
        pretrain_tiny_clip_once(folder, ClipPretrainSettings(iters=10))
