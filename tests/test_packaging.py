"""What a gateway installs and imports: no load-generation dependency, and the SDK's public face.

`pip install skein` on a gateway host must not pull what only loadgen and the benchmarks use
(the ``loadgen`` extra), and the gateway's own modules must run without it. Each import check
runs in a fresh interpreter, since this test process has long since imported everything.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The loadgen extra's distributions and the modules they install; and loadgen itself.
EXTRA_DISTRIBUTIONS = {"hdrhistogram", "matplotlib", "psutil"}
FORBIDDEN_MODULES = ("hdrh", "matplotlib", "psutil", "loadgen")
TIMEOUT_S = 120  # a cold interpreter importing aioquic on a loaded 2-core machine


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def _loaded_after(statement: str) -> list[str]:
    """Run ``statement`` in a fresh interpreter; the forbidden modules it left in sys.modules."""
    probe = (
        f"{statement}\n"
        "import json, sys\n"
        f"names = {FORBIDDEN_MODULES!r}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(names))))\n"
    )
    done = _python(probe)
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def _distribution(requirement: str) -> str:
    """``"pyjwt[crypto]>=2.8"`` -> ``"pyjwt"`` (normalized as PEP 503 says)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _project() -> dict[str, object]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        project: dict[str, object] = tomllib.load(fh)["project"]
    return project


def test_the_base_dependencies_leave_out_the_loadgen_extra() -> None:
    project = _project()
    base = {_distribution(r) for r in project["dependencies"]}  # type: ignore[attr-defined]
    assert base & EXTRA_DISTRIBUTIONS == set()
    assert "aioquic" in base  # the parse found the real list
    extras = project["optional-dependencies"]
    assert isinstance(extras, dict)
    assert {_distribution(r) for r in extras["loadgen"]} == EXTRA_DISTRIBUTIONS


def test_the_makefile_installs_the_loadgen_extra() -> None:
    """`make test`, `make demo` and `make bench` all install through the one install step."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    installs = re.findall(r"pip install -q -e '\.\[([a-z,]+)\]'", makefile)
    assert installs and all("loadgen" in extras.split(",") for extras in installs)


@pytest.mark.parametrize(
    "statement",
    [
        "import gateway.cli",
        "import gateway.sdk",
        "from gateway.sdk import *",  # every public name, so the QUIC client is imported too
        "import gateway.server.app",
        "from gateway.cli import _parser; _parser()",
    ],
)
def test_gateway_modules_import_nothing_of_the_loadgen_extra(statement: str) -> None:
    assert _loaded_after(statement) == []


def test_the_probe_sees_a_module_that_is_loaded() -> None:
    """The check above can fail: loadgen's statistics do load the extra."""
    assert _loaded_after("import loadgen.stats") == ["hdrh", "loadgen"]


def test_skein_loadgen_without_the_extra_names_it() -> None:
    """Blocking hdrh (``sys.modules[name] = None`` makes its import fail) stands in for an
    install without the extra: one line naming the extra and the module, status 2."""
    done = _python(
        "import sys\n"
        "sys.modules['hdrh'] = None\n"
        "from gateway.cli import main\n"
        "sys.exit(main(['loadgen', '--help']))\n"
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert "'loadgen' extra" in done.stderr
    assert "missing hdrh" in done.stderr
    assert "pip install 'skein[loadgen]'" in done.stderr


def test_skein_loadgen_with_the_extra_runs_loadgen() -> None:
    done = _python(
        "from gateway.cli import main\nimport sys\nsys.exit(main(['loadgen', '--help']))"
    )
    assert done.returncode == 0, done.stderr
    assert "scenario" in done.stdout


def test_the_sdk_public_face() -> None:
    import gateway.sdk as sdk
    from gateway.errors import ServerError
    from gateway.sdk import ClientConfig, connect
    from gateway.sdk.client import ClientConfig as DefinedConfig
    from gateway.sdk.client import connect as defined_connect

    assert connect is defined_connect and ClientConfig is DefinedConfig
    assert sorted(sdk.__all__) == sorted(sdk._HOMES)
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None
    assert sdk.ServerError is ServerError
    assert set(sdk.__all__) <= set(dir(sdk))
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = sdk.no_such_name  # type: ignore[attr-defined]


def test_importing_the_sdk_leaves_the_quic_engine_unchosen() -> None:
    """``import gateway.sdk`` and its sans-IO session import no engine, so an application may
    still choose one (``SKEIN_QUIC_ENGINE``) after it."""
    done = _python(
        "import sys, gateway.sdk, gateway.sdk.session\n"
        "assert 'gateway.engine' not in sys.modules, 'engine imported'\n"
        "assert 'aioquic' not in sys.modules, 'aioquic imported'\n"
        "from gateway.sdk import connect\n"
        "assert 'gateway.engine' in sys.modules\n"
    )
    assert done.returncode == 0, done.stderr
