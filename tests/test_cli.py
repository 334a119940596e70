"""vpt_seg.cli: ``vpt-seg TOOL [ARGS]`` runs the project's tools."""
import os.path as osp
import sys

import pytest

from vpt_seg import cli
from vpt_seg.config_paths import tools_dir


def test_available_tools_are_the_tools_folders_scripts():
    tools = cli.available_tools()
    assert tools == sorted(tools)
    assert {'train', 'test', 'demo', 'serve', 'export_task', 'study'} <= set(tools)
    assert all(osp.isfile(osp.join(tools_dir(), t + '.py')) for t in tools)
    assert 'dist_train' not in tools  # shell scripts are not tools here


@pytest.mark.parametrize('argv', [[], ['-h'], ['--help']])
def test_help_lists_the_tools(argv, capsys):
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith('``vpt-seg TOOL [ARGS]``')
    assert out.strip().endswith('tools: ' + ', '.join(cli.available_tools()))


def test_unknown_tool_is_named_with_the_choices(capsys):
    assert cli.main(['trian']) == 2
    err = capsys.readouterr().err
    assert err.startswith("vpt-seg: unknown tool 'trian'; tools: ")
    assert 'train' in err


@pytest.mark.parametrize('name', ['count_params', 'count_params.py'])
def test_a_tool_runs_as_main_with_its_own_argv(name, monkeypatch, capsys):
    monkeypatch.setattr(sys, 'argv', ['vpt-seg'])
    with pytest.raises(SystemExit) as done:  # argparse's --help exits 0
        cli.main([name, '--help'])
    assert done.value.code == 0
    assert sys.argv == [osp.join(tools_dir(), 'count_params.py'), '--help']
    assert 'usage: count_params.py' in capsys.readouterr().out
