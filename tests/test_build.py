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
    torch.testing.assert_close(out, ref.ddim_move(x, m, 0.3, 0.8))
    torch.testing.assert_close(score, ref.cosine_similarity(x, m))
