"""Synthetic Rupiah scenes and their YOLO export.

A scene is a pure function of ``(seed, split, index, size, scenario)``: the
same bytes twice, in any order, in loader workers and with any number of
threads. Its labels are valid boxes inside the image in the three SmartCash
layers, the scenario knobs change what they claim to change, and an export
reads back to exactly what was rendered.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from PIL import Image

from smartcash_fn.smartcash import scenes as R
from smartcash_fn.data import LoaderData
from smartcash_fn.errors import DataError
from smartcash_fn.smartcash.export import data_yaml, export_synthetic, read_labels, split_sizes, yolo_lines

SIZE = 128


pytestmark = pytest.mark.usefixtures("one_thread")


def same_scene(a: R.Scene, b: R.Scene) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("image", "boxes", "labels", "visibility", "kept"))


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and len(ta) == len(tb)
        and all(torch.equal(p["boxes"], q["boxes"]) and torch.equal(p["labels"], q["labels"]) for p, q in zip(ta, tb))
        for (xa, ta), (xb, tb) in zip(a, b))


# ----------------------------------------------------------------------------- classes


def test_seventeen_classes_in_three_layers_in_smartcash_order():
    assert R.CLASSES[:7] == ("001", "002", "005", "010", "020", "050", "100")
    assert R.CLASSES[7:14] == tuple(f"l2_{c}" for c in R.CLASSES[:7])
    assert R.CLASSES[14:] == ("l3_sign", "l3_text", "l3_thread")
    assert list(R.LAYERS) == ["banknote", "nominal", "security"]
    assert sum(R.LAYERS.values(), ()) == R.CLASSES
    assert len(set(R.NOTE_COLOURS)) == 7


def test_font_draws_digits_and_letters_and_refuses_the_rest():
    one = R.text_bitmap("1")
    assert one.shape == (7, 5) and one.any() and not one.all()
    assert R.text_bitmap("100").shape == (7, 17)
    assert not torch.equal(R.text_bitmap("0"), R.text_bitmap("O"))
    with pytest.raises(DataError, match="Rp"):
        R.text_bitmap("Rp1.000")


# ----------------------------------------------------------------------------- determinism


def test_same_coordinates_give_the_same_bytes_and_others_differ():
    a = R.scene(0, "train", 3, SIZE)
    assert same_scene(a, R.scene(0, "train", 3, SIZE))
    for other in (R.scene(0, "train", 4, SIZE), R.scene(0, "val", 3, SIZE), R.scene(1, "train", 3, SIZE)):
        assert not torch.equal(other.image, a.image)
    image, target = R.render(0, "train", 3, SIZE)
    assert image.dtype == torch.float32 and image.shape == (3, SIZE, SIZE)
    assert torch.equal(image * 255.0, a.image.float())  # the float image is exactly uint8 / 255
    assert torch.equal(target["boxes"], a.boxes[a.kept]) and torch.equal(target["labels"], a.labels[a.kept])


def test_rendering_order_does_not_matter():
    data = R.RupiahScenes("val", 6, seed=4, size=SIZE)
    forward = [data[i] for i in range(6)]
    backward = [data[i] for i in reversed(range(6))][::-1]
    assert same_batches([(x[None], [t]) for x, t in forward], [(x[None], [t]) for x, t in backward])


def test_thread_count_does_not_change_a_bit():
    """Pixels use only exactly rounded elementwise ops, so 1 and 2 intra-op threads agree (textures rebuilt too)."""
    low = torch.rand(3, 7, 7, generator=torch.Generator().manual_seed(0))

    def render_all():
        R._design.cache_clear()
        # float results too: a last-bit difference rarely survives 8-bit rounding, so look before it
        textures = [level[0] for level in R._design(6).levels]
        return [R.scene(5, "train", i, 256) for i in range(2)], textures, R._upsample(low, 256)

    torch.set_num_threads(1)
    one = render_all()
    torch.set_num_threads(2)
    try:
        two = render_all()
    finally:
        torch.set_num_threads(1)
    assert all(same_scene(a, b) for a, b in zip(one[0], two[0]))
    assert all(torch.equal(a, b) for a, b in zip(one[1], two[1]))
    assert torch.equal(one[2], two[2])


def test_two_loader_workers_give_the_main_process_batches():
    data = R.RupiahScenes("train", 8, seed=2, size=96)
    main = list(LoaderData(data, batch_size=4, workers=0, collate_fn=R.collate).batches(seed=0, epoch=1))
    R._design.cache_clear()  # the workers build their own note textures
    two = list(LoaderData(data, batch_size=4, workers=2, collate_fn=R.collate).batches(seed=0, epoch=1))
    assert len(main) == 2 and main[0][0].shape == (4, 3, 96, 96)
    assert same_batches(main, two)


def test_a_mixed_scene_is_the_scene_of_the_preset_it_drew():
    drawn = set()
    for i in range(10):
        mixed = R.scene(0, "test", i, SIZE)
        drawn.add(mixed.scenario)
        assert same_scene(mixed, R.scene(0, "test", i, SIZE, mixed.scenario))
    assert len(drawn) >= 3


# ----------------------------------------------------------------------------- labels


def test_labels_are_valid_boxes_inside_the_image_and_every_class_appears():
    seen: set[int] = set()
    for i in range(40):
        image, target = R.render(0, "train", i, SIZE)
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        boxes, labels = target["boxes"], target["labels"]
        assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
        assert boxes.shape == (len(labels), 4)
        assert bool((boxes >= 0).all()) and bool((boxes <= SIZE).all())
        assert bool((boxes[:, 2] - boxes[:, 0] >= R.MIN_SIDE).all())
        assert bool((boxes[:, 3] - boxes[:, 1] >= R.MIN_SIDE).all())
        assert bool(((labels >= 0) & (labels < len(R.CLASSES))).all())
        seen |= set(labels.tolist())
    assert seen == set(range(len(R.CLASSES)))


def test_each_notes_features_lie_inside_its_box_and_are_small():
    for i in range(10):
        s = R.scene(0, "train", i, SIZE, "position")
        assert len(s.labels) % 5 == 0
        for note in range(len(s.labels) // 5):
            rows = slice(5 * note, 5 * note + 5)
            boxes, labels = s.boxes[rows], s.labels[rows].tolist()
            k = labels[0]
            assert labels == [k, 7 + k, 14, 15, 16]  # note, its numerals, sign, text, thread
            outer = boxes[0]
            assert bool((boxes[1:, :2] >= outer[:2] - 1e-3).all()) and bool((boxes[1:, 2:] <= outer[2:] + 1e-3).all())
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            if float(area[0]) > 100:
                assert bool((area[2:] < 0.2 * area[0]).all())  # security features are small objects


def test_a_note_shows_its_dominant_colour_inside_its_box():
    plain = R.Scenario(name="plain", notes=(1, 1), scale=(0.8, 0.8), centre=(0.5, 0.5), rotation=0.0, any_angle=0.0,
                       perspective=0.0, brightness=(1.0, 1.0), contrast=(1.0, 1.0), gamma=(1.0, 1.0), cast=0.0,
                       shading=0.0, noise=(0.0, 0.0), blur=0.0, occluders=(0, 0))
    checked = set()
    for i in range(30):
        s = R.scene(0, "train", i, 160, plain)
        k = int(s.labels[0])
        if k not in (4, 5, 6) or k in checked:  # green, blue, red notes: one dominant channel
            continue
        x0, y0, x1, y1 = s.boxes[0].round().int().tolist()
        inside = s.image[:, y0 + 4:y1 - 4, x0 + 4:x1 - 4].float().mean(dim=(1, 2))
        assert int(inside.argmax()) == {4: 1, 5: 2, 6: 0}[k], (k, inside)
        checked.add(k)
    assert checked == {4, 5, 6}


def test_a_note_off_the_image_leaves_no_label():
    away = attrs.evolve(R.SCENARIOS["small"], notes=(1, 1), centre=(1.4, 1.45), occluders=(0, 0))
    s = R.scene(0, "train", 0, SIZE, away)
    assert len(s.labels) == 5 and not bool(s.kept.any()) and float(s.visibility.max()) == 0.0
    assert R.render(0, "train", 0, SIZE, away)[1]["boxes"].shape == (0, 4)


# ----------------------------------------------------------------------------- scenarios


def scenes(scenario, n=12, size=SIZE):
    return [R.scene(0, "val", i, size, scenario) for i in range(n)]


def test_low_light_is_darker_than_ordinary_light():
    # the same indices draw the same backgrounds, so only the light differs
    dark = torch.stack([s.image.float().mean() for s in scenes("low_light")]).mean()
    lit = torch.stack([s.image.float().mean() for s in scenes("lighting")]).mean()
    assert float(dark) < 0.5 * float(lit)


def test_small_scenario_gives_smaller_notes():
    def note_areas(scenario):
        out = []
        for s in scenes(scenario):
            b = s.boxes[(s.labels < 7) & s.kept]
            out += ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).tolist()
        return torch.tensor(out)

    small, normal = note_areas("small"), note_areas("position")
    assert len(small) >= 12 and float(small.median()) < 0.25 * float(normal.median())


def test_occlusion_hides_and_drops_labels():
    heavy, none = scenes("occlusion"), scenes("lighting")  # lighting has no occluders
    vis_heavy = torch.cat([s.visibility for s in heavy]).mean()
    vis_none = torch.cat([s.visibility for s in none]).mean()
    assert float(vis_heavy) < float(vis_none) - 0.15
    dropped_notes = sum(int(((s.labels < 7) & ~s.kept).sum()) for s in heavy)
    assert dropped_notes >= 2
    for s in heavy:  # dropped for visibility, not for size: the rule in MIN_VISIBLE
        side = torch.minimum(s.boxes[:, 2] - s.boxes[:, 0], s.boxes[:, 3] - s.boxes[:, 1])
        assert torch.equal(s.kept, (side >= R.MIN_SIDE) & (s.visibility >= R.MIN_VISIBLE))


def test_bad_arguments_get_clear_errors():
    with pytest.raises(DataError, match="scenario 'foggy' is unknown.*low_light"):
        R.render(0, "train", 0, SIZE, "foggy")
    with pytest.raises(DataError, match="split 'dev'"):
        R.RupiahScenes("dev", 10)
    with pytest.raises(DataError, match="size must be an integer >= 32"):
        R.render(0, "train", 0, 8)
    with pytest.raises(DataError, match="Scenario.notes"):
        R.Scenario(notes=(3, 1))
    with pytest.raises(DataError, match="Scenario.blur"):
        R.Scenario(blur=2.0)
    with pytest.raises(DataError, match="n must be an integer >= 1"):
        R.RupiahScenes("train", 0)
    with pytest.raises(IndexError, match="outside 0..2"):
        R.RupiahScenes("train", 3)[3]


# ----------------------------------------------------------------------------- dataset helpers


def test_sample_augments_with_the_given_generator_only():
    plain = R.RupiahScenes("train", 4, size=64)
    jittered = attrs.evolve(plain, augment=R.Jitter(brightness=0.3, contrast=0.3, noise=0.02))
    image, target = plain[1]
    a = jittered.sample(1, torch.Generator().manual_seed(7))
    b = jittered.sample(1, torch.Generator().manual_seed(7))
    c = jittered.sample(1, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0]) and not torch.equal(a[0], image)
    assert torch.equal(a[1]["boxes"], target["boxes"])
    assert torch.equal(plain.sample(1, torch.Generator().manual_seed(7))[0], image)


def test_collate_stacks_images_and_flat_targets_index_them():
    data = R.RupiahScenes("train", 3, size=64, scenario="position")
    images, targets = R.collate([data[0], data[1], data[2]])
    assert images.shape == (3, 3, 64, 64) and len(targets) == 3
    rows = R.flat_targets(targets)
    assert rows.shape == (sum(len(t["labels"]) for t in targets), 6)
    for i, t in enumerate(targets):
        mine = rows[rows[:, 0] == i]
        assert torch.equal(mine[:, 1].long(), t["labels"]) and torch.equal(mine[:, 2:], t["boxes"])


# ----------------------------------------------------------------------------- YOLO export


def folder_digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "data.yaml"):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_split_sizes_add_up():
    assert split_sizes(10) == (7, 2, 1)
    assert split_sizes(100) == (70, 15, 15)
    assert split_sizes(1) == (1, 0, 0)
    assert all(sum(split_sizes(n, (0.5, 0.3, 0.2))) == n for n in range(1, 50))
    with pytest.raises(DataError, match="summing to 1"):
        split_sizes(10, (0.5, 0.5, 0.5))


def test_export_writes_a_yolo_layout_that_reads_back(tmp_path):
    yaml = export_synthetic(tmp_path / "ds", n=10, seed=1, size=96, image_format="png")
    root = tmp_path / "ds"
    assert yaml == root / "data.yaml"
    text = yaml.read_text()
    assert f"path: '{root}'" in text and "train: images/train" in text and "val: images/val" in text
    assert "test: images/test" in text and "\nnc: 17\n" in text
    names_line = next(line for line in text.splitlines() if line.startswith("names:"))
    assert tuple(re.findall(r"'([^']*)'", names_line)) == R.CLASSES
    assert sorted(p.name for p in root.iterdir()) == ["data.yaml", "images", "labels"]
    for split, count in zip(("train", "val", "test"), (7, 2, 1)):
        images = sorted((root / "images" / split).iterdir())
        labels = sorted((root / "labels" / split).iterdir())
        assert [p.stem for p in images] == [p.stem for p in labels] == [f"{split}_{i:06d}" for i in range(count)]
        for i, (image_file, label_file) in enumerate(zip(images, labels)):
            s = R.scene(1, split, i, 96)
            with Image.open(image_file) as decoded:
                assert torch.equal(torch.from_numpy(np.array(decoded.convert("RGB"))).permute(2, 0, 1), s.image)
            boxes, classes = read_labels(label_file, size=96)
            assert torch.equal(classes, s.labels[s.kept])
            torch.testing.assert_close(boxes, s.boxes[s.kept], rtol=0, atol=1e-4)  # 6 decimals of 96 px
            for line in label_file.read_text().splitlines():
                assert re.fullmatch(r"\d+ (\d\.\d{6} ){3}\d\.\d{6}", line), line


def test_export_is_deterministic_and_keeps_what_is_already_there(tmp_path):
    first = export_synthetic(tmp_path / "a", n=6, size=64, scenario="occlusion").parent
    second = export_synthetic(tmp_path / "b", n=6, size=64, scenario="occlusion", workers=2).parent
    assert folder_digest(first) == folder_digest(second)
    assert any(first.rglob("*.jpg")) and not any(first.rglob("*.png"))

    with pytest.raises(DataError, match="not empty.*overwrite=True"):
        export_synthetic(first, n=4, size=64)
    before = folder_digest(first)
    assert folder_digest(export_synthetic(first, n=6, size=64, scenario="occlusion", overwrite=True).parent) == before

    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "mine.txt").write_text("precious")
    with pytest.raises(DataError, match="not a previous export"):
        export_synthetic(keep, n=4, size=64, overwrite=True)
    assert (keep / "mine.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "notes"]  # no partial folders left


def test_export_refuses_bad_arguments_before_writing(tmp_path):
    out = tmp_path / "out"
    for kwargs, message in (({"n": 0}, "n must be"), ({"n": 5, "size": 10}, "size must be"),
                            ({"n": 5, "image_format": "bmp"}, "image_format"),
                            ({"n": 5, "scenario": "foggy"}, "scenario 'foggy'"),
                            ({"n": 5, "split_fractions": (1.0, 0.2, 0.0)}, "split_fractions"),
                            ({"n": 5, "workers": -1}, "workers")):
        with pytest.raises(DataError, match=message):
            export_synthetic(out, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_label_lines_and_yaml_helpers():
    lines = yolo_lines(torch.tensor([[10.0, 20.0, 50.0, 40.0]]), torch.tensor([14]), 100)
    assert lines == ["14 0.300000 0.300000 0.400000 0.200000"]
    assert "names: ['001', '002'," in data_yaml("/data/x")


def test_read_labels_names_the_bad_line(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("0 0.5 0.5 0.2 0.1\n3 0.5 oops 0.2 0.1\n")
    with pytest.raises(DataError, match=r"a\.txt:2: expected 'class cx cy w h'"):
        read_labels(f, 64)
    f.write_text("17 0.5 0.5 0.2 0.1\n")
    with pytest.raises(DataError, match=r"a\.txt:1: class 17 is outside 0..16"):
        read_labels(f, 64)


def test_the_first_example_in_the_docs_runs(tmp_path, monkeypatch):
    text = (Path(__file__).resolve().parents[1] / "docs" / "synthetic-data.md").read_text(encoding="utf-8")
    block = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "docs"}
    exec(compile(block, "docs/synthetic-data.md", "exec"), ns)  # noqa: S102 - our own docs
    assert set(ns["target"]) == {"boxes", "labels"} and ns["image"].shape == (3, 256, 256)
    assert len(ns["data"]) == 2000 // 16 and ns["val_low"].scenario == "low_light"
