"""CSV tables vpt-seg writes (``predictions.csv``, the study's ``table.csv``), safe to open
in a spreadsheet.

A cell a spreadsheet would take for a formula (text beginning with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return) gets a leading single quote, as OWASP advises for CSV
injection: class names come from task files that others share, and ``=HYPERLINK(...)``
or ``=1+2`` would otherwise run when the table is opened. Numbers are written as they are
(``-0.5`` is a number, not a formula); text is quoted by :mod:`csv` where it holds the
separator. Several values in one cell are escaped one by one (:func:`joined`), so a
spreadsheet that splits the cell at ``;`` still sees no formula.
"""
import csv
import io
from typing import Any, Iterable, Sequence

__all__ = ['FORMULA_START', 'spreadsheet_safe', 'joined', 'csv_text']

#: First characters that make a spreadsheet read a cell as a formula (OWASP, CSV injection).
FORMULA_START = ('=', '+', '-', '@', '\t', '\r')


def spreadsheet_safe(cell: Any) -> Any:
    """``cell`` with a ``'`` in front if it is text beginning with :data:`FORMULA_START`;
    anything else (numbers included) as it is."""
    if isinstance(cell, str) and cell.startswith(FORMULA_START):
        return "'" + cell
    return cell


def joined(values: Iterable[Any], sep: str = ';') -> str:
    """Several values in one cell, each made :func:`spreadsheet_safe`."""
    return sep.join(str(spreadsheet_safe(v)) for v in values)


def csv_text(rows: Iterable[Sequence[Any]]) -> str:
    """The CSV text of ``rows`` (header first), every cell :func:`spreadsheet_safe`."""
    table = io.StringIO(newline='')
    writer = csv.writer(table)
    for row in rows:
        writer.writerow([spreadsheet_safe(cell) for cell in row])
    return table.getvalue()
