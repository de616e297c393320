"""Load generation for Skein: mobile-like clients, handoff schedules, scenarios, reports, plots.

It needs the ``loadgen`` extra (``pip install 'skein[loadgen]'``): :data:`EXTRA_MODULES` are
the modules that extra brings, which a gateway alone never imports. :func:`missing_modules`
says which of them cannot be imported, without importing any (matplotlib alone takes a
noticeable fraction of a second), so ``skein loadgen`` can say what to install before it starts.
"""

from __future__ import annotations

import importlib.util

__all__ = ["EXTRA", "EXTRA_MODULES", "missing_modules"]

EXTRA = "loadgen"
# The import names of the extra's distributions (hdrhistogram installs ``hdrh``).
EXTRA_MODULES = ("hdrh", "matplotlib", "psutil")


def missing_modules() -> list[str]:
    """The names in :data:`EXTRA_MODULES` that cannot be imported here, in that order.

    Finds each module's spec without running it. A module set to ``None`` in ``sys.modules``
    (the documented way to block an import) counts as missing. Never raises.
    """
    missing = []
    for name in EXTRA_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # ValueError: sys.modules[name] is None
            found = False
        if not found:
            missing.append(name)
    return missing
