"""`ggufops toy`, `bench`, `gate`: toy models and llama.cpp benchmark gates."""

from __future__ import annotations

from pathlib import Path

import click

from ggufops.cli.options import (
    VERSION_REF,
    dry_run_option,
    json_option,
    print_json,
    registry_from,
    repo_path,
)
from ggufops.errors import UsageError
from ggufops.gates import bench, gate, report
from ggufops.gates.cache import DEFAULT_DIR, BenchCache, NoCache
from ggufops.llama import toy
from ggufops.registry.registry import Registry, VersionRef

store_option = click.option(
    "--store", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Content-addressed artifact store (default: $GGUFOPS_STORE or .ggufops/store).")
no_cache_option = click.option(
    "--no-cache", is_flag=True,
    help="Measure quality again instead of reusing .ggufops/cache results.")
threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None,
    help="llama.cpp threads (default: gates.threads in registry/policy.yaml, else every "
         "core this job may use).")


def _store(registry: Registry, store: Path | None) -> Path:
    from ggufops.artifacts import pull

    return store or pull.default_store(registry.root)


def _cache(registry: Registry, no_cache: bool) -> BenchCache:
    return NoCache() if no_cache else BenchCache(registry.root / DEFAULT_DIR)


@click.command("toy")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for the GGUF files (default: .ggufops/toys).")
@click.option("--only", "only", multiple=True, metavar="NAME",
              help=f"Build only these (repeatable): {', '.join(toy.toy_names())}.")
@json_option
@click.pass_context
def toy_cmd(ctx: click.Context, *, out: Path | None, only: tuple[str, ...], as_json: bool) -> None:
    """Build tiny llama GGUF models (baseline, improved, degraded, slow, quantized)."""
    target = out or repo_path(ctx) / ".ggufops" / "toys"
    rows = toy.describe(toy.build_toy_set(target, only or None))
    if as_json:
        print_json(rows)
        return
    for row in rows:
        click.echo(f"{row['name']:<18}{row['quantization']:<8}{row['size']:>10,}  "
                   f"{row['sha256'][:12]}  {row['path']}")
    click.echo(f"held-out eval text: registry/evals/{toy.EVAL_SET}.txt")


@click.command("bench")
@click.argument("ref", type=VERSION_REF, required=False)
@click.option("--env", "env", default=None, metavar="ENV",
              help="Bench every version ENV runs (instead of one REF).")
@click.option("--metrics-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write <model>.json DVC metrics here (with --env).")
@click.option("--record", is_flag=True,
              help="Write `benchmarks:` into the version file (only before it is merged).")
@store_option
@threads_option
@no_cache_option
@json_option
@click.pass_context
def bench_cmd(ctx: click.Context, *, ref: VersionRef | None, env: str | None,
              metrics_dir: Path | None, record: bool, store: Path | None,
              threads: int | None, no_cache: bool, as_json: bool) -> None:
    """Measure NAME@X.Y.Z on its pinned eval set: perplexity, pp/tg tokens/s, latency."""
    if (ref is None) == (env is None):
        raise UsageError("name one version (NAME@X.Y.Z) or --env ENV, not both or neither")
    if record and ref is None:
        raise UsageError("--record needs one version (NAME@X.Y.Z)")
    registry = registry_from(ctx)
    settings = bench.with_threads(
        bench.settings_from(bench.gate_policy(registry.policy(), env)), threads)
    store_root, cache = _store(registry, store), _cache(registry, no_cache)
    if ref is not None:
        results = [bench.bench_version(registry, ref, store_root, settings, cache)]
    else:
        assert env is not None
        results = bench.bench_environment(registry, env, store_root, settings, cache)
    _bench_outputs(registry, results, record=record, metrics_dir=metrics_dir)
    if as_json:
        print_json([r.to_json() for r in results] if env else results[0].to_json())
        return
    click.echo("\n\n".join(bench.format_result(r) for r in results) or f"{env} runs no models")


def _bench_outputs(registry: Registry, results: list[bench.BenchResult], *, record: bool,
                   metrics_dir: Path | None) -> None:
    for result in results:
        ref = VersionRef.parse(result.ref)
        if record:
            path = bench.record(registry, ref, result)
            click.echo(f"recorded benchmarks in {path.relative_to(registry.root)}", err=True)
        if metrics_dir is not None:
            bench.write_metrics(metrics_dir, ref.name, result)


@click.command("gate")
@click.option("--base", default=None, metavar="REF",
              help="Compare with the environments at REF (default: merge-base of HEAD with "
                   "the default branch, else HEAD~1).")
@click.option("--env", "env", default=None, metavar="ENV", help="Gate only this environment.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the Markdown report here ($GITHUB_STEP_SUMMARY: append).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the report with every number as JSON here.")
@click.option("--runtime", "runtime", default=None, metavar="PYTHON",
              help="Gate a runtime upgrade: the baseline runtime's Python (a venv with "
                   "llama-cpp-python); needs --against-runtime. Every model of --env "
                   "(default production) is measured under both.")
@click.option("--against-runtime", "against_runtime", default=None, metavar="PYTHON",
              help="The candidate runtime's Python (the upgrade).")
@click.option("--runtime-llama-args", default=None, metavar="JSON",
              help="llama_cpp.Llama settings for the baseline runtime, e.g. '{\"type_k\": 2}'.")
@click.option("--against-llama-args", default=None, metavar="JSON",
              help="llama_cpp.Llama settings for the candidate runtime.")
@store_option
@threads_option
@no_cache_option
@dry_run_option
@click.pass_context
def gate_cmd(ctx: click.Context, *, base: str | None, env: str | None, report_path: Path | None,
             json_path: Path | None, store: Path | None, threads: int | None, no_cache: bool,
             dry_run: bool, runtime: str | None, against_runtime: str | None,
             runtime_llama_args: str | None, against_llama_args: str | None) -> None:
    """Benchmark every changed model against the version it replaces; exit 1 on a regression.

    Judged with the base's registry/policy.yaml: a change to the policy applies from the
    next change on (the report says so). With --runtime/--against-runtime: the same
    artifacts under two runtimes instead (docs/gates.md, "Runtime upgrades")."""
    registry = registry_from(ctx)
    if runtime or against_runtime:
        from ggufops.gates import runtimegate

        if not (runtime and against_runtime):
            raise UsageError("--runtime and --against-runtime go together: the Python of "
                             "the runtime now in use and of the upgrade")
        runtimes = [runtimegate.Runtime(runtime, runtimegate.parse_llama_args(
                        runtime_llama_args, "--runtime-llama-args")),
                    runtimegate.Runtime(against_runtime, runtimegate.parse_llama_args(
                        against_llama_args, "--against-llama-args"))]
        result = runtimegate.gate_runtimes(registry, env or "production", runtimes,
                                           _store(registry, store), base=base,
                                           threads=threads)
        _gate_outputs(result, report_path, json_path)
        return
    plan = gate.plan_gates(registry, base, env)
    if dry_run:
        _print_plan(plan)
        return
    result = gate.run_gates(registry, plan, _store(registry, store), _cache(registry, no_cache),
                            threads=threads)
    _gate_outputs(result, report_path, json_path)


def _gate_outputs(result: gate.GateReport, report_path: Path | None,
                  json_path: Path | None) -> None:
    markdown = report.render_markdown(result)
    if report_path:
        report.write_report(report_path, markdown)
    if json_path:
        report.write_report(json_path, report.render_json(result))
    click.echo(markdown, nl=False)
    gate.check(result)


def _print_plan(plan: gate.GatePlan) -> None:
    click.echo(f"base: {plan.base}" + (f" ({plan.base_sha[:12]})" if plan.base_sha else ""))
    if not plan.jobs:
        click.echo("no model version changes: nothing to gate")
    for job in plan.jobs:
        frm = job.baseline.version if job.baseline else "(new)"
        role = " canary" if job.role == "canary" else ""
        click.echo(f"{job.env}: {job.model}{role} {frm} -> {job.candidate.version}")


COMMANDS: list[click.Command] = [toy_cmd, bench_cmd, gate_cmd]
