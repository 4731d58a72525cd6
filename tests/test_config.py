"""One engine configuration behind every door: each engine flag of every subcommand and of the server reaches the
Engine that is built (or is refused with one line), the configuration in effect is reported, and the command line
answers ``--help`` without importing torch."""

import json
import subprocess
import sys

import pytest

from noisefast.config import EngineConfig, FastPathOptions
from noisefast.errors import InputError

# flag → the EngineConfig it must produce (on top of the defaults)
FLAGS = [
    (["--device", "cpu"], {"device": "cpu"}),
    (["--dtype", "fp32"], {"dtype": "fp32"}),
    (["--backend", "onnxruntime"], {"backend": "onnxruntime"}),
    (["--variant", "fp16"], {"variant": "fp16"}),
    (["--family", "sdxl-turbo"], {"family": "sdxl-turbo"}),
    (["--batch-size", "7"], {"batch_size": 7}),
    (["--threads", "1"], {"threads": 1}),
    (["--strict"], {"strict": True}),
    (["--model", "some/model"], {"model": "some/model"}),
    (["--channels-last"], {"fast_path": FastPathOptions(channels_last=True)}),
    (["--attention", "sdpa"], {"fast_path": FastPathOptions(attention="sdpa")}),
    (["--fuse-qkv"], {"fast_path": FastPathOptions(fuse_qkv=True)}),
    (["--cuda-graph"], {"fast_path": FastPathOptions(cuda_graph=True)}),
    (["--pinned"], {"fast_path": FastPathOptions(pinned=True)}),
    (["--fast"], {"fast_path": FastPathOptions.turbo()}),
]
COMMANDS = {  # the arguments each subcommand needs besides the engine flags
    "score": ["--prompt", "x"],
    "select": ["--prompt", "x"],
    "optimize": ["--prompt", "x"],
    "generate": ["--prompt", "x"],
    "screen": ["--prompts", "{prompts}"],
}


class _Built(Exception):
    pass


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("flag,expected", FLAGS, ids=[" ".join(f) for f, _ in FLAGS])
def test_every_engine_flag_reaches_the_engine_of_every_subcommand(command, flag, expected, tmp_path, monkeypatch,
                                                                  quiet_env):  # fmt: skip
    from noisefast.cli import main
    from noisefast.pipeline import Engine

    seen = []

    def capture(cls, config):
        seen.append(config)
        raise _Built

    monkeypatch.setattr(Engine, "from_config", classmethod(capture))
    prompts = tmp_path / "p.txt"
    prompts.write_text("x\n")
    args = [a.replace("{prompts}", str(prompts)) for a in COMMANDS[command]]
    main([command, *args, *flag, "--out", str(tmp_path / "out")])
    assert seen == [EngineConfig(**expected)]


@pytest.mark.parametrize("flag,expected", FLAGS, ids=[" ".join(f) for f, _ in FLAGS])
def test_every_engine_flag_reaches_the_server_engine(flag, expected, monkeypatch):
    from noisefast.cli import build_parser
    from noisefast.cli.serve import config_from_args
    from noisefast.pipeline import Engine
    from noisefast.serve.service import Service

    seen = []

    def capture(cls, config):
        seen.append(config)
        raise _Built

    monkeypatch.setattr(Engine, "from_config", classmethod(capture))
    config = config_from_args(build_parser(["serve"]).parse_args(["serve", *flag]))
    with pytest.raises(_Built):
        Service(config).load()
    assert seen == [EngineConfig(**expected)]


def test_flags_take_effect_on_a_real_engine_or_are_refused(tmp_path, quiet_env, capsys):
    from noisefast.cli import main

    out = tmp_path / "out"
    code = main(["score", "--prompt", "a handwritten digit one", "--seeds", "0:3", "--steps", "1", "--inversion-steps",
                 "1", "--batch-size", "2", "--threads", "1", "--channels-last", "--json", "--out", str(out)])  # fmt: skip
    assert code == 0
    model = json.loads(capsys.readouterr().out)["model"]
    assert (model["batch_size"], model["threads"], model["backend"]) == (2, 1, "torch")
    assert model["fast_path"]["channels_last"] is True and model["fast_path"]["cuda_graph"] is False
    # a flag that cannot apply to this model is refused, in one line, exit 2
    for flag, says in ((["--variant", "fp16"], "no weight variants"), (["--family", "sdxl"], "does not apply")):
        assert main(["score", "--prompt", "x", *flag, "--out", str(out)]) == 2
        assert says in capsys.readouterr().err


def test_cuda_only_pieces_warn_once_on_a_cpu():
    from noisefast.pipeline import Engine

    with pytest.warns(UserWarning, match="pinned seed buffers need a CUDA device"):
        engine = Engine.from_pretrained("builtin:digits", device="cpu", fast_path=FastPathOptions(pinned=True))
    assert engine.fast_path is None and engine.describe()["fast_path"] is None


def test_config_is_plain_data_and_checks_every_field():
    c = EngineConfig(model="builtin:digits", dtype="float16", backend="onnxruntime", batch_size=3, threads=2,
                     fast_path={"channels_last": True})  # fmt: skip
    assert c.dtype == "fp16" and c.fast_path == FastPathOptions(channels_last=True)
    d = c.as_dict()
    assert json.loads(json.dumps(d)) == d and EngineConfig.from_dict(d) == c
    assert EngineConfig(fast_path=FastPathOptions()).fast_path is None  # the plain path is None
    for bad, says in (({"backend": "tvm"}, "backend must be one of"), ({"dtype": "int8"}, "dtype must be one of"),
                      ({"batch_size": 0}, "batch_size must be in"), ({"threads": True}, "threads must be an integer"),
                      ({"strict": "yes"}, "strict must be a bool"), ({"model": ""}, "model must be")):  # fmt: skip
        with pytest.raises(InputError, match=says):
            EngineConfig(**bad)
    with pytest.raises(InputError, match="unknown engine option"):
        EngineConfig.from_dict({"modle": "x"})


def test_help_imports_no_torch():
    """``noisefast --help`` and ``noisefast CMD --help`` build their parser without torch or diffusers (measured:
    0.05 s vs 2–8 s when every subcommand imported diffusers)."""
    from noisefast.cli import COMMANDS

    code = ("import sys\nfrom noisefast.cli import build_parser\n"
            f"for argv in [[]] + [[c] for c in {sorted(COMMANDS)!r}]:\n"
            "    build_parser(argv).format_help()\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_public_api_is_small_and_every_name_resolves():
    import noisefast as nf

    assert len(nf.__all__) <= 40
    for internal in ("RowScorer", "ScoreJob", "GraphedScorer", "SavedBytes", "Move"):
        assert internal not in nf.__all__
    for name in nf.__all__:
        assert getattr(nf, name) is not None
    import noisefast.transform  # noqa: F401  (a submodule import must not shadow the function of the same name)

    assert callable(nf.transform) and nf.transform.__name__ == "transform" and callable(nf.screen)
    from noisefast.batching import RowScorer  # internals stay importable from their modules

    assert RowScorer is not None
