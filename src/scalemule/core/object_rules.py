"""What object storage accepts: keys, prefixes, content types and user metadata, and how content
types are guessed and told apart as text. Pure functions, no I/O."""

from __future__ import annotations

import mimetypes
import re
import unicodedata

from scalemule.core.errors import InvalidArgument

MAX_KEY_BYTES = 1024
# Types a browser displays without running anything in them. Every other type (HTML, SVG, XML,
# scripts, unknown ones) is served as an attachment, so stored bytes never run as a page.
PASSIVE_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/avif",
        "image/bmp",
        "application/pdf",
        "text/plain",
        "text/csv",
        "application/json",
        "application/octet-stream",
    }
)
PASSIVE_PREFIXES = ("audio/", "video/")
# The bytes one call may carry (a put, a read, the object resource); larger objects go through signed
# URLs. The HTTP surface derives its request body limit from it.
MAX_INLINE_BYTES = 16 << 20
MAX_METADATA_BYTES = 2048
KEY_FORM = (
    "Keys are 1-1,024 bytes of UTF-8 like 'reports/2026/q1.pdf': '/'-separated segments, none empty, '.' or "
    "'..', no leading or trailing '/', no backslashes or control characters."
)
_META_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_TOKEN = r"[A-Za-z0-9!#$&^_.+-]+"
_CONTENT_TYPE = re.compile(rf"^{_TOKEN}/{_TOKEN}(\s*;\s*{_TOKEN}=(\"[^\"\\\x00-\x1f]*\"|{_TOKEN}))*$")
# Characters that break lines or terminals: C0/C1 controls, DEL, line and paragraph separators.
FORBIDDEN_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})
_TEXT_SUBTYPES = frozenset(
    {"json", "xml", "javascript", "ecmascript", "yaml", "x-yaml", "toml", "csv", "x-ndjson", "ndjson", "sql"}
)
_EXTRA_TYPES = {
    ".md": "text/markdown",
    ".json": "application/json",
    ".csv": "text/csv",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".webp": "image/webp",
    ".ndjson": "application/x-ndjson",
}
# Built-in table only, so a type guessed from a key does not depend on the host's mime.types.
_TYPES = mimetypes.MimeTypes()


def shown(text: str) -> str:
    """``text`` made safe to quote in a message: escaped, cut to 80 characters."""
    return ascii(text[:80])[1:-1] + ("…" if len(text) > 80 else "")


def _char_problem(text: str) -> str | None:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid Unicode (a lone surrogate)"
    if size > MAX_KEY_BYTES:
        return f"it is {size:,} bytes of UTF-8, over {MAX_KEY_BYTES:,}"
    if text.startswith("/"):
        return "it is an absolute path (leading '/')"
    if "\\" in text:
        return "it contains a backslash"
    for char in text:
        if unicodedata.category(char) in FORBIDDEN_CATEGORIES:
            return f"it contains the control character U+{ord(char):04X}"
    return None


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid object key; valid keys are stored exactly as given.

    Raises:
        InvalidArgument: the key breaks the form in ``KEY_FORM``.
    """
    problem = _char_problem(key)
    if problem is None:
        if not key:
            problem = "it is empty"
        elif "" in (segments := key.split("/")):
            problem = "it has an empty segment ('//' or a trailing '/')"
        elif "." in segments or ".." in segments:
            problem = "it has a '.' or '..' segment"
    if problem is not None:
        raise InvalidArgument(f"object key '{shown(key)}' is not allowed: {problem}", hint=KEY_FORM)
    return key


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if keys could start with it (any start of a valid key, or empty).

    Raises:
        InvalidArgument: no valid key starts with it.
    """
    problem = _char_problem(prefix)
    if problem is not None:
        raise InvalidArgument(f"prefix '{shown(prefix)}' is not allowed: {problem}", hint=KEY_FORM)
    return prefix


def check_content_type(content_type: str) -> str:
    """Return ``content_type`` if it is a media type such as ``text/csv; charset=utf-8``.

    Raises:
        InvalidArgument: it is not ``type/subtype`` with optional parameters, or is over 255 characters.
    """
    if len(content_type) > 255 or not _CONTENT_TYPE.fullmatch(content_type):
        raise InvalidArgument(
            f"content_type '{shown(content_type)}' is not a media type",
            hint="Use type/subtype with optional parameters, e.g. 'image/png' or 'text/csv; charset=utf-8'.",
        )
    return content_type


def check_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """Return ``metadata`` if its names and values are valid and together fit in 2 KiB of UTF-8.

    Raises:
        InvalidArgument: a bad name or value, or too large.
    """
    total = 0
    for name, value in metadata.items():
        if not _META_KEY.fullmatch(name):
            raise InvalidArgument(
                f"metadata name '{shown(name)}' is not allowed",
                hint="Names are 1-128 letters, digits, '_', '.' and '-', starting with a letter or digit.",
            )
        if any(unicodedata.category(c) in FORBIDDEN_CATEGORIES for c in value):
            raise InvalidArgument(f"metadata value of '{name}' contains a control character", hint="Use plain text.")
        total += len(name.encode()) + len(value.encode("utf-8", "replace"))
    if total > MAX_METADATA_BYTES:
        raise InvalidArgument(
            f"metadata is {total:,} bytes (names plus values in UTF-8), over {MAX_METADATA_BYTES:,}",
            hint="Keep metadata small; store larger data as an object of its own.",
        )
    return metadata


def guess_content_type(key: str, *, text: bool) -> str:
    """The media type a key's extension implies, else plain UTF-8 text or octet-stream."""
    suffix = key.rsplit(".", 1)[-1].lower() if "." in key.rsplit("/", 1)[-1] else ""
    guessed = _EXTRA_TYPES.get(f".{suffix}") or (_TYPES.guess_type(f"x.{suffix}")[0] if suffix else None)
    if guessed and guessed.startswith("text/") and text:
        return f"{guessed}; charset=utf-8"
    return guessed or ("text/plain; charset=utf-8" if text else "application/octet-stream")


def is_textual(content_type: str) -> bool:
    """True for text, JSON, XML, YAML and the like: content an agent reads as text."""
    media = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind == "text" or subtype in _TEXT_SUBTYPES or subtype.endswith(("+json", "+xml", "+yaml"))


def disposition(content_type: str) -> str:
    """``inline`` for a passive type, else ``attachment``: how a signed GET URL serves the object."""
    base = content_type.split(";", 1)[0].strip().lower()
    return "inline" if base in PASSIVE_TYPES or base.startswith(PASSIVE_PREFIXES) else "attachment"
