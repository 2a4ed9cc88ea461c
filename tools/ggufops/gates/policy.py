"""A pull request cannot lower its own bar: the gate judges with the base's policy.

The gate reads `registry/policy.yaml` as it is at the base commit (what the pull request
would merge into), not from the working tree. When the working tree changes the policy,
the gate's code (`tools/`) or the workflows (`.github/workflows/`), the report says so in
a section of its own: such a change applies from the next pull request on, after its own
review. In CI the gate also runs the base's ggufops (gate.yml checks it out), so an edit of
the gate's code cannot judge the change that makes it either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ggufops import git, yamlio
from ggufops.errors import YamlError
from ggufops.gates.result import SelfChanges
from ggufops.registry.registry import POLICY_FILE

TOOL_DIR = "tools/"
WORKFLOW_DIR = ".github/workflows/"


def judging_policy(root: Path, base_sha: str | None,
                   head_policy: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(policy, where it came from): the base commit's, else the working tree's."""
    if base_sha is None:
        return head_policy, "the working tree (no base commit)"
    raw = git.show_file(root, base_sha, POLICY_FILE)
    if raw is None:
        return head_policy, "the working tree (the base has no registry/policy.yaml)"
    try:
        data = yamlio.parse(raw, Path(f"{base_sha[:12]}:{POLICY_FILE}")).data
    except YamlError:
        return head_policy, "the working tree (the base's registry/policy.yaml does not parse)"
    if not isinstance(data, dict):
        return head_policy, "the working tree (the base's registry/policy.yaml is not a mapping)"
    return data, f"the base ({base_sha[:12]}:{POLICY_FILE})"


def self_changes(root: Path, base_sha: str | None, base_policy: dict[str, Any],
                 head_policy: dict[str, Any]) -> SelfChanges | None:
    """What the working tree changes in the policy, the tool and the workflows since base."""
    if base_sha is None:
        return None
    paths = [path for _, path in git.changed_files(root, base_sha)]
    return SelfChanges(
        policy_keys=changed_keys(base_policy, head_policy),
        policy_changed=POLICY_FILE in paths,
        tool_paths=sorted(p for p in paths if p.startswith(TOOL_DIR)),
        workflow_paths=sorted(p for p in paths if p.startswith(WORKFLOW_DIR)),
    )


def changed_keys(before: Any, after: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every leaf that differs; None stands for a missing key."""
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[tuple[str, Any, Any]] = []
        for key in sorted(set(before) | set(after), key=str):
            found += changed_keys(before.get(key), after.get(key), f"{prefix}{key}.")
        return found
    return [] if before == after else [(prefix.rstrip("."), before, after)]
