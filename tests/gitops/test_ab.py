"""`ggufops ab`: the statistics against values worked out by hand from their formulas, the
report from synthetic windows, then the command against a real server with a canary."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ggufops.artifacts.store import ArtifactStore, file_sha256
from ggufops.gitops import abshadow, abstats
from ggufops.gitops.abtest import HostWindow, build_report
from testing.repos import set_environment
from testing.runtime import GGUFOPS, MODEL, TOKEN, Proc, free_port, http, serve_args, wait_for

# --- statistics ---------------------------------------------------------------------------


def test_ranks_average_ties() -> None:
    assert abstats.ranks([10, 20, 20, 30]) == ([1.0, 2.5, 2.5, 4.0], [1, 2, 1])


def test_mann_whitney_without_ties() -> None:
    # U1 = 0, U2 = 25, mean 12.5, variance 5*5/12*11 = 22.917: z = (25-12.5-0.5)/4.787
    result = abstats.mann_whitney([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert result.statistic == 0
    assert result.z == pytest.approx(2.50672, abs=1e-5)
    assert result.p_value == pytest.approx(0.012186, abs=1e-6)


def test_mann_whitney_corrects_for_ties() -> None:
    # ranks 1.5 1.5 3.5 | 3.5 5.5 5.5: U1 = 0.5; three pairs of ties: sum(t^3-t) = 18;
    # variance 9/12 * (7 - 18/30) = 4.8; z = (8.5-4.5-0.5)/sqrt(4.8) = 1.59752
    result = abstats.mann_whitney([1, 1, 2], [2, 3, 3])
    assert result.statistic == 0.5
    assert result.z == pytest.approx(1.59752, abs=1e-5)
    assert result.p_value == pytest.approx(0.110149, abs=1e-6)
    assert abstats.mann_whitney([2, 3, 3], [1, 1, 2]).p_value == pytest.approx(result.p_value)


def test_mann_whitney_on_conovers_example() -> None:
    # the example of scipy.stats.mannwhitneyu's documentation: U = 17; exact p = 0.1111,
    # the asymptotic (continuity-corrected) p is 0.11135
    result = abstats.mann_whitney([19, 22, 16, 29, 24], [20, 11, 17, 12])
    assert result.statistic == 17
    assert result.p_value == pytest.approx(0.111347, abs=1e-6)


def test_mann_whitney_of_identical_samples_finds_nothing() -> None:
    assert abstats.mann_whitney([1.0, 1.0], [1.0, 1.0]).p_value == 1.0
    with pytest.raises(ValueError):
        abstats.mann_whitney([], [1.0])


def test_two_proportions() -> None:
    # pooled 0.15, se = sqrt(0.15*0.85*(2/100)) = 0.050498: z = -0.1/0.050498
    result = abstats.two_proportions(10, 100, 20, 100)
    assert result.z == pytest.approx(-1.98030, abs=1e-5)
    assert result.p_value == pytest.approx(0.047670, abs=1e-6)
    assert abstats.two_proportions(0, 50, 0, 80).p_value == 1.0


def test_sample_size_for_error_rates() -> None:
    # (1.95996 + 0.84162)^2 * (0.0475 + 0.09) / 0.05^2 = 431.5 -> 432 (the textbook figure)
    assert abstats.needed_per_group(0.05, 0.10) == 432
    assert abstats.needed_per_group(0.1, 0.1) is None
    assert abstats.proportion_test_valid(10, 100, 20, 100)
    assert not abstats.proportion_test_valid(1, 100, 2, 100)


# --- the report -------------------------------------------------------------------------------


def rows(version: str, latencies: list[float], errors: int = 0,
         role: str = "primary") -> list[dict[str, Any]]:
    ok = [{"version": version, "role": role, "ok": True, "latency_s": lat, "prompt_tokens": 3,
           "completion_tokens": 5} for lat in latencies]
    bad = [{"version": version, "role": role, "ok": False, "latency_s": 0.01,
            "prompt_tokens": 0, "completion_tokens": 0}] * errors
    return ok + bad


def test_report_summarizes_per_version_across_hosts() -> None:
    fast = [0.1 + i / 1000 for i in range(30)]
    slow = [0.2 + i / 1000 for i in range(30)]
    windows = [
        HostWindow("http://a", rows("1.0.0", fast[:15]) + rows("1.1.0", slow[:15], 1, "canary"),
                   [{"version": "1.1.0", "rating": 2}, {"version": "1.1.0", "rating": 3}]),
        HostWindow("http://b", rows("1.0.0", fast[15:]) + rows("1.1.0", slow[15:], 1, "canary"),
                   [{"version": "1.0.0", "rating": 5}]),
    ]
    report = build_report("production", MODEL, "1.0.0", 0.0, windows)
    old, new = report.versions
    assert (old.version, old.hosts, old.requests, old.errors, old.roles) == (
        "1.0.0", 2, 30, 0, ["primary"])
    assert (new.requests, new.errors, new.roles) == (32, 2, ["canary"])
    assert new.error_rate == pytest.approx(2 / 32)
    assert old.latency_p50_s == pytest.approx(0.1145)
    assert new.tokens_per_request == 8 and (new.ratings, new.mean_rating) == (2, 2.5)
    (comparison,) = report.comparisons
    assert (comparison.version, comparison.baseline) == ("1.1.0", "1.0.0")
    assert comparison.latency_p_value is not None and comparison.latency_p_value < 1e-6
    assert comparison.error_rate_p_value is not None and comparison.error_rate_p_value > 0.05
    assert any("error rate" in w and "requests per version" in w for w in comparison.warnings)


def test_few_requests_warn_about_latency() -> None:
    windows = [HostWindow("http://a", rows("1.0.0", [0.1, 0.2]) + rows("1.1.0", [0.3]), [])]
    (comparison,) = build_report("production", MODEL, "1.0.0", 0.0, windows).comparisons
    assert any(w.startswith("latency: 1 vs 2") for w in comparison.warnings)


# --- the command against a real server -----------------------------------------------------------


@pytest.fixture
def canary_server(tmp_path: Path, runtime_models: dict[str, Path]) -> Any:
    store = ArtifactStore(tmp_path / "store")
    store.prepare()
    (tmp_path / "token").write_text(TOKEN)
    proc = Proc(serve_args(store.root, tmp_path / "token", port=free_port()),
                tmp_path / "serve.log")
    try:
        for version, toy, role in (("2.0.0", "baseline", {}),
                                   ("2.1.0", "improved", {"role": "canary", "weight": 50})):
            digest = file_sha256(runtime_models[toy])
            shutil.copyfile(runtime_models[toy], store.path_for(digest))
            body = {"name": MODEL, "version": version, "sha256": digest, **role,
                    "inference": {"temperature": 0.0, "max_tokens": 2}}
            assert http("POST", f"{proc.url}/admin/models", body, token=TOKEN)[0] == 201
        yield proc, tmp_path / "token"
    finally:
        proc.stop()


def test_ab_reports_what_each_version_served(canary_server: Any, registry_repo: Path) -> None:
    proc, token_file = canary_server
    set_environment(registry_repo, "production", {MODEL: "2.0.0"})
    served: dict[str, int] = {}
    for user in range(24):
        status, answer = http("POST", f"{proc.url}/v1/completions",
                              {"model": MODEL, "prompt": "def ", "user": f"u{user}"})
        assert status == 200
        version = answer["model"].split("-v")[1]
        served[version] = served.get(version, 0) + 1
        assert http("POST", f"{proc.url}/v1/feedback", {"id": answer["id"], "rating": 4})[0] == 200
    args = [str(GGUFOPS), "-C", str(registry_repo), "ab", "--env", "production", "--model",
            MODEL, "--host", proc.url, "--token-file", str(token_file)]
    done = subprocess.run([*args, "--json"], capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    counts = {v["version"]: v["requests"] for v in report["versions"]}
    assert counts == served and len(counts) == 2  # the toy display ids: MODEL-vX.Y.Z
    assert {v["version"]: v["roles"] for v in report["versions"]} == {
        "2.0.0": ["primary"], "2.1.0": ["canary"]}
    assert all(v["mean_rating"] == 4 for v in report["versions"])
    assert report["comparisons"][0]["baseline"] == "2.0.0"
    text = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    assert "2.1.0 vs 2.0.0: latency" in text
    bad = subprocess.run([*args[:-4], "--host", f"http://127.0.0.1:{free_port()}",
                          "--token-file", str(token_file)], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 1
    assert "cannot reach the server" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


# --- shadow versions ---------------------------------------------------------------------------


def shadow_stats(version: str, mirrored: int, exact: int, overlap: float,
                 shadow: list[float], primary: list[float], **counts: int) -> dict[str, Any]:
    return {"version": version, "mirrored": mirrored, "exact_matches": exact,
            "token_overlap_mean": overlap, "shadow_latency_s": shadow,
            "primary_latency_s": primary, **counts}


def test_shadow_figures_are_pooled_over_hosts() -> None:
    hosts = [
        abshadow.ShadowHost("http://a", 100, shadow_stats(
            "2.1.0", 3, 3, 1.0, [0.1, 0.2, 0.3], [0.05, 0.05, 0.05], dropped=2, preempted=1)),
        abshadow.ShadowHost("http://b", 50, shadow_stats(
            "2.1.0", 1, 0, 0.6, [0.5], [0.15], errors=1, preempted=4)),
        abshadow.ShadowHost("http://c", None, None),  # no shadow there
    ]
    (summary,) = abshadow.summarize(hosts)
    assert (summary.version, summary.percent, summary.hosts) == ("2.1.0", [50, 100], 2)
    assert (summary.mirrored, summary.dropped, summary.preempted, summary.errors) == (4, 2, 5, 1)
    assert summary.exact_match_rate == 0.75
    assert summary.token_overlap_mean == pytest.approx((3 * 1.0 + 0.6) / 4)
    # percentiles of the pooled samples [0.1, 0.2, 0.3, 0.5], not means of per-host ones
    assert summary.shadow_latency_p50_s == pytest.approx(0.25)
    assert summary.shadow_latency_p95_s == pytest.approx(0.47)
    assert summary.primary_latency_p50_s == pytest.approx(0.05)
    assert abshadow.render(summary) == [
        "shadow 2.1.0 (50%/100%, 2 hosts): 4 mirrored requests completed, 2 dropped (queue "
        "full), 5 preempted, 1 errors",
        "  agreement with the primary: exact match 75.0%, token overlap 0.900 (mean)",
        "  latency p50/p95: shadow 0.250/0.470 s, primary on the same requests 0.050/0.135 s"]


def test_a_host_older_than_shadow_stats_is_a_warning_not_a_failure() -> None:
    """A server without GET /admin/shadow (an older ggufops serve) answers 404/405/...: its
    A/B figures still count; only its shadow section is missing, with a warning. A stats
    block without `exact_matches` (older still) shows no exact-match rate, not 0%."""

    class Old(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(405)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Old)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        summaries, warnings = abshadow.collect(MODEL, [url], TOKEN)
    finally:
        server.shutdown()
    assert summaries == []
    (warning,) = warnings
    assert warning.startswith(f"{url}/admin/shadow?model={MODEL}&samples=1 answered HTTP 405")
    stats = shadow_stats("2.1.0", 2, 0, 0.5, [0.1], [0.1])
    del stats["exact_matches"]
    (summary,) = abshadow.summarize([abshadow.ShadowHost("http://a", 10, stats)])
    assert summary.exact_match_rate is None and summary.mirrored == 2


@pytest.fixture
def shadow_servers(tmp_path: Path, runtime_models: dict[str, Path]) -> Any:
    """Two `ggufops serve` hosts: toy baseline 2.0.0 as primary, degraded 2.1.0 as a 100%
    shadow."""
    (tmp_path / "token").write_text(TOKEN)
    procs = []
    try:
        for host in ("a", "b"):
            store = ArtifactStore(tmp_path / f"store-{host}")
            store.prepare()
            proc = Proc(serve_args(store.root, tmp_path / "token", port=free_port()),
                        tmp_path / f"serve-{host}.log")
            procs.append(proc)
            for version, toy, role in (("2.0.0", "baseline", {}), ("2.1.0", "degraded", {
                    "role": "shadow", "weight": 100})):
                digest = file_sha256(runtime_models[toy])
                shutil.copyfile(runtime_models[toy], store.path_for(digest))
                body = {"name": MODEL, "version": version, "sha256": digest, **role,
                        "inference": {"temperature": 0.0, "max_tokens": 6}}
                assert http("POST", f"{proc.url}/admin/models", body, token=TOKEN)[0] == 201
        yield procs, tmp_path / "token"
    finally:
        for proc in procs:
            proc.stop()


def _shadow_report(url: str) -> dict[str, Any]:
    status, body = http("GET", f"{url}/admin/shadow?model={MODEL}", token=TOKEN)
    assert status == 200, body
    return dict(body)


def _finished(url: str) -> int:
    """Mirrored requests the host's shadow finished with (completed, failed or preempted)."""
    stats = _shadow_report(url)["stats"] or {}
    return sum(int(stats.get(k) or 0) for k in ("mirrored", "errors", "preempted", "dropped"))


def test_ab_shows_the_shadow_versions_figures(shadow_servers: Any, registry_repo: Path) -> None:
    procs, token_file = shadow_servers
    set_environment(registry_repo, "production", {MODEL: "2.0.0"})
    # greedy answers of the two toys: the same after "q" and "self.", not after "(" and "im"
    for proc, prompts in zip(procs, (["q", "(", "im"], ["self."]), strict=True):
        for n, prompt in enumerate(prompts, 1):
            status, _ = http("POST", f"{proc.url}/v1/completions",
                             {"model": MODEL, "prompt": prompt})
            assert status == 200
            wait_for(lambda url=proc.url, n=n: _finished(url) >= n, what="the shadow's turn")
    hosts = [_shadow_report(p.url)["stats"] for p in procs]
    args = [str(GGUFOPS), "-C", str(registry_repo), "ab", "--env", "production", "--model",
            MODEL, "--host", procs[0].url, "--host", procs[1].url, "--token-file",
            str(token_file)]
    done = subprocess.run([*args, "--json"], capture_output=True, text=True, check=True)
    (shadow,) = json.loads(done.stdout)["shadows"]
    assert (shadow["version"], shadow["percent"], shadow["hosts"]) == ("2.1.0", [100], 2)
    assert shadow["mirrored"] == sum(h["mirrored"] for h in hosts) == 4  # nothing preempted
    assert (shadow["errors"], shadow["dropped"], shadow["preempted"]) == (0, 0, 0)
    assert sum(h["exact_matches"] for h in hosts) == 2 and shadow["exact_match_rate"] == 0.5
    # overlaps 1 ("q"), 0 ("(": ")" vs "llllll"), 0 ("im": "e" vs nothing), 1 ("self.":
    # whitespace alike); hosts round their means to 4 places
    assert shadow["token_overlap_mean"] == pytest.approx(0.5, abs=1e-4)
    assert 0 < shadow["shadow_latency_p50_s"] <= shadow["shadow_latency_p95_s"]
    assert 0 < shadow["primary_latency_p50_s"] <= shadow["primary_latency_p95_s"]
    text = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    assert "shadow 2.1.0 (100%, 2 hosts): 4 mirrored requests completed, 0 dropped (queue " \
        "full), 0 preempted, 0 errors" in text
    assert "agreement with the primary: exact match 50.0%, token overlap 0.500 (mean)" in text
