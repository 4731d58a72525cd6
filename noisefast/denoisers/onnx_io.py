"""The exported UNet's interface, shared by the ONNX Runtime and TensorRT denoisers.

An exported UNet (see `noisefast.denoisers.onnx_export`) has the inputs

    sample                 [B, C, H, W]   the latent x
    timestep               [B]            t (float32 as exported)
    encoder_hidden_states  [B, L, D]      Condition.prompt_embeds
    text_embeds            [B, P]         Condition.pooled_prompt_embeds   (SDXL text_time only)
    time_ids               [B, T]         Condition.time_ids                (SDXL text_time only)
    pooled_projections     [B, P]         Condition.pooled_prompt_embeds   (SD3 transformers: their velocity)

and one output ``out_sample [B, C_out, H, W]``: the raw model output, exactly what the torch UNet
returns. `unet_feed` turns a ``den(x, t, cond)`` call into that input set, on the runtime's device
and in the model's dtypes, with shape errors that name the input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from noisefast.denoisers.artifacts import sha256_files
from noisefast.denoisers.base import Condition, wants_grad

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
META_FILE = "noisefast_onnx.json"
REQUIRED_INPUTS = ("sample", "timestep", "encoder_hidden_states")
ADDED_COND_INPUTS = ("text_embeds", "time_ids")
SD3_INPUTS = ("pooled_projections",)  # an exported SD3Transformer2DModel: the UNet's three inputs + this
OUTPUT = "out_sample"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, element dtype and shape (an int, or a symbolic name)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int | str, ...]

    @property
    def dynamic_axes(self) -> tuple[int, ...]:
        return tuple(i for i, d in enumerate(self.shape) if not isinstance(d, int))


def resolve_onnx_path(path) -> Path:
    """An export folder (holding ``model.onnx``) or an ``.onnx`` file → the ``.onnx`` file."""
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise FileNotFoundError(f"no ONNX model at {path!s} (expected an .onnx file or a folder holding {MODEL_FILE})")
    return p


def _onnx_dtype(elem_type: int) -> torch.dtype:
    from onnx import TensorProto

    table = {
        TensorProto.FLOAT: torch.float32,
        TensorProto.FLOAT16: torch.float16,
        TensorProto.BFLOAT16: torch.bfloat16,
        TensorProto.DOUBLE: torch.float64,
        TensorProto.INT64: torch.int64,
        TensorProto.INT32: torch.int32,
    }
    if elem_type not in table:
        raise TypeError(f"unsupported ONNX element type {TensorProto.DataType.Name(elem_type)}")
    return table[elem_type]


def _spec(value_info) -> TensorSpec:
    tt = value_info.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim)
    return TensorSpec(value_info.name, _onnx_dtype(tt.elem_type), shape)


def read_onnx_specs(path) -> tuple[dict[str, TensorSpec], TensorSpec]:
    """Input specs (by name, in graph order) and the output spec of an exported UNet.

    From the ``interface`` noisefast's export records beside the model (no ``import onnx``: seconds of start-up
    saved on every process that loads a cached export), else from the graph (external weight files are not
    touched). Raises ValueError when the graph does not have the exported UNet's interface.
    """
    recorded = (read_export_meta(path) or {}).get("interface")
    if recorded:
        def spec(name, d):
            return TensorSpec(name, getattr(torch, d["dtype"]), tuple(d["shape"]))

        inputs = {n: spec(n, d) for n, d in recorded["inputs"].items()}
        output = spec(recorded["output"]["name"], recorded["output"])
    else:
        import onnx

        model = onnx.load(str(resolve_onnx_path(path)), load_external_data=False)
        initializers = {i.name for i in model.graph.initializer}
        inputs = {vi.name: _spec(vi) for vi in model.graph.input if vi.name not in initializers}
        if len(model.graph.output) != 1:
            raise ValueError(f"{path!s}: expected one output, got {[o.name for o in model.graph.output]}")
        output = _spec(model.graph.output[0])
    names = set(inputs)
    missing = [n for n in REQUIRED_INPUTS if n not in names]
    extra = sorted(names - set(REQUIRED_INPUTS) - set(ADDED_COND_INPUTS) - set(SD3_INPUTS))
    added = [n for n in ADDED_COND_INPUTS if n in names]
    if missing or extra or len(added) == 1 or (added and SD3_INPUTS[0] in names):
        raise ValueError(
            f"{path!s} is not an exported noisefast UNet or SD3 transformer: inputs {sorted(names)}; expected "
            f"{list(REQUIRED_INPUTS)} plus optionally both of {list(ADDED_COND_INPUTS)} (UNet) or {list(SD3_INPUTS)} (SD3)"
        )
    return inputs, output


def interface_record(path) -> dict:
    """The graph's interface as `read_onnx_specs` reads it back from the export's metadata."""
    inputs, output = read_onnx_specs(path)

    def rec(spec):
        return {"dtype": str(spec.dtype).removeprefix("torch."), "shape": list(spec.shape)}

    return {"inputs": {n: rec(v) for n, v in inputs.items()}, "output": {"name": output.name, **rec(output)}}


def onnx_files(path) -> list[Path]:
    """The ``.onnx`` file followed by every external data file it references (as the export recorded them, else
    read from the graph)."""
    p = resolve_onnx_path(path)
    recorded = (read_export_meta(p) or {}).get("files") if p.name == MODEL_FILE else None
    if recorded:
        return [p] + [p.parent / name for name in recorded if name != p.name]
    import onnx

    model = onnx.load(str(p), load_external_data=False)
    locations = []
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            loc = next(e.value for e in init.external_data if e.key == "location")
            if loc not in locations:
                locations.append(loc)
    return [p] + [p.parent / loc for loc in locations]


def onnx_content_hash(path) -> str:
    """SHA-256 of the model and its external data (the key for engines built from it).

    The export writes the hash with each file's size and mtime into ``noisefast_onnx.json``; when all
    of them still match, that hash is returned without re-reading gigabytes of weights.
    """
    files = onnx_files(path)
    meta = read_export_meta(path) if files[0].name == MODEL_FILE else None
    if meta is not None:
        stamps = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files}
        if meta.get("files") == stamps and meta.get("sha256"):
            return meta["sha256"]
    return sha256_files(files)


def read_export_meta(path) -> dict | None:
    """The ``noisefast_onnx.json`` written beside an exported ``model.onnx`` (None for a foreign file)."""
    meta = resolve_onnx_path(path).parent / META_FILE
    return json.loads(meta.read_text()) if meta.is_file() else None


def latent_geometry(path, inputs: dict[str, TensorSpec]) -> tuple[int | None, int | tuple[int, int] | None]:
    """``(in_channels, sample_size)`` of the graph, as `UNetDenoiser` reports them (None where unknown).

    A static latent size comes from the graph; a dynamic one from the exported UNet's config.
    """
    _, c, h, w = inputs["sample"].shape
    if isinstance(h, int) and isinstance(w, int):
        size = h if h == w else (h, w)
    else:
        size = ((read_export_meta(path) or {}).get("unet_config") or {}).get("sample_size")
        size = tuple(size) if isinstance(size, list) else size
    return (c if isinstance(c, int) else None), size


def require_no_grad(backend: str, x: torch.Tensor, cond: Condition) -> None:
    """An export without its torch UNet cannot carry gradients: refuse instead of silently detaching."""
    if wants_grad(x, cond):
        raise RuntimeError(
            f"the {backend} backend runs the forward only and was built from an export without its torch UNet, "
            "but its inputs require grad; build it from the model (make_denoiser(unet, ...), the Engine does) so "
            "gradients go through torch, or run it under torch.no_grad()"
        )


def _timesteps(t: torch.Tensor, batch: int) -> torch.Tensor:  # -> [B]
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    if t.ndim == 0 or (t.ndim == 1 and t.shape[0] == 1):
        return t.reshape(1).expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"timesteps t must be [B]={batch} (or a scalar), got shape {tuple(t.shape)}")
    return t


def unet_feed(
    x: torch.Tensor,  # [B, C, H, W]
    t: torch.Tensor,  # [B] (or a scalar, broadcast)
    cond: Condition,  # batch B or 1
    inputs: dict[str, TensorSpec],
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """The graph's inputs for ``den(x, t, cond)``: contiguous, on ``device``, in the graph's dtypes."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"x must be a [B, C, H, W] tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(cond, Condition):
        raise TypeError(f"cond must be a noisefast Condition, got {type(cond).__name__}")
    batch = x.shape[0]
    cond = cond.expand(batch)
    values = {"sample": x, "timestep": _timesteps(t, batch), "encoder_hidden_states": cond.prompt_embeds}
    if "text_embeds" in inputs:
        if cond.pooled_prompt_embeds is None or cond.time_ids is None:
            raise ValueError(
                "this UNet takes SDXL added conditions (text_embeds, time_ids), but the Condition has "
                "pooled_prompt_embeds or time_ids = None"
            )
        values["text_embeds"] = cond.pooled_prompt_embeds
        values["time_ids"] = cond.time_ids
    if "pooled_projections" in inputs:
        if cond.pooled_prompt_embeds is None:
            raise ValueError("this SD3 transformer takes pooled_projections, but Condition.pooled_prompt_embeds is None")
        values["pooled_projections"] = cond.pooled_prompt_embeds
    feed = {}
    for name, spec in inputs.items():
        v = values[name]
        shape = tuple(v.shape)
        if len(shape) != len(spec.shape) or any(isinstance(s, int) and s != d for s, d in zip(spec.shape, shape)):
            raise ValueError(f"input {name!r} has shape {shape}, but the exported model takes {spec.shape}")
        feed[name] = v.to(device=device, dtype=spec.dtype).contiguous()
    return feed


class ExportedUNetDenoiser:
    """What the onnxruntime and tensorrt denoisers share: the graph's interface and the call's checks.

    Subclasses set ``self.device`` and implement ``_run(feed) -> out_sample`` on that device. ``autograd`` is the
    torch denoiser of the UNet the export was made from (None for a bare export): a call whose inputs require
    grad goes through it, so gradients flow (`noisefast.transform` runs the forward of each checkpointed step here
    and recomputes it in torch for the backward).
    """

    backend = "onnx"

    def __init__(self, path, *, autograd=None):
        self.autograd = autograd
        self.path = resolve_onnx_path(path)
        self.inputs, self.output = read_onnx_specs(self.path)
        self.in_channels, self.sample_size = latent_geometry(self.path, self.inputs)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the graph's ``sample`` input (the precision it was exported in)."""
        return self.inputs["sample"].dtype

    def _run(self, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def __call__(
        self,
        x: torch.Tensor,  # [B, C, H, W]
        t: torch.Tensor,  # [B] timesteps
        cond: Condition,  # batch B or 1
    ) -> torch.Tensor:  # [B, C_out, H, W], x's dtype and device
        if self.autograd is not None and wants_grad(x, cond):
            return self.autograd(x, t, cond)
        require_no_grad(self.backend, x, cond)
        return self._run(unet_feed(x, t, cond, self.inputs, self.device)).to(device=x.device, dtype=x.dtype)
