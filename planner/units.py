"""Quantities with units: bandwidth, time and memory. Bits and bytes are never confused.

`parse_bandwidth("10 Gbit/s")` is 1.25e9 bytes/s; `parse_bandwidth("1.25 GB/s")` is the same.
Decimal prefixes (k, M, G, T) are powers of 1000, binary ones (Ki, Mi, Gi, Ti) powers of 1024.
"""

from __future__ import annotations

import math
import re

_NUMBER = r"(?P<value>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
_QUANTITY = re.compile(rf"^\s*{_NUMBER}\s*(?P<unit>[A-Za-zµμ/]+)\s*$")

_PREFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "Ki": 1024.0, "Mi": 1024.0**2, "Gi": 1024.0**3, "Ti": 1024.0**4}

_TIME_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ns": 1e-9, "min": 60.0}


def _bits_or_bytes(unit: str) -> tuple[float, str] | None:
    """Split 'Gbit' / 'GB' / 'GiB' / 'Mb' into (multiplier in bytes, base). None when not a size."""
    for base, bytes_per in (("bit", 1 / 8), ("b", 1 / 8), ("B", 1.0), ("byte", 1.0), ("bytes", 1.0)):
        if unit.endswith(base):
            prefix = unit[: -len(base)]
            if prefix in _PREFIX:
                return _PREFIX[prefix] * bytes_per, base
    return None


def _split(text: str, what: str, example: str) -> tuple[float, str]:
    match = _QUANTITY.match(str(text))
    if not match:
        raise ValueError(f"'{text}' is not a {what} (write a number and a unit, e.g. '{example}')")
    return float(match.group("value")), match.group("unit")


def _finite(value: float, text: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"'{text}' is too large to be a real quantity")
    return value


def parse_bandwidth(text: str) -> float:
    """'10 Gbit/s', '100 Mbit/s', '1.25 GB/s', '15.7 GB/s', '800 MiB/s' -> bytes per second."""
    value, unit = _split(text, "bandwidth", "10 Gbit/s")
    if not unit.endswith("/s"):
        raise ValueError(f"'{text}' is not a bandwidth: the unit must end in /s (e.g. '10 Gbit/s', '1.25 GB/s')")
    size = _bits_or_bytes(unit[:-2])
    if size is None:
        raise ValueError(f"unknown bandwidth unit '{unit}' in '{text}' (use bit/s or B/s with k, M, G, T, Ki, Mi, Gi)")
    if value < 0:
        raise ValueError(f"bandwidth '{text}' is negative (a link carries a positive rate)")
    return _finite(value * size[0], text)


def parse_time(text: str) -> float:
    """'0.5 ms', '50 us', '0.2 s' -> seconds."""
    value, unit = _split(text, "time", "0.5 ms")
    if unit not in _TIME_S:
        raise ValueError(f"unknown time unit '{unit}' in '{text}' (use s, ms, us or ns)")
    if value < 0:
        raise ValueError(f"time '{text}' is negative")
    return _finite(value * _TIME_S[unit], text)


def parse_memory(text: str) -> float:
    """'24 GiB', '11 GB', '512 MiB' -> bytes. Bits are accepted only when spelled 'bit'."""
    value, unit = _split(text, "memory size", "24 GiB")
    size = _bits_or_bytes(unit)
    if size is None:
        raise ValueError(f"unknown memory unit '{unit}' in '{text}' (use B, kB, MB, GB, KiB, MiB, GiB)")
    if size[1] == "b":  # '24 Gb' is almost always a typo for GB: refuse rather than guess
        raise ValueError(f"'{text}' is ambiguous: write 'GB'/'GiB' for bytes or 'Gbit' for bits")
    if value < 0:
        raise ValueError(f"memory size '{text}' is negative")
    return _finite(value * size[0], text)


def format_bandwidth(bytes_per_s: float) -> str:
    bits = bytes_per_s * 8
    for scale, name in ((1e12, "Tbit/s"), (1e9, "Gbit/s"), (1e6, "Mbit/s"), (1e3, "kbit/s")):
        if bits >= scale:
            return f"{bits / scale:.3g} {name}"
    return f"{bits:.3g} bit/s"


def format_bytes(n_bytes: float) -> str:
    for scale, name in ((1024.0**4, "TiB"), (1024.0**3, "GiB"), (1024.0**2, "MiB"), (1024.0, "KiB")):
        if abs(n_bytes) >= scale:
            return f"{n_bytes / scale:.3g} {name}"
    return f"{n_bytes:.0f} B"


def format_time(seconds: float) -> str:
    """Three significant figures in us, ms or s: the smallest unit whose rounded value stays under 1,000
    (0.9996 s is "1 s", not "1e+03 ms")."""
    for scale, unit in ((1e-6, "us"), (1e-3, "ms"), (1.0, "s")):
        value = float(f"{seconds / scale:.3g}")
        if value < 1000:
            return f"{value:.3g} {unit}"
    return f"{seconds:,.0f} s"
