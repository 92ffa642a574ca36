"""Small file helpers whose errors name the file: JSON, JSON lines, text lines, output locations.

Every reader here raises ``ValueError`` (or the ``OSError`` of the open, which names the path) with the
file — and the line, where there are lines — in the message, so a command line can print it as its one
line of error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in ``path``.

    Raises:
      OSError: the file cannot be read.
      ValueError: it is not UTF-8 JSON (file, line and column named).
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None


def text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(line number from 1, line) of a UTF-8 text file.

    Raises:
      OSError: the file cannot be read.
      ValueError: a line that is not UTF-8 (file and line named), e.g. a binary file given by mistake.
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text (a binary file?)") from None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, one per non-blank line.

    Raises:
      OSError: the file cannot be read.
      ValueError: a line that is not a JSON object (file and line named).
    """
    records = []
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def check_output_file(path: str | os.PathLike) -> Path:
    """Checks, before any work is done, that a file can be written at ``path``.

    Returns:
      ``path`` as a Path.

    Raises:
      ValueError: ``path`` is a directory, or its parent is not an existing, writable directory.
    """
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give a file name")
    if not parent.is_dir():
        raise ValueError(f"{path}: the directory {parent} does not exist (create it first)")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{path}: the directory {parent} is not writable")
    return path


__all__ = ["check_output_file", "read_json", "read_jsonl", "text_lines"]
