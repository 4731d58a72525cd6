"""Export a diffusers ``UNet2DConditionModel`` (or an ``SD3Transformer2DModel``) to ONNX for the onnxruntime and
tensorrt backends.

The graph's interface is described in `noisefast.denoisers.onnx_io`: inputs ``sample``, ``timestep``,
``encoder_hidden_states`` (+ ``text_embeds``, ``time_ids`` for SDXL's ``text_time`` conditioning),
output ``out_sample``. Batch is dynamic by default, latent height/width optionally.

An export is a folder::

    model.onnx            the graph (and the weights, when under 2 GB)
    model.onnx.data       the weights as external data (always for SDXL: ~5 GB in fp16)
    noisefast_onnx.json   interface, options, versions and the content hash engines are keyed by

written into a temporary sibling folder and renamed into place, so a reader never sees half of it.

Exporter: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) is the default. It
needs no extra package, exports a tiny UNet in about a second and an SDXL UNet in about a minute, and
is the path the diffusers/TensorRT tooling has used for SD UNets. ``exporter="dynamo"`` uses the
``torch.export``-based exporter (torch's default since 2.9; needs the ``onnxscript`` package, opset >= 18).

Command line: ``python -m noisefast.denoisers.onnx_export --model DIR_OR_ID --out DIR``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import warnings
from pathlib import Path

import torch

from noisefast.denoisers.onnx_args import add_export_arguments
from noisefast.errors import BackendUnavailableError, InputError, OutputError
from noisefast.denoisers.artifacts import replace_dir, sha256_files, temporary_sibling_dir
from noisefast.denoisers.onnx_io import (
    ADDED_COND_INPUTS,
    DATA_FILE,
    META_FILE,
    MODEL_FILE,
    OUTPUT,
    REQUIRED_INPUTS,
    SD3_INPUTS,
    interface_record,
    onnx_files,
)

EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16}
_EXTERNAL_DATA_LIMIT = 1_900_000_000  # protobuf's hard cap is 2 GiB for the whole file; keep a margin


def uses_text_time(config) -> bool:
    """Whether the UNet takes SDXL's added conditions; ValueError for conditionings we cannot export."""
    added = config.get("addition_embed_type")
    if added not in (None, "text_time"):
        raise ValueError(f"cannot export a UNet with addition_embed_type={added!r} (supported: None, 'text_time')")
    if config.get("class_embed_type") is not None:
        raise ValueError(f"cannot export a UNet with class_embed_type={config['class_embed_type']!r} (class labels)")
    if config.get("encoder_hid_dim_type") not in (None, "text_proj"):
        raise ValueError(f"cannot export a UNet with encoder_hid_dim_type={config['encoder_hid_dim_type']!r}")
    return added == "text_time"


class UNetOnnxWrapper(torch.nn.Module):
    """Positional tensors in, the raw model output out: the forward the exporter traces."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.text_time = uses_text_time(unet.config)
        self.input_names = list(REQUIRED_INPUTS) + (list(ADDED_COND_INPUTS) if self.text_time else [])

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
        added = {"text_embeds": text_embeds, "time_ids": time_ids} if self.text_time else None
        return self.unet(
            sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added, return_dict=False
        )[0]


class SD3OnnxWrapper(torch.nn.Module):
    """An ``SD3Transformer2DModel`` with the UNet export's interface plus ``pooled_projections`` (the velocity out)."""

    input_names = [*REQUIRED_INPUTS, *SD3_INPUTS]

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer

    def forward(self, sample, timestep, encoder_hidden_states, pooled_projections):
        return self.transformer(hidden_states=sample, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                                pooled_projections=pooled_projections, return_dict=False)[0]  # fmt: skip


def is_sd3(config) -> bool:
    return config.get("_class_name") == "SD3Transformer2DModel"


def onnx_wrapper(module) -> torch.nn.Module:
    """The traced forward for ``module``: `SD3OnnxWrapper` for an SD3 transformer, else `UNetOnnxWrapper`."""
    return (SD3OnnxWrapper if is_sd3(module.config) else UNetOnnxWrapper)(module).eval()


def example_inputs(config, *, dtype, device, batch_size=2, latent_size=None, seq_len=77, time_ids_dim=6):
    """Tensors of the right shapes for tracing: (sample, timestep, encoder_hidden_states[, text_embeds, time_ids])
    for a UNet, (sample, timestep, encoder_hidden_states, pooled_projections) for an SD3 transformer."""
    size = latent_size if latent_size is not None else config["sample_size"]
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    g = torch.Generator().manual_seed(0)
    if is_sd3(config):
        rand = lambda *shape: torch.randn(*shape, generator=g).to(device=device, dtype=dtype)  # noqa: E731
        return (rand(batch_size, config["in_channels"], h, w), torch.full((batch_size,), 500.0, device=device),
                rand(batch_size, seq_len, config["joint_attention_dim"]), rand(batch_size, config["pooled_projection_dim"]))
    text_time = uses_text_time(config)
    if config.get("encoder_hid_dim_type") == "text_proj":
        ctx_dim = config["encoder_hid_dim"]
    else:
        ctx_dim = config["cross_attention_dim"]
    if not isinstance(ctx_dim, int):
        raise ValueError(f"cannot export a UNet with per-block cross_attention_dim={ctx_dim!r}")

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    args = [
        rand(batch_size, config["in_channels"], h, w),
        torch.full((batch_size,), 500.0, device=device),  # timesteps are float32 whatever the weights
        rand(batch_size, seq_len, ctx_dim),
    ]
    if text_time:
        pooled_dim = config["projection_class_embeddings_input_dim"] - time_ids_dim * config["addition_time_embed_dim"]
        if pooled_dim <= 0:
            raise ValueError(f"time_ids_dim={time_ids_dim} leaves no room for text_embeds in this UNet's config")
        args += [rand(batch_size, pooled_dim), rand(batch_size, time_ids_dim)]
    return tuple(args)


# Measured (torch 2.13, opsets 17 and 23): torch.onnx.export(dynamo=False) stops at FLUX's q/k RMSNorm with
# UnsupportedOperatorError "Exporting the operator 'aten::rms_norm' to ONNX opset version N is not supported".
FLUX_ONNX_UNAVAILABLE = (
    "FLUX transformers cannot be exported to ONNX here: the TorchScript exporter has no ONNX symbolic for "
    "aten::rms_norm (FLUX's query/key RMSNorm) at any opset; run FLUX with --backend torch"
)


def load_unet(model, *, dtype=None, device=None):
    """A diffusers UNet from a pipeline folder (``unet/`` inside), a UNet folder, or a hub id; an SD3 pipeline
    folder (``transformer/`` inside) gives its ``SD3Transformer2DModel``."""
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel

    p = Path(model)
    for cfg in (p / "config.json", p / "transformer" / "config.json"):
        if cfg.is_file() and json.loads(cfg.read_text()).get("_class_name") == "FluxTransformer2DModel":
            raise BackendUnavailableError(FLUX_ONNX_UNAVAILABLE)
    cls, sub = UNet2DConditionModel, ({} if (p / "config.json").is_file() else {"subfolder": "unet"})
    if (p / "transformer" / "config.json").is_file() and not (p / "unet").is_dir():
        cls, sub = SD3Transformer2DModel, {"subfolder": "transformer"}
    elif (p / "config.json").is_file() and is_sd3(json.loads((p / "config.json").read_text())):
        cls = SD3Transformer2DModel
    unet = cls.from_pretrained(str(model), torch_dtype=dtype, **sub)
    return unet.to(device=device).eval() if device is not None else unet.eval()


def _trace_to_onnx(wrapper, args, path: Path, *, opset, dynamic_batch, dynamic_hw, dynamic_seq, exporter):
    names = wrapper.input_names
    axes = {n: {0: "batch"} for n in names + [OUTPUT]} if dynamic_batch else {n: {} for n in names + [OUTPUT]}
    if dynamic_seq:
        axes["encoder_hidden_states"][1] = "sequence"
    if dynamic_hw:
        axes["sample"].update({2: "height", 3: "width"})
        axes[OUTPUT].update({2: "height", 3: "width"})
    if exporter == "torchscript":
        with warnings.catch_warnings():
            # Expected while tracing a diffusers UNet: shape checks become constants (TracerWarning), and
            # torch flags the TorchScript exporter itself as legacy (DeprecationWarning).
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                wrapper, args, str(path), dynamo=False, opset_version=opset, input_names=names,
                output_names=[OUTPUT], dynamic_axes={k: v for k, v in axes.items() if v}, do_constant_folding=True,
            )
    else:
        shapes = tuple({i: torch.export.Dim.DYNAMIC for i in axes[n]} or None for n in names)
        torch.onnx.export(
            wrapper, args, str(path), dynamo=True, opset_version=opset, input_names=names,
            output_names=[OUTPUT], dynamic_shapes=shapes, external_data=True,
        )


def _resave(raw: Path, dest: Path, external_data) -> tuple[int, bool]:
    """``raw`` (the exporter's graph, its weights inline or in per-tensor files beside it) as ``dest`` and, when
    external, one ``model.onnx.data``; returns (weight bytes, external).

    Weights the exporter already wrote outside the graph (models over 2 GB) are copied into the data file one
    tensor at a time: the full-size SDXL UNet's ~10 GB are never all in memory next to the module (a plain
    ``onnx.load`` + ``save_model`` would hold them twice)."""
    import onnx

    model = onnx.load(str(raw), load_external_data=False)
    inits = model.graph.initializer
    if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in inits):  # small: the library re-saves it
        model = onnx.load(str(raw))
        weight_bytes = sum(t.ByteSize() for t in model.graph.initializer)
        external = weight_bytes > _EXTERNAL_DATA_LIMIT if external_data == "auto" else external_data
        onnx.save_model(model, str(dest), save_as_external_data=external, all_tensors_to_one_file=True,
                        location=DATA_FILE, size_threshold=1024)
        return weight_bytes, bool(external)
    if external_data is False:
        raise ValueError("this model's weights are over protobuf's 2 GB limit: it needs external_data (True or 'auto')")
    weight_bytes = 0
    with open(dest.parent / DATA_FILE, "wb") as out:
        for t in inits:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                info = {e.key: e.value for e in t.external_data}
                with open(raw.parent / info["location"], "rb") as f:
                    f.seek(int(info.get("offset", 0)))
                    data = f.read(int(info["length"])) if "length" in info else f.read()
            elif t.HasField("raw_data") and len(t.raw_data) >= 1024:
                data = t.raw_data
                t.ClearField("raw_data")
            else:
                weight_bytes += t.ByteSize()
                continue
            out.seek((out.tell() + 4095) // 4096 * 4096)  # page-aligned, as onnx's own writer does
            offset = out.tell()
            out.write(data)
            weight_bytes += len(data)
            del t.external_data[:]
            for k, v in (("location", DATA_FILE), ("offset", str(offset)), ("length", str(len(data)))):
                t.external_data.add(key=k, value=v)
            t.data_location = onnx.TensorProto.EXTERNAL
    onnx.save_model(model, str(dest))
    return weight_bytes, True


def export_unet_onnx(
    unet,
    out_dir,
    *,
    dtype: torch.dtype = torch.float32,
    device=None,
    latent_size: int | tuple[int, int] | None = None,
    seq_len: int = 77,
    batch_size: int = 2,
    dynamic_batch: bool = True,
    dynamic_hw: bool = False,
    dynamic_seq: bool = True,
    opset: int | None = None,
    external_data: bool | str = "auto",
    exporter: str = "torchscript",
    time_ids_dim: int = 6,
) -> Path:
    """Export ``unet`` (a ``UNet2DConditionModel``, or a folder/hub id to load one) to ``out_dir``.

    ``dtype`` float32 or float16 (the weights and float inputs; timesteps stay float32). ``latent_size``
    is the traced latent size (default: the config's ``sample_size``) and, unless ``dynamic_hw``, the
    only size the graph accepts; ``batch_size`` likewise when not ``dynamic_batch``, and ``seq_len``
    (the prompt length, 77 for SDXL's CLIP encoders) when not ``dynamic_seq``. ``external_data``: True, False or "auto" (weights over ~1.9 GB go to
    ``model.onnx.data``). A module whose dtype or device differs is copied, never modified.
    Returns the path of ``model.onnx``.
    """
    import onnx

    if dtype not in EXPORT_DTYPES.values():
        raise TypeError(f"export dtype must be torch.float32 or torch.float16, got {dtype}")
    if exporter not in ("torchscript", "dynamo"):
        raise ValueError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
    opset = opset if opset is not None else (17 if exporter == "torchscript" else 18)
    if opset < (17 if exporter == "torchscript" else 18):
        raise ValueError(f"opset {opset} is too old: LayerNormalization needs 17 (the dynamo exporter 18)")
    if external_data not in (True, False, "auto"):
        raise ValueError(f"external_data must be True, False or 'auto', got {external_data!r}")
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not (out_dir / META_FILE).is_file():
        raise OutputError(f"{out_dir} exists and is not a noisefast ONNX export; refusing to replace it (use a new --out)")

    # 1. The module, in the export dtype and device (a copy when the caller's differs).
    if not isinstance(unet, torch.nn.Module):
        unet = load_unet(unet, dtype=dtype, device=device)
    target = torch.device(device) if device is not None else unet.device
    if unet.dtype != dtype or unet.device != target:
        unet = copy.deepcopy(unet).to(device=target, dtype=dtype)
    wrapper = onnx_wrapper(unet)
    args = example_inputs(
        unet.config, dtype=dtype, device=target, batch_size=batch_size, latent_size=latent_size,
        seq_len=seq_len, time_ids_dim=time_ids_dim,
    )

    tmp = temporary_sibling_dir(out_dir)
    try:
        # 2. Trace to a raw file (the exporter may scatter weights into per-tensor files beside it).
        raw = tmp / "raw" / MODEL_FILE
        raw.parent.mkdir()
        with torch.no_grad():
            _trace_to_onnx(wrapper, args, raw, opset=opset, dynamic_batch=dynamic_batch, dynamic_hw=dynamic_hw,
                           dynamic_seq=dynamic_seq,
                           exporter=exporter)
        # 3. Re-save as one graph file (+ one weight file when large), then check the result.
        weight_bytes, external = _resave(raw, tmp / MODEL_FILE, external_data)
        shutil.rmtree(raw.parent)
        onnx.checker.check_model(str(tmp / MODEL_FILE))
        # 4. Metadata, with the content hash engines are keyed by.
        files = onnx_files(tmp / MODEL_FILE)
        meta = {
            "format": 1,
            "inputs": wrapper.input_names,
            "output": OUTPUT,
            "dtype": str(dtype).removeprefix("torch."),
            "opset": opset,
            "exporter": exporter,
            "dynamic_batch": dynamic_batch,
            "dynamic_hw": dynamic_hw,
            "dynamic_seq": dynamic_seq,
            "example_shapes": {n: list(a.shape) for n, a in zip(wrapper.input_names, args)},
            "weight_bytes": weight_bytes,
            "external_data": bool(external),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "unet_config": {k: v for k, v in dict(unet.config).items() if not k.startswith("_")},
            "interface": interface_record(tmp / MODEL_FILE),
            "sha256": sha256_files(files),
            "files": {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files},
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1, default=str))
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / MODEL_FILE


def run_export(args: argparse.Namespace) -> Path:
    """Run an export from parsed `add_export_arguments` options; prints and returns the model path."""
    if (args.height is None) != (args.width is None):
        raise InputError("give both --height and --width, or neither")
    for side in (args.height, args.width):
        if side is not None and side % 8:
            raise InputError(f"--height/--width must be multiples of 8 (the VAE factor), got {side}")
    if not str(args.out).strip():
        raise InputError("--out is empty: name the folder to write the export to")
    latent = (args.height // 8, args.width // 8) if args.height is not None else None
    path = export_unet_onnx(
        args.model, args.out, dtype=EXPORT_DTYPES[args.dtype], device=args.device, latent_size=latent,
        seq_len=args.seq_len, batch_size=args.static_batch or 2, dynamic_batch=args.static_batch is None,
        dynamic_hw=args.dynamic_hw, dynamic_seq=not args.static_seq, opset=args.opset, exporter=args.exporter,
        external_data={"auto": "auto", "yes": True, "no": False}[args.external_data],
    )
    print(path)
    return path


def main(argv=None) -> int:
    prog = "python -m noisefast.denoisers.onnx_export"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    run_export(add_export_arguments(parser).parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
