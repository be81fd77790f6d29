"""Reading INI files with errors a person can act on (file, line or section, fix)."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from planner.errors import InputError


def read_ini(path: str | Path, what: str) -> configparser.ConfigParser:
    """Parse an INI file strictly: no duplicate sections or keys, case kept, '#' and ';' comments."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found", file=path, fix="check the path")
    if path.is_dir():
        raise InputError(f"{what} is a directory, not a file", file=path, fix="name the .ini file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what}: {exc.strerror}", file=path, fix="check its permissions") from None
    try:
        text = raw.decode("utf-8-sig")  # a BOM (Windows editors) is not text
    except UnicodeDecodeError:
        raise InputError(f"{what} is not a text file", file=path, fix="give an INI file") from None
    if not text.strip():
        raise InputError(f"{what} is empty", file=path, fix="see docs/formats.md for its sections")
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("[") and not re.split(r"[#;]", stripped)[0].strip().endswith("]"):
            raise InputError(f"line {number}: section header '{stripped}' is not closed",
                             file=path, fix="end it with ']'")
    # default_section: a [DEFAULT] in a user's file is an ordinary (unknown) section, not keys for all
    parser = configparser.ConfigParser(delimiters=("=",), comment_prefixes=("#", ";"), default_section="\0",
                                       inline_comment_prefixes=("#", ";"), strict=True,
                                       interpolation=None, empty_lines_in_values=False)
    parser.optionxform = str  # host and GPU names are case-sensitive
    try:
        parser.read_string(text, source=str(path))
    except configparser.MissingSectionHeaderError as exc:
        raise InputError(f"line {exc.lineno}: not an INI file (text before the first [section])",
                         file=path, fix="start the file with a [section] header") from None
    except configparser.DuplicateSectionError as exc:
        raise InputError(f"line {exc.lineno}: section [{exc.section}] appears twice",
                         file=path, fix="merge the two sections") from None
    except configparser.DuplicateOptionError as exc:
        raise InputError(f"line {exc.lineno}: [{exc.section}] sets '{exc.option}' twice",
                         file=path, fix="keep one of the two lines") from None
    except configparser.ParsingError as exc:
        line_no, line = exc.errors[0] if exc.errors else (0, "")
        raise InputError(f"line {line_no}: cannot parse {line.strip()}",
                         file=path, fix="write 'key = value' lines under [section] headers") from None
    if not parser.sections():
        raise InputError(f"{what} has no [sections]", file=path, fix="see docs/formats.md")
    return parser
