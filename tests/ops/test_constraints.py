"""Reproducible installs: constraints.txt pins every dependency pyproject declares at a version it allows, and the
Makefile (CI) and both Docker images install with it, dependencies before sources."""

from __future__ import annotations

import re
import sys

import pytest
from packaging.requirements import Requirement

from tests.ops.test_compose import DOCKERFILE, REPO

sys.path.insert(0, str(REPO / "tools"))
import deps  # noqa: E402  (tools/deps.py runs standalone in the image; imported here the same way)

CONSTRAINTS = REPO / "constraints.txt"
MAKEFILE = REPO / "Makefile"


def pins(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            found[deps.canonical(name)] = version
    return found


def unsatisfied(requirements: list[str], pinned: dict[str, str]) -> list[str]:
    """The requirements that the pins leave out or pin at a version the requirement excludes."""
    problems = []
    for text in requirements:
        requirement = Requirement(text)
        version = pinned.get(deps.canonical(requirement.name))
        if version is None:
            problems.append(f"{requirement.name}: not in constraints.txt")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement.name}=={version} does not satisfy {text!r}")
    return problems


def test_every_declared_dependency_is_pinned_at_an_allowed_version():
    pinned = pins(CONSTRAINTS.read_text())
    declared = deps.requirements(list(deps.ALL_EXTRAS)) + [f"{name}" for name in deps.UNDECLARED]
    assert unsatisfied(declared, pinned) == []


@pytest.mark.parametrize("edit, expected", [
    (lambda text: re.sub(r"(?m)^faust-streaming==.*\n", "faust-streaming==0.11.0\n", text),
     "faust-streaming==0.11.0 does not satisfy"),
    (lambda text: re.sub(r"(?m)^tenacity==.*\n", "", text), "tenacity: not in constraints.txt"),
])
def test_the_pin_check_catches_a_wrong_or_missing_pin(edit, expected):
    problems = unsatisfied(deps.requirements(list(deps.ALL_EXTRAS)), pins(edit(CONSTRAINTS.read_text())))
    assert any(problem.startswith(expected) for problem in problems), problems


def test_requirements_expand_the_projects_own_extras():
    dev = deps.requirements(["dev"])
    assert "faust-streaming==0.15.3" in dev and "nvidia-pytriton==0.7.0" in dev  # via popscore[stream,...,embedded]
    assert not any(Requirement(r).name == "popscore" for r in dev)
    assert "torch" not in {Requirement(r).name for r in deps.requirements(["stream", "serving"])}


def pip_installs(text: str) -> list[str]:
    joined = text.replace("\\\n", " ")
    return [m.group(0) for m in re.finditer(r"pip install[^\n&]*", joined) if "--upgrade pip" not in m.group(0)]


def test_the_makefile_installs_with_the_constraints():
    text = MAKEFILE.read_text()
    constraints_flag = re.search(r"^CONSTRAINTS\s*=\s*(.+)$", text, re.M).group(1).strip()
    assert constraints_flag == "-c constraints.txt"
    installs = pip_installs(text.replace("$(CONSTRAINTS)", constraints_flag))
    assert installs and all("-c constraints.txt" in line for line in installs), installs
    assert any("--no-deps aisfx" in line for line in installs)


def stages(text: str) -> dict[str, str]:
    parts = re.split(r"(?m)^FROM\s+\S+\s+AS\s+(\S+)\s*$", text)
    return dict(zip(parts[1::2], parts[2::2]))


def test_the_dockerfile_installs_pinned_dependencies_before_the_sources():
    text = DOCKERFILE.read_text()
    installs = pip_installs(text)
    assert installs and all("-c constraints.txt" in line for line in installs), installs
    assert re.search(r"(?m)^COPY [^\n]*constraints\.txt", stages(text)["base"])
    for name, body in stages(text).items():
        if name == "base":
            continue
        first_source_copy = body.index("COPY popscore/")
        dependencies = body.index("deps.py requirements")
        package = body.index("--no-deps .")
        assert dependencies < first_source_copy < package, f"stage {name}: dependencies, then sources, then the package"


def test_the_trainer_image_gets_its_torch_build_and_the_audio_encoder_weights():
    trainer = stages(DOCKERFILE.read_text())["trainer"]
    assert re.search(r"ARG TORCH_INDEX_URL=\S+/whl/cpu\b", trainer)  # the CPU build unless told otherwise
    assert "--index-url \"$TORCH_INDEX_URL\"" in trainer
    assert "--no-deps aisfx" in trainer and "get_path_modelWeights" in trainer
    assert "TORCH_INDEX_URL" not in stages(DOCKERFILE.read_text())["worker"]
