"""The direction of imports between vpt_seg's rooms (package folders and top-level modules),
as docs/layout.md's table states it, and no import cycles between modules.

The table is read from docs/layout.md, so the page and the code cannot drift apart: a new
import between rooms is either added to the table (a decision, in review) or fails here,
naming the file, the line and the import.
"""
import ast
import os
import os.path as osp
import re
from typing import Dict, List, Set, Tuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
PACKAGE = 'vpt_seg'


# ------------------------------------------------------------------ reading
def allowed_table(text: str) -> Dict[str, Set[str]]:
    """``{room: rooms it may import}`` from the ``| room | imports |`` table of
    docs/layout.md (rooms in backticks: ``models/``, ``patches.py``)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r'\|\s*room\s*\|\s*imports', line))
    table = {}
    for line in lines[start + 2:]:
        if not line.startswith('|'):
            break
        room, imports = [cell.strip() for cell in line.strip().strip('|').split('|')]
        table[room.strip('`')] = set(re.findall(r'`([^`]+)`', imports))
    return table


def room_of(parts: List[str]) -> str:
    """The room of a module named by its parts under the package (``['models', 'frozen']``
    -> ``models/``, ``['patches']`` -> ``patches.py``, ``[]`` -> ``__init__.py``)."""
    if not parts or parts == ['__init__']:
        return '__init__.py'
    return parts[0] + '/' if len(parts) > 1 else parts[0] + '.py'


def package_modules(root: str) -> Dict[Tuple[str, ...], str]:
    """``{module parts under the package: file}`` for every ``.py`` under ``root``."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith('.py'):
                path = osp.join(folder, name)
                found[tuple(osp.relpath(path, root)[:-3].split(os.sep))] = path
    return found


def imports_of(parts: Tuple[str, ...], path: str, modules):
    """``(line, imported module as parts under the package or None, text)`` for every
    import in the file, at module level or inside functions, relative ones resolved
    (``from X import name``: ``X.name`` when that is a module of the package, else ``X``).
    Names outside the package give None, but ``tools`` gives ``['..tools']``."""
    here = list(parts[:-1])

    def named(mod):  # a package names its __init__, so its room is its folder
        if mod and mod != ['..tools'] and tuple(mod) + ('__init__', ) in modules:
            return mod + ['__init__']
        return mod

    for node in ast.walk(ast.parse(open(path, encoding='utf-8').read(), path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, named(_inside(alias.name.split('.'))), f'import {alias.name}'
        elif isinstance(node, ast.ImportFrom):
            names = ', '.join(a.name for a in node.names)
            text = f"from {'.' * node.level}{node.module or ''} import {names}"
            if node.level:
                mod = here[:len(here) - node.level + 1] + (
                    node.module.split('.') if node.module else [])
            else:
                mod = _inside(node.module.split('.'))
            if mod is None or mod == ['..tools']:
                yield node.lineno, mod, text
                continue
            for alias in node.names:
                sub = tuple(mod + [alias.name])
                is_module = sub in modules or sub + ('__init__', ) in modules
                yield node.lineno, named(list(sub) if is_module else mod), text


def _inside(name: List[str]):
    if name[0] == PACKAGE:
        return name[1:]
    if name[0] == 'tools':
        return ['..tools']
    return None


def upward_imports(root: str, table: Dict[str, Set[str]]) -> List[str]:
    """Every import from one room into another that the table does not allow, as
    ``'file:line: text (A may not import B)'``; a room missing from the table is one."""
    problems = []
    modules = package_modules(root)
    for parts, path in sorted(modules.items()):
        room = room_of(list(parts))
        rel = osp.relpath(path, osp.dirname(root))
        if room not in table:
            problems.append(f'{rel}: room {room} is not in the table of docs/layout.md; '
                            'add its row (which rooms it may import)')
            continue
        for line, target, text in imports_of(parts, path, modules):
            if target is None:
                continue
            if target == ['..tools']:
                problems.append(f'{rel}:{line}: {text} (nothing in {PACKAGE}/ imports tools/)')
                continue
            other = room_of(target)
            if other != room and other not in table[room]:
                problems.append(f'{rel}:{line}: {text} ({room} may not import {other}; '
                                "docs/layout.md's table says which way imports go)")
    return problems


def module_cycles(root: str) -> List[List[str]]:
    """Import cycles between modules (package ``__init__`` files left out: a package's
    face re-exports), each as the list of modules around it."""
    every = package_modules(root)
    modules = {p: path for p, path in every.items() if p[-1] != '__init__'}
    graph = {p: set() for p in modules}
    for parts, path in modules.items():
        for _, target, _ in imports_of(parts, path, every):
            if target and tuple(target) in modules:
                graph[parts].add(tuple(target))
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = 'open'
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 'open':
                cycles.append(['.'.join(m) for m in stack[stack.index(nxt):] + [nxt]])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 'done'

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def table_cycles(table: Dict[str, Set[str]]) -> List[str]:
    """Rooms that reach themselves through the table (only ``__init__.py``, the package's
    face, may import the rooms that import it)."""
    def reach(room, seen):
        for other in table.get(room, ()):
            if other not in seen:
                seen.add(other)
                reach(other, seen)
        return seen
    return [room for room in table if room != '__init__.py' and room in reach(room, set())]


# -------------------------------------------------------------------- tests
def _docs_table():
    with open(osp.join(REPO, 'docs', 'layout.md'), encoding='utf-8') as f:
        return allowed_table(f.read())


def test_every_import_between_rooms_goes_the_way_docs_layout_says():
    problems = upward_imports(osp.join(REPO, PACKAGE), _docs_table())
    assert not problems, 'imports against docs/layout.md:\n' + '\n'.join(problems)


def test_the_table_has_every_room_and_no_loop():
    table = _docs_table()
    rooms = {room_of(list(p)) for p in package_modules(osp.join(REPO, PACKAGE))}
    assert rooms == set(table), (rooms ^ set(table))
    for room, imports in table.items():
        assert imports <= set(table), (room, imports - set(table))
    assert table_cycles(table) == []
    assert table['tuners/'] == set() and 'models/' not in table['formats/']


def test_no_import_cycles_between_modules():
    assert module_cycles(osp.join(REPO, PACKAGE)) == []


def _tree(tmp_path, files):
    root = tmp_path / PACKAGE
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(root)


TABLE = {'__init__.py': {'models/'}, 'tuners/': set(), 'formats/': {'tuners/'},
         'models/': {'tuners/', 'formats/'}, 'cli.py': set()}


def test_an_upward_import_fails_naming_the_file_the_line_and_the_import(tmp_path):
    """The check itself: an upward import, at module level or inside a function, and an
    import of tools/ are each reported; allowed ones are not."""
    root = _tree(tmp_path, {
        '__init__.py': 'from .models import x\n',
        'tuners/__init__.py': '', 'tuners/prompt.py': 'import torch\n',
        'formats/__init__.py': '',
        'formats/loading.py': 'from ..tuners.prompt import VisualPrompt\n'
                              'def f():\n    from ..models import frozen\n',
        'models/__init__.py': 'from . import frozen\n',
        'models/frozen.py': 'from ..formats import loading\nfrom vpt_seg.tuners import prompt\n',
        'cli.py': 'import tools.train\n'})
    problems = upward_imports(root, TABLE)
    assert len(problems) == 2, problems
    assert problems[0].startswith(osp.join(PACKAGE, 'cli.py') + ':1: import tools.train')
    assert problems[1].startswith(osp.join(PACKAGE, 'formats', 'loading.py') + ':3: from '
                                  '..models import frozen (formats/ may not import models/')
    assert upward_imports(root, dict(TABLE, **{'formats/': {'tuners/', 'models/'},
                                               'cli.py': set()}))[1:] == []


def test_a_room_missing_from_the_table_and_a_cycle_are_reported(tmp_path):
    root = _tree(tmp_path, {
        'new.py': 'from .a import x\n', 'a.py': 'import vpt_seg.b\n',
        'b.py': 'def f():\n    from . import a\n'})
    problems = upward_imports(root, {'a.py': {'b.py'}, 'b.py': {'a.py'}})
    assert problems == [f"{osp.join(PACKAGE, 'new.py')}: room new.py is not in the table of "
                        'docs/layout.md; add its row (which rooms it may import)']
    assert module_cycles(root) == [['a', 'b', 'a']]
    assert table_cycles({'a.py': {'b.py'}, 'b.py': {'a.py'}}) == ['a.py', 'b.py']


#: The longest function vpt_seg/ may hold (issue 25: steps are named functions).
MAX_FUNCTION_LINES = 80


def test_no_function_in_the_package_is_longer_than_the_limit():
    import ast
    import pathlib
    package = pathlib.Path(__file__).resolve().parent.parent / 'vpt_seg'
    long = []
    for path in sorted(package.rglob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f'{path.relative_to(package.parent)}:{node.lineno} '
                                f'{node.name} ({lines} lines)')
    assert not long, ('functions over the limit, split them into named steps: '
                      + '; '.join(long))
