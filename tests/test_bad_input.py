"""Hostile input through every front door: each case is one clear line (exit 2 / a NoisefastError), never a
traceback, a huge allocation or a half-written output."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from noisefast.cli import main
from noisefast.errors import InputError, LimitError, ModelError, NoisefastError

FAST = ["--steps", "2", "--inversion-steps", "2", "--threads", "1"]


def run_main(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    return code, capsys.readouterr().err


def _corrupt_index(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_text("{not json")
    return str(tmp_path / "m")


def _pickle_only(tmp_path):
    """A pixel-model folder whose UNet weights exist only as a pickle (.bin): must not be unpickled."""
    import shutil

    from noisefast.builtin import builtin_model_path

    folder = tmp_path / "pickled"
    shutil.copytree(builtin_model_path("digits"), folder)
    st = folder / "unet" / "diffusion_pytorch_model.safetensors"
    st.rename(folder / "unet" / "diffusion_pytorch_model.bin")
    return str(folder)


def _existing_file(tmp_path):
    (tmp_path / "file").write_text("x")
    return str(tmp_path / "file")


def _digits_with(tmp_path, card=None, scheduler=None):
    """The built-in digits folder with its model card or scheduler config replaced (weights linked, not copied)."""
    from noisefast.builtin import builtin_model_path

    src, folder = builtin_model_path("digits"), tmp_path / "model"
    folder.mkdir()
    for entry in src.iterdir():
        if entry.is_dir() and entry.name != "scheduler":
            (folder / entry.name).symlink_to(entry, target_is_directory=True)
    shutil.copy(src / "noisefast_model.json", folder)
    shutil.copytree(src / "scheduler", folder / "scheduler")
    for name, edit in (("noisefast_model.json", card), ("scheduler/scheduler_config.json", scheduler)):
        if edit is not None:
            path = folder / name
            path.write_text(edit if isinstance(edit, str) else json.dumps(edit(json.loads(path.read_text()))))
    return str(folder)


def _sdxl_unet_config(tmp_path):
    """A pipeline folder holding only the full-size SDXL UNet config (what export's size check reads)."""
    from noisefast.bench.models import (
        sdxl_unet_config,  # the package's copy of it: no checkout beside this one needed
    )

    folder = tmp_path / "sdxl"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text(json.dumps(sdxl_unet_config()))
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    return str(folder)


MODEL_FOLDERS = {
    "{card_list}": lambda t: _digits_with(t, card="[1, 2]"),
    "{card_no_steps}": lambda t: _digits_with(t, card=lambda c: {k: v for k, v in c.items() if k != "default_steps"}),
    "{sched_text}": lambda t: _digits_with(t, scheduler="timestep_spacing: leading\n"),
    "{sched_huge}": lambda t: _digits_with(t, scheduler=lambda c: c | {"num_train_timesteps": 10**10}),
    "{sched_negative}": lambda t: _digits_with(t, scheduler=lambda c: c | {"beta_start": -0.5, "beta_end": -0.1}),
    "{sched_trained}": lambda t: _digits_with(t, scheduler=lambda c: c | {"trained_betas": [-0.1] + [0.01] * 999}),
}


# (name, argv after the subcommand, expected fragment of the one-line error); "{tmp}" → tmp_path
CLI_CASES = [
    ("huge size", ["select", "--height", "100000", "--width", "100000"], "height must be in [1, 256]"),
    ("size not a multiple", ["select", "--height", "9"], "height=9 is not a multiple of"),
    ("seed beyond 2**63", ["select", "--seeds", "0:1180591620717411303424"], "seeds must be below 2**63"),
    ("single huge seed", ["select", "--seed", "18446744073709551616"], "seeds must be below 2**63"),
    ("too many seeds", ["select", "--seeds", "0:100000000"], "more than 10,000,000 seeds"),
    ("seed listed twice", ["select", "--seeds", "1,1"], "a seed is listed twice"),
    ("negative seed", ["select", "--seeds=-1:3"], "bad seed"),
    ("guidance overflow", ["select", "--guidance", "1e30"], "expected a finite number in [0, 1000]"),
    ("guidance nan", ["select", "--guidance", "nan"], "expected a finite number"),
    ("inversion guidance inf", ["select", "--inversion-guidance", "inf"], "expected a finite number"),
    ("lr overflow", ["optimize", "--lr", "1e300"], "expected a finite number in [1e-12, 1e+06]"),
    ("lr zero", ["optimize", "--lr", "0"], "expected a finite number in [1e-12, 1e+06]"),
    ("momentum one", ["optimize", "--momentum", "1"], "[0, 0.999]"),
    ("iterations zero", ["optimize", "--iterations", "0"], "expected an integer in [1, 100000]"),
    ("steps beyond training", ["select", "--steps", "5000"], "steps must be in [1, 1000]"),
    ("batch too large", ["select", "--batch-size", "100000"], "batch_size must be in [1, 4096]"),
    ("unknown builtin", ["select", "--model", "builtin:nosuch"], "unknown built-in model 'nosuch'; available: builtin:digits"),
    ("missing folder", ["select", "--model", "/no/such/folder"], "does not exist"),
    ("corrupt model_index.json", ["select", "--model", "{corrupt}"], "model_index.json (the pipeline's component index) is not valid JSON"),
    ("pickle-only weights", ["select", "--model", "{pickle}"], "could not load the noisefast model"),
    ("out is a file", ["select", "--out", "{file}"], "exists and is not a folder"),
    ("out not creatable", ["select", "--out", "/proc/noisefast-out"], "cannot write to --out /proc/noisefast-out"),
    ("empty prompt", ["select", "--prompt", " "], "--prompt is empty"),
    ("prompts file missing", ["select", "--prompts-file", "/no/such/prompts.txt"], "cannot read --prompts-file"),
    ("prompts file not utf-8", ["select", "--prompts-file", "{latin1}"], "is not UTF-8 text"),
    ("unknown device", ["select", "--device", "tpu:9"], "unknown device"),
    ("cuda absent", ["select", "--device", "cuda"], "CUDA is not available"),
    # issue 23: every input a user can give is one line naming the argument, never "internal error"
    ("prompt not utf-8", ["select", "--prompt", "caf\udce9"], "--prompt is not valid UTF-8 text (byte 0xe9 at character 4)"),
    ("negative prompt not utf-8", ["score", "--negative-prompt", "\udcff"], "--negative-prompt is not valid UTF-8"),
    ("prompts file line not utf-8", ["generate", "--prompts-file", "{latin1}"], "is not UTF-8 text: line 2, column 4"),
    ("prompts file /dev/zero", ["select", "--prompts-file", "/dev/zero"], "/dev/zero is not a text file (a NUL byte"),
    ("prompts file a folder", ["select", "--prompts-file", "/"], "--prompts-file / is a folder"),
    ("model card a JSON list", ["select", "--model", "{card_list}"], "(the model card) must hold a JSON object, got list"),
    ("model card lacks a field", ["score", "--model", "{card_no_steps}"], "(the model card) lacks 'default_steps'"),
    ("scheduler config not JSON", ["select", "--model", "{sched_text}"], "(the scheduler config) is not valid JSON"),
    ("num_train_timesteps 1e10", ["select", "--model", "{sched_huge}"], "num_train_timesteps must be an int in [1, 100000]"),
    ("negative betas", ["generate", "--model", "{sched_negative}"], "beta_start must be a number in [0, 1]"),
    ("trained betas below 0", ["select", "--model", "{sched_trained}"], "betas must be in [0, 1]"),
    ("guidance negative", ["select", "--guidance", "-3"], "expected a finite number in [0, 1000]"),
    ("grid negative", ["select", "--grid", "-1"], "argument --grid: expected an integer in [0, 64]"),
    ("out empty", ["select", "--out", ""], "argument --out: empty"),
    ("screen out empty", ["screen", "--prompts", "{prompts}", "--out", ""], "argument --out: empty"),
    ("screen partial without summary", ["screen", "--prompts", "{prompts}", "--partial"], "--partial goes with --summary"),
    ("variant on a builtin model", ["select", "--variant", "fp16"], "has no weight variants"),
    ("export height", ["export", "--model", "builtin:digits", "--height", "100000", "--width", "64"], "[8, 8192]"),
    ("export static batch 0", ["export", "--model", "builtin:digits", "--static-batch", "0"], "[1, 4096], got 0"),
    ("export height alone", ["export", "--model", "builtin:digits", "--height", "64"], "give both --height and --width"),
    ("export out empty", ["export", "--model", "builtin:digits", "--out", " "], "--out is empty"),
    ("export over a folder", ["export", "--model", "builtin:digits", "--out", "{tmp}"], "is not a noisefast ONNX export"),
]


@pytest.mark.parametrize("name, args, message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_is_one_line_exit_2(name, args, message, tmp_path, capsys, quiet_env, monkeypatch):
    if name == "cuda absent" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("a digit\ncaf\xe9\n".encode("latin-1"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten digit one\n")
    subs = {"{corrupt}": lambda: _corrupt_index(tmp_path), "{pickle}": lambda: _pickle_only(tmp_path),
            "{file}": lambda: _existing_file(tmp_path), "{latin1}": lambda: str(latin1),
            "{prompts}": lambda: str(prompts), "{tmp}": lambda: _existing_file(tmp_path) and str(tmp_path)}  # fmt: skip
    subs |= {k: (lambda f=f: f(tmp_path)) for k, f in MODEL_FOLDERS.items()}
    args = [subs[a]() if a in subs else a for a in args]
    argv = [args[0], *args[1:]]
    if args[0] in ("score", "select", "optimize", "generate") and "--prompt" not in argv and "--prompts-file" not in argv:
        argv += ["--prompt", "a handwritten digit one"]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    if args[0] != "export":
        argv += [a for a in FAST if a not in argv] if "--steps" not in argv else ["--threads", "1"]
    code, err = run_main(argv, capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert err.count("unknown built-in model") <= 1
    assert not (tmp_path / "out" / "report.json").exists()  # nothing half-written for refused input


def test_export_checks_the_traced_size_before_loading_the_unet(tmp_path, capsys, quiet_env):
    """SDXL's UNet traced at 8192² (a 1024² latent): ~40 GiB of activations — refused by the estimate, in a second,
    before any weight is read (the folder holds only the UNet config)."""
    from noisefast.settings import available_memory

    have = available_memory(torch.device("cpu"))
    if have is None or have > 32 * 2**30:
        pytest.skip("this machine has the memory to try: the estimate would let the export run")
    code, err = run_main(["export", "--model", _sdxl_unet_config(tmp_path), "--height", "8192", "--width", "8192",
                          "--out", str(tmp_path / "onnx")], capsys)  # fmt: skip
    assert code == 2 and "GiB" in err and "--static-batch" in err and len(err.strip().splitlines()) == 1, err


def test_optimize_interrupted_in_its_first_step_keeps_a_valid_report(tmp_path, capsys, quiet_env, monkeypatch):
    """Ctrl-C inside the first optimisation step (realistic on SDXL) keeps report.json and noise.safetensors."""
    import noisefast.optimize as opt

    def interrupted_evaluation(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(opt._Evaluator, "__call__", interrupted_evaluation)
    out = tmp_path / "opt"
    code, err = run_main(["optimize", "--prompt", "a handwritten digit one", "--seed", "3", *FAST, "--iterations", "5",
                          "--out", str(out)], capsys)  # fmt: skip
    assert code == 130, err
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] is False and report["runs"][0]["complete"] is False
    from safetensors.torch import load_file

    noise = load_file(out / "noise.safetensors")
    assert set(noise) == {"initial", "best", "final"} and torch.isfinite(noise["initial"]).all()


def test_reports_are_strict_json(tmp_path, capsys, quiet_env):
    """Non-finite numbers never reach report.json or stdout as bare NaN tokens."""
    code, _ = run_main(["score", "--prompt", "a handwritten digit one", "--seeds", "0:2", *FAST, "--guidance", "1000",
                        "--out", str(tmp_path / "s"), "--json"], capsys)  # fmt: skip
    assert code == 0
    text = (tmp_path / "s" / "report.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


def test_kill_9_never_leaves_a_truncated_report(tmp_path):
    """SIGKILL at several points of a run: report.json is absent or complete valid JSON, never truncated."""
    import time

    out = tmp_path / "k"
    for delay in (2.0, 5.0):
        proc = subprocess.Popen([sys.executable, "-m", "noisefast.cli", "select", "--prompt", "a handwritten digit one",
                                 "--seeds", "0:40", *FAST, "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(delay)
        proc.kill()
        proc.wait(timeout=30)
        if (out / "report.json").exists():
            json.loads((out / "report.json").read_text())  # complete, valid JSON (a truncated file fails here)


# --- the Python API: each bad value a NoisefastError (or TypeError/ValueError for low-level misuse) ---------
@pytest.fixture(scope="module")
def engine():
    from noisefast.pipeline import Engine

    return Engine.from_pretrained("builtin:digits", device="cpu")


API_CASES = [
    ("nan guidance", lambda e: e.settings(guidance_scale=float("nan")), InputError, "guidance_scale must be finite"),
    ("huge guidance", lambda e: e.settings(guidance_scale=1e30), InputError, "guidance_scale must be in"),
    ("bool steps", lambda e: e.settings(steps=True), InputError, "steps must be an integer"),
    ("float height", lambda e: e.settings(height=8.0), InputError, "height must be an integer"),
    ("huge side", lambda e: e.settings(height=100_000), InputError, "height must be in"),
    ("no seeds", lambda e: e.score("x", []), InputError, "seeds is empty"),
    ("float seed", lambda e: e.score("x", [1.5]), InputError, "seeds must be ints"),
    ("seed too big", lambda e: e.score("x", [2**64]), InputError, "out of range"),
    ("seeds and noise", lambda e: e.score("x", [1], noise=torch.zeros(1, 1, 8, 8)), InputError, "exactly one"),
    ("noise shape", lambda e: e.score("x", noise=torch.zeros(1, 3, 8, 8)), InputError, "noise must be [B, 1, 8, 8]"),
    ("noise nan", lambda e: e.score("x", noise=torch.full((1, 1, 8, 8), float("nan"))), InputError, "finite"),
    ("noise int", lambda e: e.generate("x", noise=torch.zeros(1, 1, 8, 8, dtype=torch.long)), InputError, "floating"),
    ("prompt not str", lambda e: e.score(123, [0]), InputError, "prompt must be a string"),
    ("no prompt", lambda e: e.score(None, [0]), InputError, "a prompt (or condition=) is required"),
    ("empty prompt list", lambda e: e.select_many([], [0]), InputError, "the prompt list is empty"),
    ("prompt list to select", lambda e: e.select(["a", "b"], [0]), InputError, "use select_many"),
    ("duplicate seeds", lambda e: e.score("x", [3, 3]), InputError, "a seed is listed twice"),
    ("no seeds", lambda e: e.score("x", []), InputError, "seeds is empty"),
    ("lr zero", lambda e: e.optimize("x", [0], lr=0), InputError, "lr must be in"),
    ("grad_clip zero", lambda e: e.optimize("x", [0], grad_clip=0), InputError, "grad_clip must be in"),
    ("unknown setting", lambda e: e.score("x", [0], heigth=8), InputError, "unknown setting(s) heigth"),
    ("lr overflow", lambda e: e.optimize("x", [0], lr=1e300), InputError, "lr must be in"),
    ("momentum", lambda e: e.optimize("x", [0], momentum=1.0), InputError, "momentum must be in"),
    ("iterations", lambda e: e.optimize("x", [0], iterations=0), InputError, "iterations must be in"),
    ("settings and keywords", lambda e: e.score("x", [0], settings=e.settings(), steps=2), InputError, "not both"),
    ("prompt not utf-8", lambda e: e.score("caf\udce9", [0]), InputError, "prompt is not valid UTF-8 text (byte 0xe9"),
    ("lone surrogate", lambda e: e.select("\ud800", [0]), InputError, "prompt is not valid UTF-8 text (lone surrogate"),
    ("negative not utf-8", lambda e: e.generate("x", [0], negative_prompt="\udcff"), InputError, "negative_prompt is not"),
    ("guidance negative", lambda e: e.settings(guidance_scale=-3), InputError, "guidance_scale must be in [0, 1000]"),
    ("duplicate seeds select", lambda e: e.select("x", [1, 2, 1]), InputError, "a seed is listed twice"),
]


def test_memory_estimate_refuses_an_absurd_batch():
    from noisefast.settings import check_fits_memory

    with pytest.raises(LimitError, match="GiB"):
        check_fits_memory(4096, (4, 12500, 12500), 320, torch.float32, torch.device("cpu"), cfg=True)
    check_fits_memory(8, (4, 128, 128), 320, torch.float16, torch.device("cpu"), cfg=True)  # SDXL 1024²: fits


@pytest.mark.parametrize("name, call, error, message", API_CASES, ids=[c[0] for c in API_CASES])
def test_engine_bad_input(engine, name, call, error, message):
    with pytest.raises(error, match=None if not message else __import__("re").escape(message)):
        call(engine)


LOW_LEVEL_CASES = [
    ("noise_from_seeds bad shape", lambda: __import__("noisefast").noise_from_seeds([0], (0, 4)), ValueError),
    ("noise_from_seeds int dtype", lambda: __import__("noisefast").noise_from_seeds([0], (1, 2), dtype=torch.int32), TypeError),
    ("schedule zero steps", lambda: __import__("noisefast").DDIMSchedule.from_config({"num_train_timesteps": 1000}, 0), ValueError),
    ("cosine shape mismatch", lambda: __import__("noisefast").ops.cosine_similarity(torch.zeros(2, 3), torch.zeros(3, 2)), ValueError),
    ("momentum_step_ nan lr", lambda: __import__("noisefast").ops.momentum_step_(torch.zeros(1, 4), torch.zeros(1, 4),
                                                                                  torch.zeros(1, 4), lr=float("nan"), momentum=0.5), ValueError),
    ("momentum_step_ expanded x", lambda: __import__("noisefast").ops.momentum_step_(
        torch.zeros(1, 4).expand(3, 4), torch.zeros(3, 4), torch.zeros(3, 4), lr=0.1, momentum=0.5), ValueError),
    ("schedule num_train_timesteps 1e10", lambda: __import__("noisefast").DDIMSchedule.from_config(
        {"num_train_timesteps": 10**10}, 2), ValueError),
    ("schedule negative betas", lambda: __import__("noisefast").DDIMSchedule.from_config(
        {"beta_start": -0.5, "beta_end": 0.02}, 2), ValueError),
    ("schedule config not JSON", lambda: __import__("noisefast").DDIMSchedule.from_config(__file__, 2), ValueError),
]


@pytest.mark.parametrize("name, call, error", LOW_LEVEL_CASES, ids=[c[0] for c in LOW_LEVEL_CASES])
def test_low_level_bad_input(name, call, error):
    with pytest.raises(error):
        call()


def test_error_hierarchy_maps_to_exit_codes_and_http():
    assert issubclass(InputError, NoisefastError) and issubclass(ModelError, NoisefastError)
    assert LimitError.http_status == 413 and InputError.http_status == 422 and NoisefastError.exit_code == 2
