"""How fast `validate` reads a large registry: 10,000 version files and 20 environments.

Prints wall time and files/second for a full validate, and for `validate --base` as the
number of changed files grows (it should grow linearly with the change, not the history).
Goal from the foundation issue: the full validate under 2 s (gto: 6-12 s for 1,500 versions).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from ggufops.registry.validate import validate_repo
from testing.repos import GIT_TEST_ENV, make_registry, version_doc

N_MODELS = 100
N_VERSIONS = 100  # per model: 10,000 in all
N_ENVS = 20


def populate(root: Path) -> None:
    template = version_doc("m", "1.0.0", root=root)
    for m in range(N_MODELS):
        name = f"model-{m:03d}"
        d = root / "registry" / name
        d.mkdir(parents=True)
        for v in range(N_VERSIONS):
            version = f"1.{v}.0"
            doc = {**template, "name": name, "version": version,
                   "parent_version": f"1.{v - 1}.0" if v else None,
                   "artifact": {**template["artifact"], "file_name": f"{version}.gguf"}}
            (d / f"{version}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
            pointer = {"outs": [{"md5": doc["artifact"]["dvc_md5"],
                                 "size": doc["artifact"]["size"], "hash": "md5",
                                 "path": f"{version}.gguf"}]}
            (d / f"{version}.gguf.dvc").write_text(yaml.safe_dump(pointer, sort_keys=False))
    order = ["staging", "production"]
    for e in range(N_ENVS):
        env = order[e] if e < 2 else f"region-{e:02d}"
        models = {f"model-{m:03d}": {"version": f"1.{(m + e) % N_VERSIONS}.0"}
                  for m in range(N_MODELS)}
        (root / "environments" / f"{env}.yaml").write_text(
            yaml.safe_dump({"environment": env, "models": models}, sort_keys=False))


def timed(root: Path, base: str | None) -> tuple[float, int]:
    start = time.perf_counter()
    problems = validate_repo(root, base=base)
    return time.perf_counter() - start, len(problems)


def main() -> None:
    os.environ.update(GIT_TEST_ENV)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_registry(Path(tmp) / "registry")
        populate(root)
        subprocess.run(["git", "add", "-A"], cwd=root, check=True)
        subprocess.run(["git", "commit", "-qm", "big registry"], cwd=root, check=True)
        n_files = N_MODELS * N_VERSIONS
        timed(root, None)  # warm the page cache, as CI's second read would be
        best = min(timed(root, None)[0] for _ in range(3))
        print(f"validate: {n_files} version files + {N_ENVS} environments: {best:.2f} s "
              f"({n_files / best:,.0f} files/s; goal < 2 s)")
        for changed in (1, 10, 100, 1000):
            for i in range(changed):
                m, v = divmod(i, 10)
                p = root / "registry" / f"model-{m:03d}" / f"9.{v}.0.yaml"
                doc = version_doc(f"model-{m:03d}", f"9.{v}.0", root=root)
                p.write_text(yaml.safe_dump(doc, sort_keys=False))
            t, _ = timed(root, "HEAD")
            base_only = t - best
            print(f"validate --base HEAD with {changed:>4} new files: {t:.2f} s "
                  f"(git part ~{max(base_only, 0):.3f} s)")
            subprocess.run(["git", "clean", "-qfd", "registry"], cwd=root, check=True)


if __name__ == "__main__":
    main()
