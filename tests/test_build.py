"""The build produced what it should: a silently missing extension fails here, not as a slow fallback."""

from __future__ import annotations

import os
import shutil
import warnings

import pytest
import torch

from noisefast import _ext, ops, ref


def test_cpu_extension_is_built():
    assert _ext._C is not None, f"noisefast._C failed to load: {_ext._C_ERROR}"
    info = _ext.build_info()
    assert info["cpu_extension"] and info["cpu_error"] is None


def test_cuda_extension_is_built_when_nvcc_was_found():
    info = _ext.build_info()
    if info["cuda_compiler"]:
        assert info["cuda_extension"], f"CMake found {info['cuda_compiler']} but _C_cuda failed to load: {info['cuda_error']}"
        assert info["cuda_version"] and info["cuda_archs"], info
    else:
        assert not info["cuda_extension"]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH")
@pytest.mark.skipif(os.environ.get("NOISEFAST_CUDA", "").upper() in ("0", "OFF", "FALSE", "NO"),
                    reason="NOISEFAST_CUDA turns the CUDA build off")
def test_nvcc_on_path_means_cuda_was_built():
    """nvcc is here, so an AUTO build must have compiled the CUDA kernels (CI relies on this)."""
    info = _ext.build_info()
    if info["cuda_mode"] == "OFF":
        pytest.skip("built with NOISEFAST_CUDA=OFF")
    assert info["cuda_compiler"], f"nvcc is on PATH but the build did not find it (cuda_mode {info['cuda_mode']})"
    assert info["cuda_extension"], info["cuda_error"]


def test_build_info_reports_what_is_usable():
    info = _ext.build_info()
    assert info["torch"] == torch.__version__
    assert info["torch_cuda"] == torch.cuda.is_available()
    if not torch.cuda.is_available():
        assert info["cuda_usable"] is False and info["cuda_unusable_reason"]
    assert isinstance(info["cuda_archs"], list) and isinstance(info["openmp"], int)


@pytest.mark.parametrize("archs, cc, ok", [
    ("80-real 86-real 89-real 90", 80, True),
    ("80-real 86-real 89-real 90", 87, True),   # sm_86 SASS runs on sm_87
    ("80-real 86-real 89-real 90", 100, True),  # compute_90 PTX is JIT-compiled
    ("80-real 86-real 89-real 90", 75, False),
    ("80-real 86-real", 90, False),
    ("80", 120, True),
])
def test_arch_compatibility(archs, cc, ok):
    assert _ext.arch_supported(archs, cc) is ok


def test_missing_extension_falls_back_to_ref_with_one_warning(monkeypatch):
    monkeypatch.setattr(_ext, "_C", None)
    monkeypatch.setattr(_ext, "_C_ERROR", "ImportError: simulated")
    monkeypatch.setattr(_ext, "_WARNED", set())
    x, m = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ops.ddim_move(x, m, 0.3, 0.8)
        score = ops.cosine_similarity(x, m)
    assert [w.category for w in caught] == [_ext.ExtensionFallbackWarning]
    assert "noisefast._C is not available (ImportError: simulated)" in str(caught[0].message)
    assert caught[0].filename == __file__  # points at the caller
    # the fallback *is* the reference code on the same inputs: bit for bit
    assert torch.equal(out, ref.ddim_move(x, m, 0.3, 0.8))
    assert torch.equal(score, ref.cosine_similarity(x, m))


def test_cpu_isa_levels_are_reported_and_switchable():
    info = _ext.build_info()
    available, compiled = info["cpu_isa_available"], info["cpu_isa_compiled"]
    assert compiled in (["baseline"], ["baseline", "avx2", "avx512"]), compiled  # x86-64 builds all three
    assert available and available == compiled[: len(available)] and info["cpu_isa"] in available
    for level in available:
        with _ext.cpu_isa(level):
            assert _ext.build_info()["cpu_isa"] == level
        assert _ext.build_info()["cpu_isa"] == info["cpu_isa"]  # restored
    with pytest.raises(ValueError, match="expected baseline, avx2 or avx512"):
        _ext._C.set_cpu_isa("sse9")
    for missing in set(compiled) - set(available):
        with pytest.raises(ValueError, match="available: " + ", ".join(available)):  # never a SIGILL
            _ext._C.set_cpu_isa(missing)
    assert _ext.build_info()["cpu_isa"] == info["cpu_isa"]


@pytest.mark.parametrize("value", ["baseline", "avx2", "avx512", "AVX2", "", "avx-512"])
def test_noisefast_cpu_isa_caps_the_level_at_load_time(value):
    """NOISEFAST_CPU_ISA: a known level the CPU has is used; a missing one or an unknown value warns and uses the best."""
    import subprocess
    import sys

    available = _ext.build_info()["cpu_isa_available"]
    env = dict(os.environ, NOISEFAST_CPU_ISA=value)
    code = ("import importlib.util as u, warnings; warnings.simplefilter('always'); "  # the .so alone: no torch import
            f"s = u.spec_from_file_location('noisefast._C', {_ext._C.__file__!r}); C = u.module_from_spec(s); "
            "s.loader.exec_module(C); print(C.cpu_isa())")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    wanted = value.lower()
    if wanted in available:
        assert run.stdout.strip() == wanted and "RuntimeWarning" not in run.stderr
    elif value == "":  # unset
        assert run.stdout.strip() == available[-1] and not run.stderr
    else:
        assert run.stdout.strip() == available[-1]
        assert "RuntimeWarning: noisefast: NOISEFAST_CPU_ISA" in run.stderr, run.stderr
        if wanted in ("baseline", "avx2", "avx512"):
            assert "supports only " + ", ".join(available) in run.stderr
        else:
            assert "is not one of baseline, avx2, avx512" in run.stderr
