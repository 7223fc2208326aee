"""Reading files under data_root: every failure (missing, truncated, wrong format) as one ``UserError`` line."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable

from ..config import UserError, first_line


def read_file(path: Path, what: str, reader: Callable[[Path], object]):
    """``reader(path)``, with any failure (truncated, wrong format, wrong contents) as one UserError line."""
    try:
        return reader(path)
    except Exception as error:  # corrupt files fail in many ways: pickle, EOF, shape, key and value errors
        raise UserError(f"{path}: not a readable {what} file ({first_line(error, with_type=True)})") from None


def load_pickle(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")  # latin1: the CIFAR pickles were written by Python 2


def expect(condition: bool, message: str) -> None:
    """A check inside a reader: ``read_file`` turns its failure into one line naming the file."""
    if not condition:
        raise ValueError(message)
