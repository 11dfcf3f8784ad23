"""Input validation: checks on raw event logs that fail with one clear, fixable line.

Every check raises :class:`rlrec.errors.UserError` whose message names the file (and the line
or column where there is one), says what was expected and what to do. The checks that need
the whole file (unknown event types, negative timestamps) run on the table that DuckDB has
already read; the cheap structural ones (empty file, delimiter, header) look only at the first
few kilobytes, so that a wrong preset fails in milliseconds instead of after a 10 GB scan.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

from rlrec.data.schema import EVENT_ALIASES, EVENT_TYPES
from rlrec.errors import UserError, quote_value

__all__ = [
    "CANDIDATE_DELIMITERS",
    "MAX_LINE_BYTES",
    "SNIFF_BYTES",
    "UTF8_BOM",
    "CsvShape",
    "check_data_rows",
    "check_field_count",
    "check_header",
    "check_input_files",
    "check_line_lengths",
    "check_no_header",
    "delimiter_name",
    "duckdb_read_error",
    "guess_delimiter",
    "sniff_csv",
    "unknown_events_error",
]

SNIFF_BYTES = 64 * 1024
"""How much of a CSV file the structural checks read."""

MAX_LINE_BYTES = 1024 * 1024
"""A CSV line longer than this is refused (and some over half of it): no event needs one, and
DuckDB's parallel reader drops an over-long last line silently (and fails on others with a
multi-line message)."""

UTF8_BOM = "\ufeff"

CANDIDATE_DELIMITERS = (",", ";", "\t", "|")
"""Delimiters tried when a file does not split with the one expected."""

_DELIMITER_NAMES = {",": "','", ";": "';'", "\t": "tab ('\\t')", "|": "'|'"}


@dataclass(frozen=True)
class CsvShape:
    """The first lines of a CSV file, split with a given delimiter.

    Attributes:
        path: The file.
        delimiter: The delimiter the lines were split with.
        first_rows: Up to the first 20 non-empty lines, split into fields.
    """

    path: Path
    delimiter: str
    first_rows: tuple[tuple[str, ...], ...]

    @property
    def n_fields(self) -> int:
        """Number of fields on the first line."""
        return len(self.first_rows[0]) if self.first_rows else 0


def delimiter_name(delimiter: str) -> str:
    """A printable name for a delimiter (tab is otherwise invisible in a message)."""
    return _DELIMITER_NAMES.get(delimiter, repr(delimiter))


def check_input_files(paths: Sequence[Path]) -> None:
    """Every input exists, is a file and is not empty.

    Raises:
        UserError: Naming the first missing or empty file.
    """
    if not paths:
        raise UserError("no input files given; pass at least one with --input PATH")
    for path in paths:
        if not path.exists():
            raise UserError(f"{path}: no such file; check the --input path")
        if not path.is_file():
            raise UserError(f"{path}: not a file; pass the log file itself, not a folder")
        if not os.access(path, os.R_OK):
            raise UserError(f"{path}: not readable (permission denied); check its permissions")
        if path.stat().st_size == 0:
            raise UserError(f"{path}: empty file (0 bytes); pass a log with at least one event")


def sniff_csv(path: Path, delimiter: str) -> CsvShape:
    """Read the first lines of ``path`` (gzip-compressed if it ends in ``.gz``), split them."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except (EOFError, OSError, zlib.error) as exc:
        # gzip raises EOFError on a truncated archive and BadGzipFile (an OSError) on others.
        raise UserError(
            f"{path}: not a readable {'gzip ' if opener is gzip.open else ''}file ({exc}); "
            "check that the file is complete"
        ) from None
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{path}: UTF-16 text; save the file as UTF-8 (or ASCII) CSV")
    # A UTF-8 byte order mark (Excel writes one) is not part of the first column's name.
    text = head.decode("utf-8", errors="replace").removeprefix(UTF8_BOM)
    lines = text.splitlines()
    if len(head) == SNIFF_BYTES and lines:
        lines = lines[:-1]  # the last line may be cut in the middle
    lines = [line for line in lines if line.strip()][:20]
    rows = tuple(tuple(row) for row in csv.reader(lines, delimiter=delimiter))
    return CsvShape(path=path, delimiter=delimiter, first_rows=rows)


def check_line_lengths(path: Path, limit: int = MAX_LINE_BYTES) -> None:
    """No line of ``path`` is longer than ``limit`` bytes, checked without reading the file.

    Every aligned window of ``limit // 2`` bytes must hold a newline (a line longer than
    ``limit`` covers a whole window); finding one usually takes a few bytes, so a 10 GB file
    costs some 20,000 small reads. Compressed files are left to the reader.

    Raises:
        UserError: Naming the file, the line and its length.
    """
    if path.suffix.lower() == ".gz":
        return
    window = max(limit // 2, 1)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        for start in range(0, size - window + 1, window):
            fh.seek(start)
            # A newline is usually within the first few bytes; read the rest only if not.
            head = fh.read(min(4096, window))
            if b"\n" in head or b"\n" in fh.read(window - len(head)):
                continue
            _long_line_error(path, fh, start, limit)


def _long_line_error(path: Path, fh: BinaryIO, inside: int, limit: int) -> NoReturn:
    """Fail on the line that covers byte ``inside``: find its number and length (error path)."""
    fh.seek(0)
    line_start, newlines, pos = 0, 0, 0
    while pos <= inside:
        block = fh.read(min(1 << 20, inside + 1 - pos))
        if not block:
            break
        newlines += block.count(b"\n")
        last = block.rfind(b"\n")
        if last >= 0:
            line_start = pos + last + 1
        pos += len(block)
    fh.seek(inside)
    length = inside - line_start
    while block := fh.read(1 << 20):
        cut = block.find(b"\n")
        length += len(block) if cut < 0 else cut
        if cut >= 0:
            break
    raise UserError(
        f"{path} line {newlines + 1}: a line of {length:,} bytes; an event takes a few "
        "hundred at most, so the file is damaged or not a log: fix or remove that line"
    )


def guess_delimiter(shape: CsvShape) -> str | None:
    """Another delimiter that splits the first lines into a consistent number (> 1) of fields."""
    lines = [shape.delimiter.join(row) for row in shape.first_rows]
    best: tuple[int, str] | None = None
    for cand in CANDIDATE_DELIMITERS:
        if cand == shape.delimiter:
            continue
        counts = {len(row) for row in csv.reader(lines, delimiter=cand)}
        if len(counts) == 1 and (n := counts.pop()) > 1 and (best is None or n > best[0]):
            best = (n, cand)
    return best[1] if best else None


def check_field_count(shape: CsvShape, expected: int, preset: str, layout: str) -> None:
    """A header-less preset file has exactly ``expected`` fields per line.

    Raises:
        UserError: With a delimiter hint when another delimiter would split the file.
    """
    if not shape.first_rows:
        raise UserError(f"{shape.path}: no data rows; pass a log with at least one event")
    found = shape.n_fields
    if found == expected:
        return
    hint = _delimiter_hint(shape) if found == 1 else ""
    raise UserError(
        f"{shape.path}: line 1 has {found} {delimiter_name(shape.delimiter)}-separated "
        f"field(s), the {preset} preset expects {expected} ({layout}){hint}; "
        "check --preset or use --preset generic --columns"
    )


def check_no_header(shape: CsvShape, numeric_positions: Sequence[int], preset: str) -> None:
    """A header-less preset file does not start with a header line.

    Raises:
        UserError: If the first line has text where the preset expects numbers.
    """
    row = shape.first_rows[0]
    if all(not _is_number(row[i]) for i in numeric_positions if i < len(row)):
        raise UserError(
            f"{shape.path}: line 1 ({shape.delimiter.join(row)[:80]!r}) looks like a header, "
            f"but {preset} files have none; remove the header line or use --preset generic"
        )


def check_header(
    shape: CsvShape, required: Sequence[str], preset: str, fix: str | None = None
) -> tuple[str, ...]:
    """The header line of ``shape`` names every column in ``required``.

    Returns:
        The header's column names.

    Raises:
        UserError: Listing the missing columns, with a delimiter hint when the header did not
            split at all.
    """
    if not shape.first_rows:
        raise UserError(f"{shape.path}: no header and no data rows; pass a non-empty log")
    header = tuple(name.strip() for name in shape.first_rows[0])
    missing = [c for c in required if c not in header]
    if not missing:
        return header
    hint = _delimiter_hint(shape) if len(header) == 1 else ""
    shown = ", ".join(header[:12]) + (", ..." if len(header) > 12 else "")
    advice = fix or f"check --preset (this file does not look like {preset} data)"
    raise UserError(
        f"{shape.path}: missing required column(s) {', '.join(missing)} for the {preset} "
        f"preset; the header has [{shown}]{hint}; {advice}"
    )


def check_data_rows(path_label: str, n_rows: int) -> None:
    """The input has at least one data row.

    Raises:
        UserError: If it has none (a header-only file).
    """
    if n_rows == 0:
        raise UserError(f"{path_label}: no data rows; pass a log with at least one event")


def unknown_events_error(where: str, column: str, values: Sequence[str]) -> NoReturn:
    """Fail on event types that are neither canonical nor a known alias.

    Raises:
        UserError: Listing (up to ten of) the unknown values.
    """
    shown = ", ".join(quote_value(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
    known = ", ".join(EVENT_TYPES)
    aliases = ", ".join(sorted(EVENT_ALIASES))
    raise UserError(
        f"{where}: unknown event type(s) {shown} in column {quote_value(column)}; expected "
        f"one of {known} (or an alias: {aliases}); fix the values or map another column "
        "with --columns event=COL"
    )


def duckdb_read_error(exc: Exception, preset: str, expected: str) -> UserError:
    """Translate a DuckDB CSV/Parquet reading error into a one-line :class:`UserError`.

    DuckDB's messages are many lines long (the sniffer's settings, hints); the parts a user
    needs are the file, the line, the column and the value that did not convert.

    Args:
        exc: The exception DuckDB raised while reading.
        preset: The preset in use, for the message.
        expected: What the preset expects, e.g. ``"integer ids"``.
    """
    text = str(exc)
    file_match = re.search(r"^\s*file = (.+)$", text, flags=re.MULTILINE)
    line_match = re.search(r"Line: (\d+)", text)
    where = file_match.group(1).strip() if file_match else "input"
    if line_match:
        where += f" line {line_match.group(1)}"
    conv = re.search(
        r'converting column "([^"]+)"\. Could not convert string "([^"]*)" to \'(\w+)\'', text
    )
    if conv:
        column, value, type_name = conv.groups()
        kind = "a number" if type_name in {"BIGINT", "INTEGER", "DOUBLE", "SMALLINT"} else type_name
        return UserError(
            f"{where}: column {column!r} has {quote_value(value)} where {kind} is expected "
            f"(the {preset} preset expects {expected}); fix the row or use --preset generic"
        )
    columns = re.search(r"Expected Number of Columns: (\d+) Found: (\d+)", text)
    if columns:
        want, got = columns.groups()
        return UserError(
            f"{where}: {got} fields where {want} are expected (the {preset} preset expects "
            f"{expected}); fix the row or check --delimiter"
        )
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "unreadable input")
    return UserError(f"{where}: cannot read the file ({first[:160]}); check that it is {expected}")


def _delimiter_hint(shape: CsvShape) -> str:
    other = guess_delimiter(shape)
    if other is None:
        return ""
    return (
        f" (no {delimiter_name(shape.delimiter)} found; the file looks "
        f"{delimiter_name(other)}-separated: pass --delimiter '{other}')"
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
