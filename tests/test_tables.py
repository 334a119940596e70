"""CSV tables (vpt_seg/formats/tables.py): a cell a spreadsheet would run as a formula is
written with a leading ', numbers as they are, and the file reads back with :mod:`csv`."""
import csv
import io

import pytest

from vpt_seg.formats.tables import csv_text, joined, spreadsheet_safe


@pytest.mark.parametrize('cell,written', [
    ('=1+2', "'=1+2"),
    ('+SUM(A1:A9)', "'+SUM(A1:A9)"),
    ('-2+3', "'-2+3"),
    ('@A1', "'@A1"),
    ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
    ('\t=1', "'\t=1"),
    ('\r=1', "'\r=1"),
    ('cat', 'cat'),
    ('a=b', 'a=b'),             # a formula only starts a cell
    ('', ''),
    (-0.5, -0.5),               # numbers are numbers, not formulas
    (3, 3),
])
def test_cells_a_spreadsheet_would_run_get_a_quote(cell, written):
    assert spreadsheet_safe(cell) == written
    (row, ) = list(csv.reader(io.StringIO(csv_text([[cell]]), newline='')))
    assert row == [str(written)]


def test_several_values_in_one_cell_are_escaped_one_by_one():
    """A spreadsheet that splits the cell at ';' still sees no formula."""
    assert joined(['cat', '=1+2', '@A1']) == "cat;'=1+2;'@A1"
    assert joined([0, 3]) == '0;3'


def test_the_study_table_is_escaped(tmp_path):
    from vpt_seg.experiments.study import RowResult, _write_tables
    rows = [RowResult(key='=cmd', method='@evil', tuned=1, total=4, file_bytes=10,
                      miou=-1.5, aacc=2.0, lr=0.1, train_s=1.0, test_s=1.0)]
    paths = _write_tables(str(tmp_path), rows, None, {})
    with open(paths['csv'], newline='') as f:
        (row, ) = list(csv.DictReader(f))
    assert row['key'] == "'=cmd" and row['method'] == "'@evil"
    assert row['miou'] == '-1.5' and row['tuned_pct'] == '25.0'
