"""Operator families. Every module in this package registers its ops on import (found by file name)."""
from __future__ import annotations

import importlib
import pkgutil

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _mod.startswith("_") and _mod != "common":
        importlib.import_module(f"{__name__}.{_mod}")
