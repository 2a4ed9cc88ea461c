"""The registry template: the files a new registry (a fork, the demo's scratch copy) starts with."""

from __future__ import annotations

import shutil
from pathlib import Path

from ggufops.errors import NotARegistry

# Paths, relative to a registry root, that make an empty registry ready to use.
TEMPLATE_PATHS = (
    "registry/schema",
    "registry/policy.yaml",
    "registry/evals",
    "environments",
    ".dvc/config",
    ".dvc/.gitignore",
    ".dvcignore",
    ".gitignore",
    "dvc.yaml",
)


def copy_template(source: Path, dest: Path) -> list[str]:
    """Copy the template files that exist under `source` into `dest`; return what was copied."""
    copied = []
    for rel in TEMPLATE_PATHS:
        src = source / rel
        if not src.exists():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, dirs_exist_ok=True)
        else:
            shutil.copy2(src, target)
        copied.append(rel)
    return copied


def project_root() -> Path:
    """The checkout this package was installed from (editable install), holding the template."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "registry" / "policy.yaml").is_file():
        raise NotARegistry(
            f"the ggufops template is not beside the package ({root}); run from a clone of "
            "the ggufops repository (`make demo` installs it in editable mode)"
        )
    return root
