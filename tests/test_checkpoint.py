"""Checkpoints: one file per state, plain data only, verified on load, and refused with a clear error when bad.

Round trips keep every serialized field (and which tensors are shared);
truncated, bit-flipped, foreign, future-format and malicious files raise
:class:`CheckpointError` naming the file, and a malicious file's code never
runs. The digest is recomputed by the code printed in
``docs/checkpoint-format.md``, as another tool would.
"""

from __future__ import annotations

import os
import pickle
import struct
import zipfile
from functools import partial
from pathlib import Path

import pytest
import toolz
import torch

import smartcash_fn as sf
from conftest import make_cnn, make_mlp, save_redigested, tiny_images, tiny_xy


def trained(make_model=partial(make_mlp, dropout=0.1), opt=None, epochs=2, batch=8):
    """A state after a short run with EMA, accumulation mid-way, the best params, plateau and step records."""
    x, y = tiny_xy() if make_model is not make_cnn else tiny_images()
    step = toolz.compose(sf.accumulate(5), sf.clip(1.0), sf.ema(0.9))(sf.make_step(sf.classification_loss))
    loop = sf.Loop(step=step, data=sf.TensorData((x, y), batch), epochs=epochs,
                   validation=sf.Validation(sf.TensorData((x, y), 16)),
                   callbacks=(sf.early_stopping("val/loss", patience=5), sf.reduce_on_plateau("val/loss"),
                              sf.record_steps(2)))
    template = sf.TrainState.create(make_model, opt or sf.adamw(1e-2), seed=4,
                                    recipe={"name": "tiny", "lr": 0.01, "layers": [8, 16, 4], "tags": ("a", None)})
    return template, sf.fit(template, loop)


@pytest.fixture(scope="module")
def mlp_run():
    return trained()


@pytest.fixture
def ckpt(tmp_path, mlp_run):
    """A checkpoint file of a trained state, with a meta key."""
    return sf.save(mlp_run[1], tmp_path / "ck.pt", note="meta-note-value")


# --------------------------------------------------------------------------- round trips

OPTIMIZERS = {
    "adamw": lambda: sf.adamw(1e-2, weight_decay=0.1),
    "sgd": lambda: sf.sgd(0.05, momentum=0.9),
    "multi_transform": lambda: sf.multi_transform(
        {"body": sf.adamw(1e-2), "head": sf.sgd(0.05, momentum=0.5), "still": sf.frozen()},
        sf.label_by_prefix({"0.": "body", "1.": "still"}, default="head")),
}


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_round_trip_keeps_every_serialized_field(opt, tmp_path):
    template, state = trained(make_cnn, OPTIMIZERS[opt](), epochs=1)
    state = state.replace(stop=sf.Stop("asked to", failed=False), lr_scale=0.25)
    path = sf.save(state, tmp_path / "a.pt")
    loaded = sf.load(path, like=template)
    assert sf.verify(loaded, state) is None
    assert loaded.model is template.model and loaded.optimizer is template.optimizer
    assert loaded.recipe == state.recipe and loaded.stop == state.stop and loaded.lr_scale == 0.25
    assert loaded.history == state.history
    assert loaded.progress == state.progress
    # a loaded state trains on
    x, y = tiny_images()
    on = sf.make_step(sf.classification_loss)(loaded, (x[:8], y[:8]))
    assert on.progress.step == loaded.progress.step + 1 and on.opt_state is not loaded.opt_state


def test_round_trip_keeps_shared_tensors_shared(tmp_path, mlp_run):
    template, state = mlp_run
    assert state.best is not None and "ema" in state.extras and "accumulate" in state.extras
    shared = [k for k in state.params if state.best.params[k] is state.params[k]]
    loaded = sf.load(sf.save(state, tmp_path / "a.pt"), like=template)
    for k in state.params:
        assert (loaded.best.params[k] is loaded.params[k]) == (k in shared)
        assert torch.equal(loaded.best.params[k], state.best.params[k])


def test_a_checkpoint_is_plain_data_for_torch_load(ckpt):
    raw = torch.load(ckpt, weights_only=True)
    assert list(raw) == ["format", "format_version", "library_version", "torch_version", "environment", "created",
                         "digest", "meta", "state"]
    assert raw["environment"] == sf.environment.current("cpu")
    assert raw["format"] == "smartcash_fn.checkpoint" and raw["format_version"] == 1
    assert raw["library_version"] == sf.__version__ and raw["torch_version"] == torch.__version__
    assert raw["meta"] == {"note": "meta-note-value"}
    assert list(raw["state"]) == ["params", "buffers", "opt_state", "progress", "seed", "history", "metrics",
                                  "running", "extras", "callbacks", "best", "stop", "lr_scale", "recipe", "data_info"]


DOC = Path(__file__).resolve().parent.parent / "docs" / "checkpoint-format.md"


def doc_code(containing: str) -> str:
    """The python code block of docs/checkpoint-format.md that contains ``containing``."""
    blocks = DOC.read_text().split("```python\n")[1:]
    found = [b.split("```", 1)[0] for b in blocks if containing in b]
    assert len(found) == 1, f"docs/checkpoint-format.md has no single python block with {containing!r}"
    return found[0]


def test_the_digest_can_be_recomputed_from_the_documented_code(ckpt):
    """Another tool can recompute the digest: the doc's code, run as is, gives the file's digest."""
    scope: dict = {}
    exec(doc_code("def checkpoint_digest"), scope)
    raw = torch.load(ckpt, weights_only=True)
    assert scope["checkpoint_digest"](raw) == raw["digest"]
    raw["meta"]["note"] = "other"
    assert scope["checkpoint_digest"](raw) != raw["digest"]


def test_the_documented_reading_example_runs(ckpt, mlp_run):
    _, state = mlp_run
    model = make_mlp(dropout=0.1)
    code = doc_code("weights_only=True").replace('"runs/a/checkpoints/last.pt"', repr(str(ckpt)))
    assert len(code.strip().splitlines()) <= 10
    exec(code, {"build_the_same_model": lambda: model, "print": lambda *a: None})
    for k, v in model.state_dict().items():
        assert torch.equal(v, state.extras["ema"]["params"][k])


def test_a_value_torch_load_could_not_read_is_refused_at_save(tmp_path, mlp_run):
    state = mlp_run[1].replace(callbacks={"mine": {"when": Path("/somewhere")}})
    with pytest.raises(sf.CheckpointError,
                       match=r"x\.pt: not written: .*\['callbacks'\]\['mine'\]\['when'\], of type PosixPath"):
        sf.save(state, tmp_path / "x.pt")
    with pytest.raises(sf.CheckpointError, match=r"\['meta'\]\['run'\].*PosixPath"):
        sf.save(mlp_run[1], tmp_path / "x.pt", run=Path("a"))
    assert not (tmp_path / "x.pt").exists()
    assert os.listdir(tmp_path) == []


def test_a_save_that_cannot_write_is_a_checkpoint_error(tmp_path, mlp_run):
    (tmp_path / "plain-file").write_text("x")
    with pytest.raises(sf.CheckpointError, match=r"plain-file/a\.pt: could not write the checkpoint"):
        sf.save(mlp_run[1], tmp_path / "plain-file" / "a.pt")
    assert (tmp_path / "plain-file").read_text() == "x"


def test_save_replaces_a_file_atomically_and_leaves_no_temp_files(tmp_path, mlp_run):
    template, state = mlp_run
    sf.save(template, tmp_path / "a.pt")
    sf.save(state, tmp_path / "a.pt")
    assert os.listdir(tmp_path) == ["a.pt"]
    assert sf.verify(sf.load(tmp_path / "a.pt", like=template), state) is None


# --------------------------------------------------------------------------- damaged files


def _member_data_offset(path: Path, suffix: str) -> tuple[int, int]:
    """File offset and size of the stored bytes of the zip member whose name ends with ``suffix``."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(suffix))
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def _flip(path: Path, offset: int, out: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    out.write_bytes(bytes(data))
    return out


def test_a_flipped_bit_in_tensor_data_is_caught(ckpt, tmp_path, mlp_run):
    raw = torch.load(ckpt, weights_only=True)
    weight = raw["state"]["params"]["0.weight"]
    start, size = _member_data_offset(ckpt, "data.pkl")
    # find the stored bytes of params['0.weight'] (an 16x8 float32 tensor) in the file
    blob = ckpt.read_bytes()
    at = blob.find(weight.numpy().tobytes())
    assert at > start + size, "the tensor's bytes were not found in the file"
    bad = _flip(ckpt, at + 17, tmp_path / "flipped.pt")
    assert torch.load(bad, weights_only=True)["state"]["params"]["0.weight"].ne(weight).sum() == 1
    with pytest.raises(sf.CheckpointError, match=r"flipped\.pt: integrity check failed"):
        sf.load(bad, like=mlp_run[0])


@pytest.mark.parametrize("where", ["created", "torch_version", "meta", "param name", "history float", "digest",
                                   "pickle opcode"])
def test_a_flipped_bit_elsewhere_is_caught(where, ckpt, tmp_path, mlp_run):
    raw = torch.load(ckpt, weights_only=True)
    start, size = _member_data_offset(ckpt, "data.pkl")
    pickled = ckpt.read_bytes()[start:start + size]
    needle = {
        "created": raw["created"].encode(),
        "torch_version": raw["torch_version"].encode(),
        "meta": b"meta-note-value",
        "param name": b"0.weight",
        "history float": struct.pack(">d", raw["state"]["history"]["epochs"][0]["train/loss"]),
        "digest": raw["digest"].encode()[-20:],
        "pickle opcode": b"format_version",
    }[where]
    at = pickled.find(needle)
    assert at >= 0, f"{where} not found in the pickled data"
    offset = start + at + (len(needle) // 2 if where != "pickle opcode" else -5)
    bad = _flip(ckpt, offset, tmp_path / "flipped.pt")
    with pytest.raises(sf.CheckpointError, match=r"flipped\.pt: "):
        sf.load(bad, like=mlp_run[0])


@pytest.mark.parametrize("keep", [0, 1, 100, 0.5, -1, -22])
def test_a_truncated_checkpoint_names_the_file(keep, ckpt, tmp_path):
    data = ckpt.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    bad = tmp_path / "cut.pt"
    bad.write_bytes(data[:n])
    with pytest.raises(sf.CheckpointError, match=r"cut\.pt: unreadable checkpoint: truncated or corrupt"):
        sf.read(bad)


def test_a_missing_file_and_a_directory_are_refused(tmp_path):
    with pytest.raises(sf.CheckpointError, match=r"nope\.pt: no such checkpoint file"):
        sf.load(tmp_path / "nope.pt")
    (tmp_path / "runs").mkdir()
    with pytest.raises(sf.CheckpointError, match=r"runs: not a file .*runs/last\.pt"):
        sf.load(tmp_path / "runs")


def test_another_format_version_is_refused_naming_both_versions(ckpt, tmp_path):
    raw = torch.load(ckpt, weights_only=True)
    raw["format_version"] = 99
    torch.save(raw, tmp_path / "future.pt")
    with pytest.raises(sf.CheckpointError, match=r"future\.pt: checkpoint format version 99; .* reads version 1"):
        sf.load(tmp_path / "future.pt")


def test_a_plain_state_dict_or_other_pickle_is_not_a_checkpoint(tmp_path):
    torch.save(make_mlp().state_dict(), tmp_path / "weights.pt")
    with pytest.raises(sf.CheckpointError, match=r"weights\.pt: not a smartcash_fn checkpoint"):
        sf.load(tmp_path / "weights.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(sf.CheckpointError, match=r"list\.pt: not a smartcash_fn checkpoint"):
        sf.read(tmp_path / "list.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(sf.CheckpointError, match=r"text\.pt: "):
        sf.read(tmp_path / "text.pt")


def test_a_checkpoint_missing_its_state_or_with_a_malformed_state_is_refused(ckpt, tmp_path):
    raw = torch.load(ckpt, weights_only=True)
    torch.save({k: v for k, v in raw.items() if k != "state"}, tmp_path / "nostate.pt")
    with pytest.raises(sf.CheckpointError, match=r"nostate\.pt: checkpoint is missing its 'state' key"):
        sf.read(tmp_path / "nostate.pt")
    body = {**raw, "state": {k: v for k, v in raw["state"].items() if k != "progress"}}
    save_redigested(body, tmp_path / "odd.pt")
    with pytest.raises(sf.CheckpointError, match=r"odd\.pt: the checkpoint's state is malformed .*progress"):
        sf.load(tmp_path / "odd.pt")


class _Touch:
    """Unpickling this object would create ``marker`` (a stand-in for any code a file could run)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class _System:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["zip", "legacy", "pickle", "system"])
def test_a_pickled_callable_is_refused_without_running_it(how, ckpt, tmp_path):
    marker = tmp_path / "ran"
    raw = torch.load(ckpt, weights_only=True)
    bad = tmp_path / "evil.pt"
    payload = {**raw, "meta": {"x": (_System if how == "system" else _Touch)(marker)}}
    if how == "pickle":
        with open(bad, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    else:
        torch.save(payload, bad, _use_new_zipfile_serialization=(how != "legacy"))
    with pytest.raises(sf.CheckpointError, match=r"evil\.pt: refused to load: .*nothing in it was run"):
        sf.load(bad)
    assert not marker.exists()
    # the payload is real: an unguarded load would have run it
    if how == "pickle":
        pickle.loads(bad.read_bytes())
    else:
        torch.load(bad, weights_only=False)
    assert marker.exists()


# --------------------------------------------------------------------------- templates that do not fit


def test_loading_into_a_template_with_other_shapes_names_the_param(ckpt):
    nn = torch.nn
    wider = sf.TrainState.create(lambda: nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, 4)),
                                 sf.adamw(1e-2))
    with pytest.raises(sf.StateError, match=r"ck\.pt: param '0\.weight' has shape \(16, 8\) in the checkpoint, "
                                            r"\(32, 8\) in the model"):
        sf.load(ckpt, like=wider)


def test_loading_into_a_template_with_other_names_lists_them(ckpt):
    cnn = sf.TrainState.create(make_cnn, sf.adamw(1e-2))
    with pytest.raises(sf.StateError, match=r"ck\.pt: the checkpoint does not fit the model: missing params "
                                            r"\['1\.weight', '1\.bias', '5\.weight'\] \.\.\.; "
                                            r"unexpected params \['3\.weight', '3\.bias'\]"):
        sf.load(ckpt, like=cnn)


def test_like_must_be_a_state(ckpt):
    with pytest.raises(sf.StateError, match=r"ck\.pt: like must be a TrainState, got Sequential"):
        sf.load(ckpt, like=make_mlp())
    with pytest.raises(sf.StateError, match="save: expected a TrainState, got dict"):
        sf.save({"params": {}}, ckpt)
    assert isinstance(sf.load(ckpt), sf.TrainState)
