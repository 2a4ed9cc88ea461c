"""`ggufops bench`: measurements, eval-set pinning, --record, DVC metrics."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from ggufops.cli import main
from ggufops.errors import BenchError, EvalSetError
from ggufops.gates import bench
from ggufops.gates.cache import BenchCache
from ggufops.llama import llm
from ggufops.registry.registry import Registry, VersionRef
from testing.repos import git, git_commit, write_version
from testing.toys import fast_policy

FAST = bench.settings_from(fast_policy())


def test_policy_overrides_merge_per_environment() -> None:
    policy = {"gates": {"default": {"max_degradation": 0.05, "rounds": 3,
                                    "speed": {"pp_tokens": 512, "tg_tokens": 64}},
                        "environments": {"staging": {"rounds": 2, "speed": {"tg_tokens": 8}}}}}
    staging = bench.gate_policy(policy, "staging")
    assert staging == {"max_degradation": 0.05, "rounds": 2,
                       "speed": {"pp_tokens": 512, "tg_tokens": 8}}
    assert bench.gate_policy(policy, "production")["rounds"] == 3
    settings = bench.settings_from(staging)
    assert (settings.rounds, settings.pp_tokens, settings.tg_tokens) == (2, 512, 8)
    assert settings.eval_tokens == bench.Settings().eval_tokens


def test_repository_policy_gives_valid_settings() -> None:
    root = Path(__file__).parents[2]
    policy = yaml.safe_load((root / "registry" / "policy.yaml").read_text())
    settings = bench.settings_from(bench.gate_policy(policy, "production"))
    assert settings.threads is None and settings.n_threads == llm.default_threads()
    assert settings.eval_ctx == 512 and settings.rounds == 3 and settings.max_rounds == 12
    assert settings.n_ctx == 512 and settings.time_budget_s == 60
    assert bench.settings_from(bench.gate_policy(policy, "staging")).time_budget_s == 30


def test_eval_tokens_are_sized_to_the_model() -> None:
    settings = bench.Settings()  # 4,096 tokens at most, 1.5e11 parameter-tokens
    assert settings.eval_token_count(600_000) == 4096  # a toy
    assert settings.eval_token_count(134_515_008) == 1024  # SmolLM2-135M
    assert settings.eval_token_count(8_030_261_248) == 512  # 8B: one chunk
    assert bench.Settings(eval_ctx=256).eval_token_count(134_515_008) == 1024


def _doc(eval_sha: str, name: str = "pydoc-heldout-v1") -> dict[str, Any]:
    return {"name": "toy", "version": "1.0.0", "eval": {"set": name, "sha256": eval_sha}}


def test_missing_eval_set_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EvalSetError) as e:
        bench.load_eval_set(tmp_path, _doc("0" * 64, "gone-v1"))
    assert str(e.value) == ("eval set 'gone-v1' pinned by registry/toy/1.0.0.yaml is missing "
                            "(registry/evals/gone-v1.txt); restore the file from git: eval sets "
                            "are immutable")


def test_changed_eval_set_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "registry" / "evals" / "pydoc-heldout-v1.txt"
    path.parent.mkdir(parents=True)
    path.write_text("edited\n")
    with pytest.raises(EvalSetError, match=r"^registry/evals/pydoc-heldout-v1.txt has sha256 "
                                           r"[0-9a-f]{12}…, but registry/toy/1.0.0.yaml pins "
                                           r"000000000000…; restore the original file"):
        bench.load_eval_set(tmp_path, _doc("0" * 64))
    good = bench.load_eval_set(tmp_path, _doc(hashlib.sha256(b"edited\n").hexdigest()))
    assert good.text == b"edited\n"


def test_prompts_are_fixed_lines_of_the_eval_set(eval_set: bench.EvalSet) -> None:
    prompts = bench.prompts_from(eval_set, 8)
    assert len(prompts) == 8 and prompts == bench.prompts_from(eval_set, 8)
    assert all(0 < len(p) <= bench.PROMPT_BYTES and p in eval_set.text for p in prompts)


def test_bench_file_measures_and_caches_quality(toy_models: dict[str, Path],
                                                eval_set: bench.EvalSet, tmp_path: Path) -> None:
    cache = BenchCache(tmp_path)
    path = toy_models["improved"]
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    metrics, cached, n_scored = bench.bench_file(path, sha, eval_set, FAST, cache, label="t")
    assert set(metrics) == set(bench.METRICS) and not cached
    assert n_scored == (2048 // 256) * 127
    with llm.load(path, n_ctx=256) as model:
        tokens = llm.tokenize(model, eval_set.text)[:2048]
        expected = llm.perplexity(model, tokens, n_ctx=256)
    assert metrics["perplexity"] == round(expected.perplexity, 4)
    assert metrics["nll"] == round(expected.nll, 5)
    assert metrics["pp_tokens_per_s"] > 0 and metrics["tg_tokens_per_s"] > 0
    assert metrics["latency_p50_ms"] > 0 and metrics["latency_p95_ms"] > 0
    assert 10 < metrics["peak_rss_mb"] < 2000
    again, cached, _ = bench.bench_file(path, sha, eval_set, FAST, cache, label="t")
    assert cached and again["perplexity"] == metrics["perplexity"]


def fake_result(ref: str = "toy@1.0.0") -> bench.BenchResult:
    return bench.BenchResult(
        ref=ref, display_id="toy-v1.0.0-q8_0", artifact_sha256="a" * 64,
        eval_set="pydoc-heldout-v1", eval_sha256="b" * 64,
        metrics={"perplexity": 16.8, "nll": 2.82, "pp_tokens_per_s": 40000.0,
                 "tg_tokens_per_s": 12000.0, "latency_p50_ms": 2.1, "latency_p95_ms": 2.5,
                 "load_ms": 5.0, "peak_rss_mb": 51.0},
        provenance={"llama_cpp_python": "0.3.36", "llama_cpp": "abc (ggml 0.25.3)",
                    "cpu": "Test CPU", "threads": 1},
        settings={}, quality_cached=False, n_scored=2040)


def test_record_writes_benchmarks_before_merge_only(registry_repo: Path) -> None:
    registry = Registry(registry_repo)
    git(registry_repo, "checkout", "-q", "-b", "register-toy")
    path = write_version(registry_repo, "toy", "1.0.0")
    before = path.read_text()
    bench.record(registry, VersionRef("toy", "1.0.0"), fake_result())
    text = path.read_text()
    assert text.startswith(before.rstrip("\n") + "\nbenchmarks:\n")
    data = yaml.safe_load(text)["benchmarks"]
    assert data["metrics"]["perplexity"] == 16.8 and data["threads"] == 1
    assert data["eval_sha256"] == "b" * 64 and data["measured_at"].endswith("Z")
    bench.record(registry, VersionRef("toy", "1.0.0"), fake_result())  # replaces, not appends
    assert path.read_text().count("benchmarks:") == 1
    git_commit(registry_repo, "register toy")
    git(registry_repo, "checkout", "-q", "main")
    git(registry_repo, "merge", "-q", "register-toy")
    with pytest.raises(BenchError, match=r"^registry/toy/1.0.0.yaml is already on main: version "
                                         r"files are immutable once merged"):
        bench.record(registry, VersionRef("toy", "1.0.0"), fake_result())


def test_metrics_files_are_read_by_dvc(registry_repo: Path) -> None:
    metrics = registry_repo / "metrics"
    bench.write_metrics(metrics, "toy", fake_result())
    data = json.loads((metrics / "toy.json").read_text())
    assert data["version"] == "1.0.0" and data["perplexity"] == 16.8
    dvc = str(Path(__file__).parents[2] / ".venv" / "bin" / "dvc")
    shown = subprocess.run([dvc, "metrics", "show", "--json"], cwd=registry_repo,
                           capture_output=True, text=True, check=True)
    parsed = json.loads(shown.stdout)
    assert parsed[""]["data"]["metrics/toy.json"]["data"]["tg_tokens_per_s"] == 12000.0


# --- end to end: register on the real S3, then bench through the CLI ----------------------------


def test_bench_command_json_has_numbers_and_provenance(toy_registry: Path,
                                                       toy_models: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["-C", str(toy_registry), "bench", "toy@1.0.0", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["artifact_sha256"] == hashlib.sha256(
        toy_models["baseline"].read_bytes()).hexdigest()
    assert data["provenance"]["llama_cpp_python"] == "0.3.36"
    assert data["provenance"]["threads"] == 1 and data["provenance"]["cpu"] == llm.cpu_model()
    assert data["eval_sha256"] == hashlib.sha256(
        (toy_registry / "registry/evals/pydoc-heldout-v1.txt").read_bytes()).hexdigest()
    assert 10 < data["metrics"]["perplexity"] < 25
    table = CliRunner().invoke(main, ["-C", str(toy_registry), "bench", "toy@1.0.0"])
    assert table.exit_code == 0 and "perplexity" in table.output
    assert "(quality from cache)" in table.output


def test_bench_env_writes_dvc_metrics(toy_registry: Path) -> None:
    result = CliRunner().invoke(main, ["-C", str(toy_registry), "bench", "--env", "production",
                                       "--metrics-dir", str(toy_registry / "metrics")])
    assert result.exit_code == 0, result.output
    data = json.loads((toy_registry / "metrics" / "toy.json").read_text())
    assert data["version"] == "1.0.0" and data["perplexity"] > 10


def test_bench_record_refused_after_merge(toy_registry: Path) -> None:
    result = CliRunner().invoke(main, ["-C", str(toy_registry), "bench", "toy@1.0.0",
                                       "--record"])
    assert result.exit_code == 1
    assert "registry/toy/1.0.0.yaml is already on main" in result.output


def test_bench_with_a_missing_eval_set_fails_clearly(toy_registry: Path) -> None:
    (toy_registry / "registry" / "evals" / "pydoc-heldout-v1.txt").unlink()
    result = CliRunner().invoke(main, ["-C", str(toy_registry), "bench", "toy@1.0.0"])
    assert result.exit_code == 1
    assert "error: eval set 'pydoc-heldout-v1' pinned by registry/toy/1.0.0.yaml is missing" \
        in result.output


def test_bench_needs_a_version_or_an_environment(toy_registry: Path) -> None:
    result = CliRunner().invoke(main, ["-C", str(toy_registry), "bench"])
    assert result.exit_code == 2
    assert "name one version (NAME@X.Y.Z) or --env ENV" in result.output
