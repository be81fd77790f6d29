"""Reading INI files with errors a person can act on (file, line or section, fix)."""

from __future__ import annotations

import configparser
import math
import re
from pathlib import Path

from planner.errors import InputError

# a name of the user's (a host, a measured GPU section) that reads back from a `[KIND NAME]` header and
# makes node names (HOST:I), tensor-parallel units (A+B) and one word of an exported shell script
NAME = re.compile(r"[A-Za-z0-9._-]+")


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


def comma_items(text: str, field: str, fix: str, *, file: str | Path | None = None) -> list[str]:
    """The items of a comma-separated value, stripped. An empty item ('a,,b', a trailing comma, or nothing
    at all) is refused: it is an item left out by a typo, and dropping it would run something else."""
    items = [item.strip() for item in text.split(",")]
    if "" in items:
        raise InputError(f"'{text}' has an empty entry", file=file, field=field, fix=fix)
    return items


class SectionReader:
    """Typed access to one INI section; every error names file, section and key."""

    def __init__(self, file: str | Path, section: str, values: configparser.SectionProxy) -> None:
        self.file, self.section, self.values = file, section, values
        self.used: set[str] = set()

    def fail(self, key: str, problem: str, fix: str) -> InputError:
        return InputError(problem, file=self.file, field=f"[{self.section}] {key}", fix=fix)

    def items(self, key: str, fix: str, *, empty: bool = False) -> list[str]:
        """The key's comma-separated items; an empty item is refused, and so is a line with no value unless
        `empty` (then it, or an absent line, has none)."""
        raw = self.text(key, "" if empty else None, empty=empty)
        return comma_items(raw, f"[{self.section}] {key}", fix, file=self.file) if raw else []

    def has(self, key: str) -> bool:
        return key in self.values

    def text(self, key: str, default: str | None = None, *, empty: bool = False) -> str:
        """The key's value; `default` where the line is absent. A line with no value is refused unless
        `empty` (it means something, as `gpus =` for a host without GPUs): read as the default, `dtype =`
        left over from an edit would silently plan another dtype."""
        self.used.add(key)
        if not self.has(key):
            if default is None:
                raise self.fail(key, "missing", f"add '{key} = ...' to [{self.section}]")
            return default
        value = self.values[key].strip()
        if "\n" in value:   # configparser joins an indented line to the value above it
            raise self.fail(key, "runs onto the next line, which is indented",
                            "start every 'key = value' line at the beginning of the line")
        if not value and not empty:
            raise self.fail(key, "has no value", "give it a value" + (
                ", or remove the line to use the default" if default is not None else ""))
        return value

    def positive_int(self, key: str, default: int | None = None) -> int:
        raw = self.text(key, None if default is None else str(default))
        try:
            value = int(raw)
        except ValueError:
            raise self.fail(key, f"'{raw}' is not a whole number", "write an integer such as 40") from None
        if value <= 0:
            raise self.fail(key, f"must be at least 1, got {value}", "give a positive count")
        return value

    def positive_float(self, key: str, default: float | None = None) -> float:
        raw = self.text(key, None if default is None else repr(default))
        try:
            value = float(raw)
        except ValueError:
            raise self.fail(key, f"'{raw}' is not a number", "write a number such as 165.2") from None
        if not (value > 0 and math.isfinite(value)):
            raise self.fail(key, f"must be a positive finite number, got {raw}", "give a positive number")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        raw = self.text(key, "yes" if default else "no").lower()
        if raw in ("yes", "true", "1", "on"):
            return True
        if raw in ("no", "false", "0", "off"):
            return False
        raise self.fail(key, f"'{raw}' is not yes/no", "write yes or no")

    def quantity(self, key: str, parse, default: str | None = None) -> float:
        raw = self.text(key, default)
        try:
            return parse(raw)
        except ValueError as exc:
            raise self.fail(key, str(exc), "see docs/formats.md#units") from None

    def unknown_keys(self, allowed: set[str]) -> None:
        for key in self.values:
            if key not in allowed:
                raise self.fail(key, "unknown key", f"allowed keys: {', '.join(sorted(allowed))}")
