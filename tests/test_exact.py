"""`train.precision: exact` gives the same model files on every x86-64 CPU and core count.

One machine plays several CPUs: ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA cap the instruction set that
PyTorch's and oneDNN's kernels are picked for (an AVX2-only CPU, an AVX-512 one without bfloat16), and
`taskset` the cores the process may use. The fast path, whose results may differ between CPUs, shows that
the caps do change the arithmetic.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 only")

AVX2_CPU = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
AVX512_CPU = {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}  # no bfloat16, no AMX


def md5s(dataset, precision: str, env: dict | None = None, cores: str | None = None) -> dict[str, str]:
    """norm -> md5 of its model file, trained in a fresh process with `env` added (and only `cores`)."""
    clean = {k: v for k, v in os.environ.items() if k not in (*AVX2_CPU, "MKL_CBWR", "OMP_NUM_THREADS")}
    cmd = [sys.executable, "-m", "tests.exact_probe", str(dataset), precision]
    if cores:
        cmd = ["taskset", "-c", cores, *cmd]
    result = subprocess.run(cmd, cwd=ROOT, env={**clean, **(env or {})}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "note:" not in result.stderr, result.stderr  # the cap took effect
    return dict(line.split() for line in result.stdout.splitlines())


def test_exact_gives_the_same_model_files_on_every_instruction_set_and_core_count(dataset_file):
    native = md5s(dataset_file, "exact")
    assert sorted(native) == ["bn", "gn", "ln"]
    assert md5s(dataset_file, "exact", AVX2_CPU) == native
    assert md5s(dataset_file, "exact", AVX512_CPU) == native
    if shutil.which("taskset") and len(os.sched_getaffinity(0)) > 1:
        assert md5s(dataset_file, "exact", cores="0") == native  # one core, still two threads


def test_the_instruction_set_changes_the_bits_of_an_uncapped_run(dataset_file):
    """The control: LayerNorm's fast path is float32 without the cap, and an AVX2 CPU computes it otherwise than
    an AVX-512 one; so the test above compares different kernels, not the same ones thrice."""
    if "avx512f" not in open("/proc/cpuinfo").read():
        pytest.skip("this CPU has no AVX-512 to compare AVX2 with")
    native, avx2 = md5s(dataset_file, "fast"), md5s(dataset_file, "fast", AVX2_CPU)
    assert native["ln"] != avx2["ln"]
