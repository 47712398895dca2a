"""What every "one clear line" error message shares."""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    """The first line of an error's message (parsers, ONNX Runtime and torch explain over several lines; users
    read one), or the error's type name when it has no message."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
