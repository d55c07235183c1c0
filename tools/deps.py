"""The project's dependencies, for installs that must not need the sources: the Docker images install them
before copying the code (a code change then reuses the dependency layer), pinned by ``constraints.txt``.

    python tools/deps.py requirements stream,serving   # pyproject's requirements for those extras (stdlib only)
    python tools/deps.py constraints > constraints.txt  # pins of the installed closure (run in the dev venv)

Standalone on purpose: the image runs it before popscore is installed, so it imports nothing of popscore.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# Installed beside the project but not declared by it: aisfx's wheel pins numpy==1.23 and librosa==0.9.2, so
# the Makefile and the trainer image install it with --no-deps (pyproject's `train` extra says why).
UNDECLARED = ("aisfx",)
ALL_EXTRAS = ("stream", "serving", "embedded", "s3", "train", "dev")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[([^\]]*)\])?")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(extras: list[str], pyproject: Path = PYPROJECT) -> list[str]:
    """The base dependencies and those of ``extras``, with the project's references to its own extras
    (``popscore[stream,...]``) expanded."""
    project = tomllib.loads(pyproject.read_text())["project"]
    own, optional = canonical(project["name"]), project.get("optional-dependencies", {})
    found: list[str] = list(project.get("dependencies", []))
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"pyproject.toml has no extra {extra!r} (it has {', '.join(optional)})")
        seen.add(extra)
        for requirement in optional[extra]:
            match = _NAME.match(requirement)
            if match and canonical(match.group(1)) == own:
                pending += [e.strip() for e in (match.group(3) or "").split(",") if e.strip()]
            elif requirement not in found:
                found.append(requirement)
    return found


def installed_closure(roots: list[str]) -> dict[str, str]:
    """name -> installed version of ``roots`` and everything they require (markers evaluated here), with the
    local version label dropped (``2.13.0+cpu`` -> ``2.13.0``) so any index can satisfy the pin."""
    from importlib import metadata

    from packaging.requirements import Requirement

    pins: dict[str, str] = {}
    done: set[tuple[str, frozenset]] = set()  # a package met again with other extras brings their requirements
    pending = [(Requirement(r), set(Requirement(r).extras)) for r in roots]
    while pending:
        requirement, extras = pending.pop()
        name = canonical(requirement.name)
        if (name, frozenset(extras)) in done:
            continue
        done.add((name, frozenset(extras)))
        try:
            distribution = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{requirement.name} is required but not installed: install the project with "
                             f"all extras first (pip install -e '.[dev,train]')") from None
        pins[name] = distribution.version.split("+", 1)[0]
        for text in distribution.requires or []:
            sub = Requirement(text)
            environments = [{"extra": e} for e in extras] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in environments):
                pending.append((sub, set(sub.extras)))
    return pins


def constraints_text() -> str:
    from importlib import metadata

    pins = installed_closure(requirements(list(ALL_EXTRAS)))
    for name in UNDECLARED:  # installed with --no-deps: the package alone, not its declared requirements
        pins[canonical(name)] = metadata.version(name).split("+", 1)[0]
    header = ("# Exact versions of every package the project installs (all extras), generated from a working\n"
              "# environment by `python tools/deps.py constraints > constraints.txt`. The Makefile, CI and the\n"
              "# Dockerfile install with `-c constraints.txt`; regenerate it after changing a dependency.\n")
    return header + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def main(argv: list[str]) -> None:
    if argv[:1] == ["requirements"] and len(argv) == 2:
        print("\n".join(requirements([e for e in argv[1].split(",") if e])))
    elif argv == ["constraints"]:
        sys.stdout.write(constraints_text())
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
