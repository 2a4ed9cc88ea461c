"""The runtime gate on the real SmolLM2-135M-Instruct Q4_1: verdicts and figures.

Each case measures the same artifact under a baseline runtime (this interpreter, whose
llama-cpp-python is the pinned one) and a candidate runtime, with the repository's
registry/policy.yaml (production), and prints the quality and speed rows, the verdict,
the rule that decided and the time per phase:

  identical   the same interpreter, no settings             (expected: pass)
  kv-q4_0     the same interpreter, KV cache q4_0 + flash   (a stand-in that shifts numerics)
  other       --other PYTHON: another llama-cpp-python build, e.g. 0.3.35 in /work/rt-0335

Run: .venv/bin/python -m bench.bench_runtime [--other /work/rt-0335/bin/python] [--threads N]
Other work on the machine slows every phase; the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

from bench.bench_gate import eval_set, policy
from ggufops.gates import report, runtimegate
from ggufops.gates.result import Subject
from testing.realmodels import smollm2_path

KV_Q4_0 = {"type_k": 2, "type_v": 2, "flash_attn": True}


def run_case(label: str, candidate: runtimegate.Runtime, gate_policy: dict[str, Any]) -> None:
    runtimes = [runtimegate.Runtime(sys.executable), candidate]
    infos = [runtimegate.describe(r) for r in runtimes]
    subject = Subject.from_file("smollm2@1.0.0", smollm2_path())
    started = time.perf_counter()
    evals = eval_set()
    measured = runtimegate.measure_model(subject, evals, runtimes, infos, gate_policy)
    result = runtimegate.judge_model("production", "smollm2@1.0.0", measured, evals,
                                     gate_policy)
    print(f"\n== {label}: {result.verdict.upper()} in {time.perf_counter() - started:.1f} s "
          f"(load average {os.getloadavg()[0]:.1f})")
    for line in report.model_section(result):
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--other", default=None, metavar="PYTHON",
                        help="another runtime's python (e.g. /work/rt-0335/bin/python)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", choices=("identical", "kv-q4_0", "other"), default=None)
    args = parser.parse_args()
    gate_policy = policy(args.threads)
    cases = [("identical", runtimegate.Runtime(sys.executable)),
             ("kv-q4_0", runtimegate.Runtime(sys.executable, KV_Q4_0))]
    if args.other:
        cases.append(("other", runtimegate.Runtime(args.other)))
    for label, runtime in cases:
        if args.only in (None, label):
            run_case(label, runtime, gate_policy)


if __name__ == "__main__":
    main()
