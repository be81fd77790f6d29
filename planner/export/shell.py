"""Shell lines the exported launch scripts share."""

from __future__ import annotations

import shlex


def default_to(variable: str, value: str) -> str:
    """A bash line giving `variable` the value `value` unless the environment sets it. The value is one
    quoted word: a path such as `/models/$(id)` is taken as written, never run (inside "${VAR:-...}" it
    would be expanded)."""
    return f'if [ -z "${{{variable}:-}}" ]; then {variable}={shlex.quote(value)}; fi' if value \
        else f'{variable}="${{{variable}:-}}"'
