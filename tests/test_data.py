"""Datasets: every source read from tiny files in its real on-disk format, the transforms, the loader, the errors."""

import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from edgekd.data import DataBundle, build_data, list_datasets, make_loader
from edgekd.errors import EdgeKDError

SMALL_SYNTHETIC = {"classes": 4, "size": 16, "count": 80, "val_count": 20, "seed": 3}


def _rgb(seed: int, size=(32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _numpy_eval(image: Image.Image, size: tuple[int, int], mean, std) -> np.ndarray:
    """The torch-free server's preprocessing: PIL bilinear resize, /255, normalise, HWC -> CHW."""
    x = np.asarray(image.convert("RGB").resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32) / 255.0
    x = (x - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    return x.transpose(2, 0, 1)


# ------------------------------------------------------------------------------------------------ digits


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return build_data("digits")


def test_digits_split_sizes_and_metadata(digits):
    assert (len(digits.raw_train), len(digits.raw_val)) == (1437, 360)
    assert digits.name == "digits" and digits.spec == "digits" and digits.options == {}
    assert digits.num_classes == 10 and digits.class_names == [str(d) for d in range(10)]
    assert digits.input_size == (3, 32, 32)
    image, label = digits.raw_train[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (8, 8)
    assert isinstance(label, int) and 0 <= label <= 9


def test_digits_split_is_stratified_and_disjoint(digits):
    val = Counter(digits.raw_val.targets)
    train = Counter(digits.raw_train.targets)
    for c in range(10):
        share = val[c] / (val[c] + train[c])
        assert abs(share - 0.2) < 0.01, (c, share)
    source = load_digits()
    split = Counter(img.tobytes() + bytes([y]) for part in (digits.raw_train, digits.raw_val)
                    for img, y in zip(part.images, part.targets))
    whole = Counter(np.round(img * 255 / 16).astype(np.uint8).tobytes() + bytes([y])
                    for img, y in zip(source.images, source.target))
    assert split == whole  # train + val is exactly the source, each image once


def test_digits_are_deterministic_and_scaled_to_255(digits):
    again = build_data("digits")
    assert np.array_equal(again.raw_val.images, digits.raw_val.images)
    assert again.raw_val.targets == digits.raw_val.targets
    source = load_digits()
    raw = np.asarray(digits.raw_train[0][0])[:, :, 0]
    matches = [i for i in range(len(source.images)) if np.array_equal(np.round(source.images[i] * 255 / 16), raw)]
    assert matches and source.target[matches[0]] == digits.raw_train[0][1]
    assert digits.raw_train.images.dtype == np.uint8
    assert digits.raw_train.images.max() == 255 and digits.raw_train.images.min() == 0
    pixels = np.asarray(digits.raw_train[0][0])
    assert np.array_equal(pixels[:, :, 0], pixels[:, :, 2])


def test_digits_stats_are_measured_from_resized_train(digits):
    x = np.stack([np.asarray(digits.raw_train[i][0].resize((32, 32), Image.BILINEAR)) for i in range(1437)])
    x = x.astype(np.float64) / 255
    assert np.allclose(digits.mean, x.mean(axis=(0, 1, 2)), atol=1e-5)
    assert np.allclose(digits.std, x.std(axis=(0, 1, 2)), atol=1e-5)


def test_digits_train_transform_never_flips(digits):
    names = [type(t).__name__ for t in digits.train_transform.transforms]
    assert "RandomHorizontalFlip" not in names and "RandomCrop" in names
    x, y = digits.train_set()[5]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == digits.raw_train[5][1]


def test_eval_transform_equals_pil_numpy_pipeline(digits):
    for index in (0, 7, 100):
        image, label = digits.raw_val[index]
        x, y = digits.val_set()[index]
        assert y == label
        assert np.abs(x.numpy() - _numpy_eval(image, (32, 32), digits.mean, digits.std)).max() < 1e-5
    bundle = build_data("synthetic", image_size=24, options=SMALL_SYNTHETIC)
    for image in (Image.fromarray(_rgb(1, (37, 23))), Image.fromarray(_rgb(2, (10, 50)))):
        got = bundle.eval_transform(image).numpy()
        assert got.shape == (3, 24, 24)
        assert np.abs(got - _numpy_eval(image, (24, 24), bundle.mean, bundle.std)).max() < 1e-5
    x, _ = bundle.calib_set()[3]
    assert torch.equal(x, bundle.eval_transform(bundle.raw_train[3][0]))


# ------------------------------------------------------------------------------------------------ synthetic


def test_synthetic_is_deterministic_balanced_and_seeded():
    a = build_data("synthetic", options=SMALL_SYNTHETIC)
    b = build_data("synthetic", options=dict(SMALL_SYNTHETIC))
    other = build_data("synthetic", options={**SMALL_SYNTHETIC, "seed": 4})
    assert np.array_equal(a.raw_train.images, b.raw_train.images) and a.raw_train.targets == b.raw_train.targets
    assert np.array_equal(a.raw_val.images, b.raw_val.images)
    assert not np.array_equal(a.raw_train.images, other.raw_train.images)
    assert a.raw_train.images.shape == (80, 16, 16, 3) and a.raw_val.images.shape == (20, 16, 16, 3)
    assert Counter(a.raw_train.targets) == {c: 20 for c in range(4)}
    assert Counter(a.raw_val.targets) == {c: 5 for c in range(4)}
    assert a.options == SMALL_SYNTHETIC and a.spec == "synthetic" and a.num_classes == 4
    assert a.input_size == (3, 16, 16) and len(a.class_names) == 4
    image, label = a.raw_train[0]
    assert image.mode == "RGB" and image.size == (16, 16) and isinstance(label, int)


def test_synthetic_defaults_and_train_independent_of_val_count():
    full = build_data("synthetic")
    assert full.options == {"classes": 10, "size": 32, "count": 4000, "val_count": 1000, "seed": 0}
    assert (len(full.raw_train), len(full.raw_val), full.num_classes) == (4000, 1000, 10)
    fewer_val = build_data("synthetic", options={**SMALL_SYNTHETIC, "val_count": 4})
    assert np.array_equal(fewer_val.raw_train.images, build_data("synthetic", options=SMALL_SYNTHETIC).raw_train.images)
    assert full.hflip and "RandomHorizontalFlip" in [type(t).__name__ for t in full.train_transform.transforms]


def test_synthetic_image_size_resizes_and_rebuilds():
    bundle = build_data("synthetic", image_size=40, options=SMALL_SYNTHETIC)
    assert bundle.input_size == (3, 40, 40)
    assert bundle.train_set()[0][0].shape == (3, 40, 40)
    again = build_data(bundle.spec, image_size=40, options=bundle.options)
    assert np.array_equal(again.raw_train.images, bundle.raw_train.images) and again.mean == bundle.mean


# ------------------------------------------------------------------------------------------------ CIFAR


def _write_cifar10(folder, n_train=(3, 2, 2, 2, 1), n_test=4):
    folder.mkdir(parents=True)
    rows = {}
    for i, n in enumerate(n_train, 1):
        data = np.stack([_rgb(100 * i + k).transpose(2, 0, 1).reshape(-1) for k in range(n)])
        labels = [(i + k) % 10 for k in range(n)]
        rows[i] = (data, labels)
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps({"data": data, "labels": labels}))
    test = np.stack([_rgb(900 + k).transpose(2, 0, 1).reshape(-1) for k in range(n_test)])
    (folder / "test_batch").write_bytes(pickle.dumps({"data": test, "labels": [9, 8, 7, 6][:n_test]}))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return rows, names


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_reads_official_pickles(tmp_path, nested):
    folder = tmp_path / "cifar-10-batches-py" if nested else tmp_path / "c10"
    rows, names = _write_cifar10(folder)
    spec = f"cifar10:{tmp_path}" if nested else f"cifar10:{folder}"
    bundle = build_data(spec)
    assert (len(bundle.raw_train), len(bundle.raw_val)) == (10, 4)
    assert bundle.class_names == names and bundle.num_classes == 10 and bundle.input_size == (3, 32, 32)
    assert bundle.mean == (0.4914, 0.4822, 0.4465)
    image, label = bundle.raw_train[3]  # first image of data_batch_2
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), _rgb(200)) and label == rows[2][1][0]
    assert [bundle.raw_val[k][1] for k in range(4)] == [9, 8, 7, 6]
    assert bundle.val_set()[0][0].shape == (3, 32, 32)
    assert build_data(bundle.spec).raw_train.targets == bundle.raw_train.targets


def test_cifar100_reads_official_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train = np.stack([_rgb(k).transpose(2, 0, 1).reshape(-1) for k in range(5)])
    (folder / "train").write_bytes(pickle.dumps({"data": train, "fine_labels": [0, 5, 99, 42, 7],
                                                  "coarse_labels": [0, 1, 2, 3, 4]}))
    test = np.stack([_rgb(50 + k).transpose(2, 0, 1).reshape(-1) for k in range(2)])
    (folder / "test").write_bytes(pickle.dumps({"data": test, "fine_labels": [3, 4], "coarse_labels": [0, 0]}))
    fine = [f"fine{i}" for i in range(100)]
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": fine, "coarse_label_names": ["c"] * 20}))
    bundle = build_data(f"cifar100:{tmp_path}", image_size=40)
    assert bundle.num_classes == 100 and bundle.class_names == fine and bundle.input_size == (3, 40, 40)
    assert bundle.raw_train.targets == [0, 5, 99, 42, 7] and bundle.raw_val.targets == [3, 4]
    assert np.array_equal(np.asarray(bundle.raw_val[1][0]), _rgb(51))
    assert bundle.mean == (0.5071, 0.4867, 0.4408) and bundle.std == (0.2675, 0.2565, 0.2761)
    assert bundle.train_set()[0][0].shape == (3, 40, 40)


def test_cifar_missing_or_corrupt_files(tmp_path):
    with pytest.raises(EdgeKDError, match="not a directory"):
        build_data(f"cifar10:{tmp_path / 'nope'}")
    with pytest.raises(EdgeKDError, match="needs a path"):
        build_data("cifar100")
    folder = tmp_path / "c10"
    _write_cifar10(folder)
    (folder / "data_batch_4").unlink()
    with pytest.raises(EdgeKDError, match="data_batch_4") as err:
        build_data(f"cifar10:{folder}")
    assert str(folder) in str(err.value)
    (folder / "data_batch_4").write_bytes(b"not a pickle")
    with pytest.raises(EdgeKDError, match="cannot read cifar10"):
        build_data(f"cifar10:{folder}")
    marker = tmp_path / "ran"
    (folder / "data_batch_4").write_bytes(  # a batch file that calls os.system when unpickled by plain pickle.load
        b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    )
    with pytest.raises(EdgeKDError, match="os.system is not data"):
        build_data(f"cifar10:{folder}")
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ folders


def _write_imagefolder(root, classes=("cat", "dog", "eel"), per_class=2, val_classes=None):
    for split, names in (("train", classes), ("val", val_classes or classes)):
        for c, name in enumerate(names):
            (root / split / name).mkdir(parents=True)
            for k in range(per_class):
                Image.fromarray(_rgb(10 * c + k, (20, 30))).convert("L" if k else "RGB").save(
                    root / split / name / f"{k}.png")


def test_imagefolder(tmp_path):
    _write_imagefolder(tmp_path)
    bundle = build_data(f"imagefolder:{tmp_path}")
    assert bundle.class_names == ["cat", "dog", "eel"] and bundle.num_classes == 3
    assert bundle.input_size == (3, 224, 224) and bundle.mean == (0.485, 0.456, 0.406)
    assert (len(bundle.raw_train), len(bundle.raw_val)) == (6, 6)
    assert bundle.raw_train.targets == [0, 0, 1, 1, 2, 2]
    image, _ = bundle.raw_train[1]  # saved as grayscale, served as RGB
    assert image.mode == "RGB" and image.size == (30, 20)
    small = build_data(f"imagefolder:{tmp_path}", image_size=48)
    assert small.train_set()[0][0].shape == (3, 48, 48) and small.val_set()[5][0].shape == (3, 48, 48)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(EdgeKDError, match="no 'train' folder"):
        build_data(f"imagefolder:{tmp_path}")
    _write_imagefolder(tmp_path / "mismatch", val_classes=("cat", "dog", "fox"))
    with pytest.raises(EdgeKDError, match=r"only in train: \['eel'\].*only in val: \['fox'\]"):
        build_data(f"imagefolder:{tmp_path / 'mismatch'}")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir()
    with pytest.raises(EdgeKDError, match="class folder"):
        build_data(f"imagefolder:{tmp_path / 'empty'}")
    _write_imagefolder(tmp_path / "corrupt")
    bad = tmp_path / "corrupt" / "train" / "dog" / "0.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    bundle = build_data(f"imagefolder:{tmp_path / 'corrupt'}")
    with pytest.raises(EdgeKDError, match="cannot read image .*dog/0.png"):
        bundle.train_set()[2]
    with pytest.raises(EdgeKDError, match="0.png"):
        for _ in make_loader(bundle.train_set(), 2, shuffle=False, seed=0):
            pass


def _write_tiny_imagenet(root, wnids=("n02", "n01", "n03")):
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tEuropean fire salamander\nn99\tx\n")
    for c, wnid in enumerate(wnids):
        (root / "train" / wnid / "images").mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t10\t10\n")
        for k in range(2):
            Image.fromarray(_rgb(c * 10 + k, (64, 64))).save(root / "train" / wnid / "images" / f"{wnid}_{k}.JPEG")
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for k, wnid in enumerate(["n03", "n01", "n01", "n02"]):
        Image.fromarray(_rgb(500 + k, (64, 64))).save(root / "val" / "images" / f"val_{k}.JPEG")
        lines.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def test_tiny_imagenet(tmp_path):
    _write_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    bundle = build_data(f"tiny-imagenet:{tmp_path}")
    assert bundle.num_classes == 3 and bundle.input_size == (3, 64, 64)
    assert bundle.class_names == ["goldfish", "European fire salamander", "n03"]  # words.txt, else the wnid
    assert bundle.raw_train.targets == [0, 0, 1, 1, 2, 2]
    assert bundle.raw_val.targets == [2, 0, 0, 1]
    image, _ = bundle.raw_val[0]
    assert image.mode == "RGB" and image.size == (64, 64)
    assert bundle.val_set()[3][0].shape == (3, 64, 64) and bundle.std == (0.229, 0.224, 0.225)
    assert bundle.spec == f"tiny-imagenet:{tmp_path / 'tiny-imagenet-200'}"


def test_tiny_imagenet_errors(tmp_path):
    root = tmp_path / "t"
    _write_tiny_imagenet(root)
    (root / "val" / "val_annotations.txt").unlink()
    with pytest.raises(EdgeKDError, match="val_annotations.txt") as err:
        build_data(f"tiny-imagenet:{root}")
    assert str(root) in str(err.value)
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn77\t0\t0\t1\t1\n")
    with pytest.raises(EdgeKDError, match="line 1"):
        build_data(f"tiny-imagenet:{root}")
    (root / "wnids.txt").write_text("n01\nn02\n")
    with pytest.raises(EdgeKDError, match="do not match wnids.txt"):
        build_data(f"tiny-imagenet:{root}")


# ------------------------------------------------------------------------------------------------ errors, listing


@pytest.mark.parametrize("spec, options, image_size, message", [
    ("mnist", None, None, "unknown dataset 'mnist' \\(choose one of cifar10:ROOT, cifar100:ROOT, digits"),
    ("digits:/tmp", None, None, "takes no path"),
    ("digits", {"classes": 3}, None, "takes no options"),
    ("digits", None, 0, "image size must be an integer >= 1"),
    ("synthetic", None, -5, "image size"),
    ("synthetic", {"classes": 1}, None, "classes must be an integer >= 2"),
    ("synthetic", {"count": 0}, None, "count must be an integer >= 10"),
    ("synthetic", {"val_count": -1}, None, "val_count"),
    ("synthetic", {"size": 0}, None, "size must be an integer >= 8"),
    ("synthetic", {"classes": 2.5}, None, "classes"),
    ("synthetic", {"colour": 1}, None, r"unknown synthetic option\(s\) \['colour'\]"),
])
def test_bad_specs_and_options(spec, options, image_size, message):
    with pytest.raises(EdgeKDError, match=message):
        build_data(spec, image_size=image_size, options=options)


def test_list_datasets_describes_every_source():
    rows = list_datasets()
    assert [r["name"] for r in rows] == ["cifar10", "cifar100", "digits", "imagefolder", "synthetic", "tiny-imagenet"]
    for row in rows:
        assert set(row) == {"name", "spec", "description", "classes", "input_size", "layout"}
        assert all(isinstance(v, str) and v for v in row.values())
    assert "data_batch_1" in rows[0]["layout"] and "val_annotations.txt" in rows[5]["layout"]


# ------------------------------------------------------------------------------------------------ loader


def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_is_deterministic_for_a_seed():
    bundle = build_data("synthetic", options=SMALL_SYNTHETIC)
    data = bundle.train_set()

    def run(seed):
        torch.manual_seed(123)  # augmentation in the main process draws from the global RNG
        loader = make_loader(data, 16, shuffle=True, seed=seed)
        return _epoch(loader) + _epoch(loader)

    a, b, c = run(0), run(0), run(1)
    assert len(a) == 10 and a[0][0].shape == (16, 3, 16, 16)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in c]))
    assert not torch.equal(a[0][1], a[5][1])  # a new order each epoch
    ordered = make_loader(bundle.val_set(), 8, shuffle=False, seed=0, drop_last=True)
    assert torch.cat([y for _, y in ordered]).tolist() == bundle.raw_val.targets[:16]


def test_loader_with_workers_is_deterministic():
    data = build_data("synthetic", options=SMALL_SYNTHETIC).train_set()
    first = _epoch(make_loader(data, 20, shuffle=True, seed=5, workers=2))
    second = _epoch(make_loader(data, 20, shuffle=True, seed=5, workers=2))
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(first, second))
    loader = make_loader(data, 20, shuffle=True, seed=5, workers=1)
    assert loader.persistent_workers


def test_loader_distributed_sampler(tmp_path):
    import torch.distributed as dist

    data = build_data("synthetic", options=SMALL_SYNTHETIC).val_set()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        loader = make_loader(data, 4, shuffle=True, seed=7, distributed=True)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler) and loader.sampler.seed == 7
        loader.sampler.set_epoch(0)
        epoch0 = list(iter(loader.sampler))
        loader.sampler.set_epoch(1)
        assert sorted(epoch0) == list(range(20)) and epoch0 != list(iter(loader.sampler))
        assert sum(len(y) for _, y in loader) == 20
    finally:
        dist.destroy_process_group()


def test_loader_rejects_bad_sizes():
    data = build_data("synthetic", options=SMALL_SYNTHETIC).val_set()
    with pytest.raises(EdgeKDError, match="batch size"):
        make_loader(data, 0, shuffle=False, seed=0)
    with pytest.raises(EdgeKDError, match="workers"):
        make_loader(data, 2, shuffle=False, seed=0, workers=-1)


@pytest.mark.parametrize("name", [row["name"] for row in list_datasets()])
def test_every_registered_source_builds_from_nothing_on_disk_or_names_the_files_it_needs(name, tmp_path):
    """Registry-driven: a new source is checked here with no edit (the contributed one in test_registries too)."""
    from edgekd.data import DATASETS

    source = DATASETS.lookup(name)
    if ":" in source.syntax:  # it reads a folder: an empty one is a one-line error that says what it expects
        with pytest.raises(EdgeKDError) as e:
            build_data(f"{name}:{tmp_path}")
        assert "\n" not in str(e.value) and name in str(e.value) and "expects" in str(e.value)
    else:
        options = {"count": 20, "val_count": 10} if name == "synthetic" else None
        bundle = build_data(name, options=options, image_size=8)
        image, label = bundle.raw_train[0]
        assert bundle.input_size == (3, 8, 8) and 0 <= label < bundle.num_classes == len(bundle.class_names)
