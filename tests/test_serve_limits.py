"""`noisefast serve`: bad requests (table-driven, each a clear 4xx), API keys, body size, the seed bank, the CLI."""

import asyncio
import json

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from _serve_helpers import FAST, P3, P7, body, engine, run, served  # noqa: E402, F401

BIG_SEED = 2**63
BAD = [  # (path, json body or raw text, status, text the answer must contain)
    ("/v1/score", {}, 422, "prompt"),
    ("/v1/score", {"prompt": ""}, 422, "prompt"),
    ("/v1/score", {"prompt": 3}, 422, "prompt"),
    ("/v1/score", {"prompt": "x" * 2001}, 422, "prompt"),
    ("/v1/score", body(seeds=[-1]), 422, "seeds"),
    ("/v1/score", body(seeds=[BIG_SEED]), 422, "seeds"),
    ("/v1/score", body(seeds=["a"]), 422, "seeds"),
    ("/v1/score", body(seeds=[1.5]), 422, "seeds"),
    ("/v1/score", body(seeds={"start": 5, "count": 0}), 422, "seeds.count"),
    ("/v1/score", body(seeds={"start": 0, "count": 10_000}), 422, "seeds.count"),  # over max_seeds
    ("/v1/score", body(seeds={"start": 0, "stop": 10}), 422, "seeds.stop"),  # 0.2's spelling: now count
    ("/v1/score", body(seeds=[]), 422, "seeds"),
    ("/v1/score", body(seed=[1]), 422, "seed"),  # unknown field (typo)
    ("/v1/score", body(settings={"steps": 0}), 422, "steps"),
    ("/v1/score", body(settings={"steps": 101}), 422, "steps"),  # over max_steps
    ("/v1/score", body(settings={"inversion_steps": 500}), 422, "inversion_steps"),
    ("/v1/score", body(settings={"height": 2048}), 422, "height"),  # over max_side
    ("/v1/score", body(settings={"width": 13}), 422, "width"),  # not a multiple the model takes
    ("/v1/score", body(settings={"guidance_scale": "lots"}), 422, "guidance_scale"),
    ("/v1/score", body(settings={"guidance_scale": 1e9}), 422, "guidance_scale"),
    ("/v1/score", body(settings={"batch_size": 4}), 422, "batch_size"),  # the server decides
    ("/v1/score", "{not json", 400, "json"),
    ("/v1/select", body(negative_prompt=7), 422, "negative_prompt"),
    ("/v1/optimize", {"prompt": P3}, 422, "seed"),
    ("/v1/optimize", {"prompt": P3, "seed": 1, "iterations": 0}, 422, "iterations"),
    ("/v1/optimize", {"prompt": P3, "seed": 1, "iterations": 100_000}, 422, "iterations"),  # over max_iterations
    ("/v1/optimize", {"prompt": P3, "seed": 1, "momentum": 1.5}, 422, "momentum"),
    ("/v1/optimize", {"prompt": P3, "seed": 1, "lr": -1}, 422, "lr"),
    ("/v1/generate", {"prompt": P3}, 422, "seed or noise"),
    ("/v1/generate", {"prompt": P3, "seed": 1, "noise": "AA=="}, 422, "seed or noise"),
    ("/v1/generate", {"prompt": P3, "noise": "not base64!"}, 422, "noise"),
    ("/v1/generate", {"prompt": P3, "noise": "AAAA"}, 422, "noise"),
    ("/v1/score/", body(), 404, ""),
    ("/v1/nothing", body(), 404, ""),
]


def test_bad_requests_are_clear_4xx(engine):
    assert len(BAD) >= 20

    async def go():
        async with served(engine) as c:
            out = []
            for path, payload, _, _ in BAD:
                if isinstance(payload, str):
                    r = await c.post(path, content=payload, headers={"content-type": "application/json"})
                else:
                    r = await c.post(path, json=payload)
                out.append(r)
            out.append(await c.get("/v1/score"))  # wrong method
            return out

    rs = run(go())
    for (path, payload, status, word), r in zip(BAD, rs):
        assert r.status_code == status, (path, payload, r.status_code, r.text[:300])
        assert word.lower() in r.text.lower(), (path, payload, r.text[:300])
    assert rs[-1].status_code == 405


def test_wrong_shape_noise_is_422(engine):
    import base64

    from safetensors.torch import save

    def b64(shape):
        return base64.b64encode(save({"noise": torch.zeros(shape)})).decode()

    async def go():
        async with served(engine, max_side=16) as c:
            return [await c.post("/v1/generate", json={"prompt": P3, "noise": b64(shape), "settings": FAST})
                    for shape in ((1, 3, 4, 4), (1, 1, 3, 4), (1, 1, 32, 32), (1, 1, 4, 6), (2, 1, 4, 4))]  # fmt: skip

    channels, odd, big, ok, batch = run(go())
    for r, word in ((channels, "channels"), (odd, "multiples of 2"), (big, "up to 16"), (batch, "[1, C, H, W]")):
        assert r.status_code == 422 and r.json()["error"]["loc"] == ["body", "noise"] and word in r.text, r.text
    assert ok.status_code == 200 and (ok.json()["height"], ok.json()["width"]) == (4, 6)  # the noise's size


def test_api_key_401_and_body_limit_413(engine):
    async def go():
        async with served(engine, api_key="s3cret", max_body_bytes=2000) as c:
            return [
                await c.post("/v1/score", json=body()),
                await c.post("/v1/score", json=body(), headers={"Authorization": "Bearer wrong"}),
                await c.post("/v1/score", json=body(), headers={"Authorization": "Basic s3cret"}),
                await c.post("/v1/generate", json={"prompt": P3, "seed": 1}),
                await c.post("/v1/score", json=body(), headers={"Authorization": "Bearer s3cret"}),
                await c.get("/healthz"),
                await c.post("/v1/score", json=body(prompt="x" * 3000), headers={"Authorization": "Bearer s3cret"}),
            ]

    none, wrong, basic, gen, ok, health, big = run(go())
    for r in (none, wrong, basic, gen):
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert ok.status_code == 200 and health.status_code == 200
    assert big.status_code == 413 and "2000" in big.json()["error"]["msg"]


# --- the seed bank -------------------------------------------------------------------------------------------------
def make_bank(folder, engine, prompts, seeds, settings):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    (folder / "scores").mkdir(parents=True)
    keys = ("height", "width", "steps", "inversion_steps", "guidance_scale", "inversion_guidance_scale")
    manifest = {"model": "builtin:digits", "settings": {k: getattr(settings, k) for k in keys}, "settings_hash": "x"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for i, p in enumerate(prompts):
        stab = [float(v) for v in engine.score(p, seeds, settings=settings)]
        table = pa.table({"prompt_id": [f"p{i}"] * len(seeds), "prompt": [p] * len(seeds),
                          "seed": pa.array(seeds, pa.int64()), "stability": pa.array(stab, pa.float64())})  # fmt: skip
        from noisefast.screen.integrity import seal  # the bank trusts only shards carrying their checksum (issue 23)

        pq.write_table(seal(table, f"part-{i}", "full"), folder / "scores" / f"part-{i}.parquet")


def test_seed_bank_answers_select(engine, tmp_path):
    s = engine.settings(**FAST)
    make_bank(tmp_path, engine, [P3, P7], list(range(10)), s)

    async def go():
        async with served(engine, bank=str(tmp_path), bank_any_prompt=True) as c:
            return [
                await c.post("/v1/select", json=body(P3, {"start": 0, "count": 10})),  # in the bank
                await c.post("/v1/select", json=body(P3, [0, 11])),  # a seed the bank lacks: computed
                await c.post("/v1/select", json=body(P3, [0, 1], settings={"steps": 3})),  # other settings: computed
                await c.post("/v1/select", json=body("a handwritten digit five", [1, 2, 3])),  # unseen prompt
            ]

    bank, partial, other, unseen = run(go())
    sel = engine.select(P3, range(10), settings=s)
    assert bank.json()["source"] == "bank" and bank.json()["seeds"] == list(sel.seeds)
    torch.testing.assert_close(torch.tensor(bank.json()["scores"]), sel.scores, atol=1e-6, rtol=0)
    assert partial.json()["source"] == "computed" and other.json()["source"] == "computed"
    assert unseen.json()["source"] == "bank-any-prompt"
    mean = (engine.score(P3, [1, 2, 3], settings=s) + engine.score(P7, [1, 2, 3], settings=s)) / 2
    assert unseen.json()["best_score"] == pytest.approx(float(mean.max()), abs=1e-5)


def test_bank_of_another_model_is_refused(engine, tmp_path):
    from noisefast.errors import InputError
    from noisefast.serve.service import ServeConfig, Service

    make_bank(tmp_path, engine, [P3], [0, 1], engine.settings(**FAST))
    m = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(m | {"model": "stabilityai/sdxl-turbo"}))
    with pytest.raises(InputError, match="screened with model"):
        Service(ServeConfig(bank=str(tmp_path), warmup=False), engine).load()


# --- the command line ------------------------------------------------------------------------------------------------
def test_cli_serve_options(monkeypatch):
    from noisefast.cli import build_parser
    from noisefast.cli.serve import config_from_args

    monkeypatch.setenv("NOISEFAST_API_KEY", "k")
    args = build_parser().parse_args(["serve", "--batch-size", "1", "--max-wait-ms", "0", "--timeout", "5"])
    c = config_from_args(args)
    assert args.host == "127.0.0.1" and c.engine.model == "builtin:digits" and c.api_key == "k"
    assert (c.engine.batch_size, c.max_wait_ms, c.request_timeout_s) == (1, 0.0, 5.0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--batch-size", "0"])
    from noisefast.cli.serve import uvicorn_options
    from noisefast.defaults import DEFAULT_MAX_COST

    assert (c.max_cost, c.body_timeout_s, c.max_header_bytes, c.max_headers, c.keep_alive_s) == (
        DEFAULT_MAX_COST, 30.0, 16_384, 100, 5.0)  # the defaults
    flags = ["serve", "--max-cost", "5000", "--body-timeout", "2", "--max-header-bytes", "8192", "--max-headers",
             "40", "--keep-alive-timeout", "1.5"]  # fmt: skip
    c = config_from_args(build_parser().parse_args(flags))
    assert (c.max_cost, c.body_timeout_s, c.max_header_bytes, c.max_headers, c.keep_alive_s) == (5000, 2.0, 8192, 40, 1.5)
    assert uvicorn_options(c) == {"http": "h11", "h11_max_incomplete_event_size": 16384, "timeout_keep_alive": 1.5}
    for bad in (["--max-cost", "0"], ["--max-header-bytes", "10"], ["--body-timeout", "nan"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", *bad])


def test_batcher_stops_refusing_new_work(engine):
    from noisefast.serve.batcher import ShuttingDown

    async def go():
        async with served(engine) as c:
            c.service.batcher.stop()
            with pytest.raises(ShuttingDown):
                await c.service.batcher.score(P3, [0], engine.settings(**FAST))
            return await c.get("/readyz")

    assert run(go()).status_code == 503
    assert asyncio.get_event_loop_policy() is not None
