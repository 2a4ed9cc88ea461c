"""The one DVC pointer reader: the fast scan, its YAML fallback, and the strict wrapper."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ggufops.artifacts.dvc import read_pointer
from ggufops.artifacts.dvctrack import pointer_text
from ggufops.errors import DvcError
from ggufops.registry.dvcpointer import PointerFacts, pointer_from_yaml, scan_pointer

MD5 = "0123456789abcdef0123456789abcdef"


def test_the_layout_dvc_writes_is_scanned_like_yaml_reads_it() -> None:
    text = pointer_text(MD5, 4096, "2.1.0.gguf")
    assert scan_pointer(text) == PointerFacts(MD5, 4096, "2.1.0.gguf")
    assert pointer_from_yaml(yaml.safe_load(text)) == scan_pointer(text)


@pytest.mark.parametrize("text", [
    f"outs:\n- md5: {MD5}\n  size: 1\n  path: '2.1.0.gguf'\n",  # quoted path: YAML reads it
    f"outs:\n- md5: {MD5}\n  size: 1\n  path: a\n- md5: {MD5}\n  size: 2\n  path: b\n",
    "outs: []\n",
])
def test_other_layouts_are_left_to_yaml(text: str) -> None:
    facts = scan_pointer(text)
    assert facts is None or facts.path is None


def test_yaml_fallback_is_lenient() -> None:
    assert pointer_from_yaml({"outs": [{"md5": MD5}]}) == PointerFacts(MD5, None, None)
    assert pointer_from_yaml("not a mapping") == PointerFacts(None, None, None)


def test_read_pointer_is_strict(tmp_path: Path) -> None:
    good = tmp_path / "1.0.0.gguf.dvc"
    good.write_text(f"outs:\n- md5: {MD5}\n  size: 7\n  path: '1.0.0.gguf'\n")
    out = read_pointer(good)
    assert (out.md5, out.size, out.path) == (MD5, 7, "1.0.0.gguf")
    bad = tmp_path / "2.0.0.gguf.dvc"
    bad.write_text(f"outs:\n- md5: {MD5}\n  path: 2.0.0.gguf\n")
    with pytest.raises(DvcError, match="not a DVC pointer with outs"):
        read_pointer(bad)
    wrong = tmp_path / "3.0.0.gguf.dvc"
    wrong.write_text("outs:\n- md5: nothex\n  size: 7\n  path: 3.0.0.gguf\n")
    with pytest.raises(DvcError, match="is not an md5"):
        read_pointer(wrong)
