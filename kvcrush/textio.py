"""Reading user-supplied text safely: UTF-8 only, bounded size, clear messages."""

from __future__ import annotations

from pathlib import Path

from kvcrush.errors import PromptError

MAX_TEXT_BYTES = 2 * 1024 * 1024  # 2 MiB of text is ~500k tokens, far beyond any supported context


def decode_text(data: bytes, name: str = "the upload", max_bytes: int = MAX_TEXT_BYTES) -> str:
    """Decode uploaded bytes as UTF-8 text, refusing binaries and oversize files."""
    if len(data) > max_bytes:
        raise PromptError(f"{name} is {len(data):,} bytes; the limit is {max_bytes:,} bytes of text.")
    if b"\x00" in data[:8192]:
        raise PromptError(f"{name} looks binary (it contains NUL bytes); give a UTF-8 .txt file.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise PromptError(f"{name} is not UTF-8 text (bad byte at offset {error.start}); save it as UTF-8.") from None
    if not text.strip():
        raise PromptError(f"{name} is empty.")
    return text


def read_text_file(path: str | Path, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """Read a prompt file given on the command line."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise PromptError(f"Prompt file {str(path)!r} does not exist or is not a file.")
    size = file.stat().st_size
    if size > max_bytes:
        raise PromptError(f"{path} is {size:,} bytes; the limit is {max_bytes:,} bytes of text.")
    return decode_text(file.read_bytes(), str(path), max_bytes)
