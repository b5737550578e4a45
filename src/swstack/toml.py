"""The TOML reader: the standard library's on Python 3.11+, tomli (same API) before."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib as _toml
else:  # pragma: no cover - exercised on Python 3.10 hosts only
    import tomli as _toml

loads = _toml.loads
TOMLDecodeError = _toml.TOMLDecodeError
