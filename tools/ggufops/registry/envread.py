"""The strict reader of an environment file: schema-validated, errors name file:line.

The lenient reader (`records.environment_from_data` / `records.environment_in`) is for
files that may be broken or old; this one is for a state that must be valid (the agent's
desired state). It imports the schema libraries, so it lives apart from the records.
"""

from __future__ import annotations

from pathlib import Path

from ggufops import yamlio
from ggufops.errors import EnvironmentFileError
from ggufops.registry.records import Environment, environment_from_data
from ggufops.registry.schemas import Validator, check


def read_environment(path: Path, validator: Validator) -> Environment:
    """The environment in `path`; EnvironmentFileError at the first problem's file:line."""
    doc = yamlio.read(path)  # a YAML error already names file:line
    issues = check(validator, doc.data)
    if issues:
        mark = doc.mark(issues[0].path)
        more = f" (+{len(issues) - 1} more)" if len(issues) > 1 else ""
        raise EnvironmentFileError(f"{path}:{mark.line}:{mark.column}: {issues[0].message}"
                                   f"{more}; fix the file (`ggufops validate` lists every "
                                   "problem)")
    return environment_from_data(path.stem, doc.data)
