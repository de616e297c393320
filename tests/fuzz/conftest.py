"""Fuzzing budgets. ``make test`` runs a small, derandomized budget; ``SKEIN_FUZZ=1`` (``make
fuzz``) runs 100,000 random cases per test (``SKEIN_FUZZ_EXAMPLES`` overrides the number).

The fuzz tests take their settings from here (the profile is applied per test, not loaded
globally, so the other test directories keep their own settings).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

__all__ = [
    "FUZZ",
    "FUZZ_EXAMPLES",
    "FUZZ_SETTINGS",
    "FUZZ_STATEFUL_BATCHES",
    "FUZZ_STATEFUL_SETTINGS",
]

FUZZ = os.environ.get("SKEIN_FUZZ", "") not in ("", "0")
FUZZ_EXAMPLES = int(os.environ.get("SKEIN_FUZZ_EXAMPLES", "100000"))

_SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "skein-fuzz-quick",
    max_examples=200,
    derandomize=True,  # the same cases on every run: make test never flakes on fuzzing luck
    deadline=None,  # a loaded 2-core machine is slow; bounds are asserted, not timed
    suppress_health_check=_SLOW_IS_FINE,
    stateful_step_count=40,
)
settings.register_profile(
    "skein-fuzz",
    max_examples=FUZZ_EXAMPLES,
    derandomize=False,
    deadline=None,
    suppress_health_check=_SLOW_IS_FINE,
    stateful_step_count=60,
    print_blob=True,
)

FUZZ_SETTINGS = settings.get_profile("skein-fuzz" if FUZZ else "skein-fuzz-quick")

# A stateful case is a whole run of up to ``stateful_step_count`` steps, so make test runs fewer.
# Hypothesis keeps ~0.3 MB of bookkeeping per stateful case until its run ends (1.5 GB for 5,000),
# so the fuzz budget is split into runs of at most 2,500 cases, each a pytest case: < 1 GB each.
_BATCH = 2500
FUZZ_STATEFUL_BATCHES = max(1, -(-FUZZ_EXAMPLES // _BATCH)) if FUZZ else 1
FUZZ_STATEFUL_SETTINGS = settings(
    FUZZ_SETTINGS, max_examples=-(-FUZZ_EXAMPLES // FUZZ_STATEFUL_BATCHES) if FUZZ else 60
)
