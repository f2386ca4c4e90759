"""Finding the modules of an extension folder (data formats, export targets, model families): every module in
the folder whose name does not start with ``_`` and that defines the folder's attribute (``FORMAT``, ``TARGET``,
``FAMILY``)."""

from __future__ import annotations

import importlib
import pkgutil


def discover(package: str, path: list[str], attribute: str) -> list:
    """The ``attribute`` of each module in ``package`` (at ``path``, the package's ``__path__``), by module name."""
    found = []
    for module in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if not module.name.startswith("_"):
            found.append(getattr(importlib.import_module(f"{package}.{module.name}"), attribute))
    return found
