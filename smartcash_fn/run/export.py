"""Exporting a trained model: its weights alone, TorchScript or ONNX, with what a deployment needs beside it.

A checkpoint is the whole training state (params, optimizer moments,
history); a deployment wants the model. :func:`export` rebuilds the model
from a checkpoint's recipe, puts the checkpoint's params in it (the EMA
params when the recipe validated those), writes it in the chosen format, and
checks that the written model gives the checkpoint's outputs on the first
validation batch. A JSON file beside it (``model.<format>.json``) records the input shape, the output
names, the class names and layers, and the decoding settings::

    found = find_checkpoint("runs/tiny", prefer=("best", "last"))
    done = export(found, build(recipe_of(found), quiet=True), "torchscript", "runs/tiny/export")
    done.path, done.max_diff            # runs/tiny/export/model.torchscript.pt, 0.0

Outputs are flattened to a tuple of tensors in a fixed order (a detector's
``{layer: [level tensors]}`` becomes ``banknote.0, banknote.1, ...``), named
in the JSON. ONNX needs the optional extra ``pip install 'smartcash-fn[onnx]'``;
the check of an ONNX file runs where ``onnxruntime`` is installed.
"""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from .._files import save_torch_atomic, write_atomic, write_text_atomic
from .._version import __version__
from ..errors import UserError
from ..state import TrainState
from ..tree import walk
from .build import Built
from .folders import Found
from .footprint import sample_inputs
from .resume import state_in

FORMATS = ("weights", "torchscript", "onnx")
"""What :func:`export` writes: a weights-only file, a traced TorchScript module, an ONNX graph."""

SUFFIX = {"weights": "weights.pt", "torchscript": "torchscript.pt", "onnx": "onnx"}


@attrs.frozen
class Exported:
    """What :func:`export` wrote: the model file, its JSON, and how far its outputs are from the checkpoint's.

    ``checked`` is False when the format could not be run here (ONNX without onnxruntime).
    """

    path: Path
    meta_path: Path
    format: str
    max_diff: float
    checked: bool


class Flat(nn.Module):
    """A model whose outputs, however nested, come out as one tuple of tensors (what tracing and ONNX take).

    ``Flat(detector)(images)`` is ``(banknote level 0, banknote level 1, ..., security level 2)``.
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(v for _, v in walk(self.inner(*inputs)) if isinstance(v, torch.Tensor))


def output_names(outputs: Any) -> list[str]:
    """Names of the tensors in nested ``outputs``, in :class:`Flat`'s order: ``["banknote.0", ...]``.

    A bare tensor is ``"output"``; dict keys and list positions join with dots.
    """
    names = []
    for path, v in walk(outputs):
        if isinstance(v, torch.Tensor):
            name = path.replace("['", ".").replace("']", "").replace("[", ".").replace("]", "").strip(".")
            names.append(name or "output")
    return names


def model_of(state: TrainState, use_ema: bool = False) -> nn.Module:
    """A copy of the state's template model holding its params and buffers (the EMA ones with ``use_ema``), in
    eval mode: ``model_of(state)(x)`` is ``state.apply(x)``.
    """
    params, buffers = state.params, state.buffers
    if use_ema and "ema" in state.extras:
        params, buffers = state.extras["ema"]["params"], state.extras["ema"]["buffers"]
    model = copy.deepcopy(state.model)
    model.load_state_dict({**params, **buffers}, strict=False)
    return model.eval()


def example_inputs(built: Built) -> tuple[torch.Tensor, ...]:
    """The model's inputs for one sample: the first of the first validation (else training) batch."""
    data = built.loop.validation.data if built.loop.validation is not None else built.loop.data
    inputs = sample_inputs(data, built.template.seed)
    if inputs is None:
        raise UserError("export: the data's batches do not start with the model's input tensor; export from "
                        "Python with torch.jit.trace on smartcash_fn.run.export.model_of(state)")
    return inputs


def _meta(built: Built, found: Found, fmt: str, inputs: tuple[torch.Tensor, ...], names: list[str],
          half: bool) -> dict[str, Any]:
    info = built.template.data_info
    recipe = built.recipe
    decoding = {k: v for k, v in recipe.validation.params.items() if k in ("conf", "iou", "max_det")}
    return {
        "format": fmt, "checkpoint": str(found.path), "library_version": __version__,
        "torch_version": str(torch.__version__), "dtype": "float16" if half else "float32",
        "inputs": [{"name": "images" if len(inputs) == 1 else f"input{i}", "shape": list(x.shape),
                    "batch_axis": 0} for i, x in enumerate(inputs)],
        "outputs": names, "model": recipe.model.use, "model_params": dict(recipe.model.params),
        "image_size": info.get("image_size"), "class_names": info.get("class_names"),
        "layers": info.get("layers"), "decoding": decoding or None,
    }


def _onnx_bytes(model: nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str]) -> bytes:
    buffer = io.BytesIO()
    input_names = ["images"] if len(inputs) == 1 else [f"input{i}" for i in range(len(inputs))]
    axes = {n: {0: "batch"} for n in input_names + names}
    with warnings.catch_warnings():  # torch says this exporter is the older one; it is the fast one here
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, inputs, buffer, input_names=input_names, output_names=names, dynamic_axes=axes,
                          dynamo=False)  # TorchScript-based: 1.6 s for the detector (10 s via torch.export)
    return buffer.getvalue()


def _max_diff(got: Any, want: tuple[torch.Tensor, ...]) -> float:
    got = [torch.as_tensor(g).float() for g in got]
    if len(got) != len(want):
        raise UserError(f"export: the exported model gives {len(got)} outputs, the checkpoint's {len(want)}")
    return max(((g - w.float()).abs().max().item() for g, w in zip(got, want) if w.numel()), default=0.0)


def export(found: Found, built: Built, fmt: str, out: str | os.PathLike, *, half: bool = False,
           state: TrainState | None = None) -> Exported:
    """Write the checkpoint's model to folder ``out`` as ``model.<suffix>`` and ``model.<format>.json``; check it.

    ``state`` is the checkpoint's state on ``built``'s template (read from ``found`` when left out); ``half``
    writes float16 weights (the check then compares with the float32 outputs).
    """
    if fmt not in FORMATS:
        raise UserError(f"export: --format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if state is None:
        state = state_in(found, built.template)
    out = Path(out)
    model = model_of(state, use_ema=built.recipe.validation.use_ema)
    inputs = tuple(x.to(next(iter(state.params.values())).device) for x in example_inputs(built))
    with torch.no_grad():
        raw = model(*inputs)
    names = output_names(raw)
    flat = Flat(model).eval()
    with torch.no_grad():
        want = flat(*inputs)
    if half:
        flat = flat.half()
        inputs = tuple(x.half() if x.is_floating_point() else x for x in inputs)
    path = out / f"model.{SUFFIX[fmt]}"
    checked = True
    if fmt == "weights":
        sd = {k: v.detach().cpu() for k, v in flat.inner.state_dict().items()}
        save_torch_atomic(path, {"state_dict": sd, "meta": _meta(built, found, fmt, inputs, names, half)})
        back = copy.deepcopy(model)
        back.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
        with torch.no_grad():
            got = Flat(back.float().eval())(*(x.float() for x in inputs))
    elif fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():  # TorchScript is deprecated upstream, still served
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(flat, inputs)
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer)
            write_atomic(path, lambda f: f.write(buffer.getvalue()))
            got = torch.jit.load(str(path))(*inputs)
    else:
        data = _onnx_bytes(flat, inputs, names)
        write_atomic(path, lambda f: f.write(data))
        try:
            import onnxruntime  # optional: the check runs where it is installed
        except ImportError:
            got, checked = want, False
        else:
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            feeds = {i.name: x.cpu().numpy() for i, x in zip(session.get_inputs(), inputs)}
            got = [torch.from_numpy(a) for a in session.run(None, feeds)]
    diff = _max_diff(got, want) if checked else float("nan")
    meta = {**_meta(built, found, fmt, inputs, names, half), "max_abs_diff_vs_checkpoint": diff if checked else None}
    meta_path = write_text_atomic(out / f"model.{fmt}.json", json.dumps(meta, indent=2) + "\n")
    return Exported(path=path, meta_path=meta_path, format=fmt, max_diff=diff, checked=checked)
