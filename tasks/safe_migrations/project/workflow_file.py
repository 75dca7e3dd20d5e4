"""The GitHub workflow `init` writes: this repository's own, fitted to the project.

The workflow lives at the repository's root (found from git) even when the Alembic
project is in a subfolder such as ``backend/``: its run steps then start there
(``defaults.run.working-directory``), the paths of its artifact and cache steps are
prefixed, and the Python version is the project's own.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

PACKAGE = "safe-alembic-migrations"
SUPPORTED = ("3.11", "3.12", "3.13", "3.14")  # what safe-migrations itself runs on
DEFAULT_PYTHON = "3.11"


def repository_root(root: Path) -> Path:
    """The git repository holding ``root`` (``root`` itself outside any repository)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return root
    top = Path(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip() else root
    return top.resolve() if root.resolve().is_relative_to(top.resolve()) else root


def install_line(root: Path) -> str:
    """How the workflow installs the project: as its repository declares it."""
    requirements = sorted(root.glob("requirements*.txt"))
    if requirements:
        files = " ".join(f"-r {p.name}" for p in requirements)
        return f"python -m pip install {files} {PACKAGE}"
    if (root / "pyproject.toml").is_file() and "[project]" in (root / "pyproject.toml").read_text():
        return f"python -m pip install . {PACKAGE}"
    return f"python -m pip install {PACKAGE}  # fill in: also install your project's dependencies"


def python_version(root: Path) -> tuple[str, str | None]:
    """(version, a note when the project's own cannot be used): ``.python-version``
    first, then the oldest supported version that ``requires-python`` admits."""
    pinned = root / ".python-version"
    if pinned.is_file():
        for line in pinned.read_text(encoding="utf-8").splitlines():
            version = line.split("#", 1)[0].strip()
            if version:
                return version, None
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return DEFAULT_PYTHON, None
    wanted = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    spec = wanted.get("requires-python")
    if not spec:
        return DEFAULT_PYTHON, None
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        admitted = [v for v in SUPPORTED if SpecifierSet(spec).contains(f"{v}.0")]
    except InvalidSpecifier:
        return DEFAULT_PYTHON, f"requires-python {spec!r} is not a version specifier"
    if not admitted:
        return DEFAULT_PYTHON, (
            f"pyproject.toml's requires-python {spec!r} admits none of Python "
            f"{', '.join(SUPPORTED)}, which safe-migrations needs; the workflow uses "
            f"{DEFAULT_PYTHON}"
        )
    return admitted[0], None


def fitted_workflow(text: str, root: Path, repository: Path) -> str:
    """The scaffold workflow for the project at ``root`` in ``repository``."""
    text = text.replace("run: python -m pip install -e .", f"run: {install_line(root)}")
    version, _note = python_version(root)
    text = text.replace('PYTHON_VERSION: "3.11"', f'PYTHON_VERSION: "{version}"')
    folder = root.resolve().relative_to(repository.resolve()).as_posix()
    prefix = "" if folder == "." else f"{folder}/"
    dependencies = sorted(p.name for p in root.glob("requirements*.txt")) or (
        ["pyproject.toml"] if (root / "pyproject.toml").is_file() else []
    )
    if dependencies:
        paths = " ".join(f"{prefix}{name}" for name in dependencies)
        text = text.replace(
            "cache-dependency-path: pyproject.toml", f"cache-dependency-path: {paths}"
        )
    else:  # setup-python's pip cache fails without a file to key it on
        text = re.sub(r"\n *cache: pip\n *cache-dependency-path: pyproject.toml", "", text)
    if not prefix:
        return text
    text = re.sub(r"^(\s+(?:path: )?)var/", rf"\g<1>{prefix}var/", text, flags=re.M)
    defaults = (
        f"defaults:\n  run:\n    working-directory: {folder}  # the Alembic project's folder\n\n"
    )
    return text.replace("\njobs:\n", f"\n{defaults}jobs:\n", 1)
