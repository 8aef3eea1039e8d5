"""The data sources of issue 14 against the libraries they stand for: torchvision's data set classes, numpy's npz,
Hugging Face ``datasets`` (save_to_disk and parquet), and torchvision's ``weights.transforms()`` resize and crop."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from flatcli.errors import DataError, UsageError
from flatcli.inputs.data import batches, check_compatible, load_data, preprocessing
from flatcli.inputs.data.offline import no_network

# ---------------------------------------------------------------------------------- torchvision's data sets


def _idx(path: Path, array: np.ndarray) -> None:
    """An idx file as MNIST ships it: magic (0, 0, 0x08 = uint8, ndim), big-endian sizes, the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root: Path, folder: str = "MNIST", n: int = 5) -> None:
    rng = np.random.RandomState(1)
    for prefix, count in (("train", n + 2), ("t10k", n)):
        _idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", rng.randint(0, 256, (count, 28, 28)))
        _idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", rng.randint(0, 10, count))


@pytest.mark.parametrize("kind,cls", [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST"), ("kmnist", "KMNIST")])
def test_mnist_family_gives_torchvisions_tensors(tmp_path, kind, cls):
    import torchvision.datasets as tv
    from torchvision.transforms.functional import to_tensor

    _fake_mnist(tmp_path, cls)
    reference = getattr(tv, cls)(str(tmp_path), train=False, download=False, transform=to_tensor)
    data = load_data(f"{kind}:{tmp_path}", "test")
    assert len(data) == len(reference) == 5 and data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert data.classes == list(reference.classes)
    for i in range(len(data)):
        x, label, index = data[i]
        assert torch.equal(x, reference[i][0]) and label == reference[i][1] and index == i
    x, y, _ = next(batches(data, 5))
    assert torch.equal(x, torch.stack([reference[i][0] for i in range(5)])) and y.tolist() == reference.targets.tolist()
    train = load_data(f"{kind}:{tmp_path / cls / 'raw'}", "train")  # the data set's own folder works too
    assert len(train) == 7


def test_torchvision_sets_missing_corrupt_and_split(tmp_path):
    with pytest.raises(DataError) as info:
        load_data(f"mnist:{tmp_path}")
    assert "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte" in str(info.value)
    assert "never downloads" in str(info.value) and "none of them" in str(info.value)
    _fake_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\xff\xff\xff\xff")
    with pytest.raises(DataError, match="corrupted or incomplete"):
        load_data(f"mnist:{tmp_path}")
    with pytest.raises(UsageError, match="train or test"):
        load_data(f"mnist:{tmp_path}", "all")
    with pytest.raises(DataError, match=r"/test_32x32\.mat: it is not there"):
        load_data(f"svhn:{tmp_path}")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_svhn_through_torchvision(tmp_path, monkeypatch):
    import scipy.io
    from torchvision.datasets import SVHN

    rng = np.random.RandomState(2)
    images = rng.randint(0, 256, (32, 32, 3, 4), dtype=np.uint8)  # SVHN's layout: H, W, C, N; labels 1..10
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": images, "y": np.array([[10], [1], [5], [10]], dtype=np.uint8)})
    with pytest.raises(DataError, match="test_32x32.mat is not torchvision's svhn file"):  # md5 of the real file
        load_data(f"svhn:{tmp_path}")
    split_list = {k: list(v) for k, v in SVHN.split_list.items()}
    split_list["test"][2] = _md5(tmp_path / "test_32x32.mat")
    monkeypatch.setattr(SVHN, "split_list", split_list)
    data = load_data(f"svhn:{tmp_path}")
    assert data.y.tolist() == [0, 1, 5, 0] and data.input_shape == (3, 32, 32)
    expected = torch.from_numpy(images).permute(3, 2, 0, 1).float() / 255  # torchvision's own transpose
    assert torch.equal(next(batches(data, 4))[0], expected)


def test_stl10_resized_to_a_32_pixel_model(tmp_path, monkeypatch):
    from torchvision.datasets import STL10
    from torchvision.transforms import v2

    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.RandomState(3)
    images = rng.randint(0, 256, (3, 3, 96, 96), dtype=np.uint8)
    for split in ("train", "test"):
        (folder / f"{split}_X.bin").write_bytes(images.tobytes())
        (folder / f"{split}_y.bin").write_bytes(bytes([1, 2, 10]))  # STL-10 labels are 1..10
    (folder / "unlabeled_X.bin").write_bytes(b"")
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    monkeypatch.setattr(STL10, "train_list", [[n, _md5(folder / n)] for n, _ in STL10.train_list])
    monkeypatch.setattr(STL10, "test_list", [[n, _md5(folder / n)] for n, _ in STL10.test_list])
    reference = STL10(str(tmp_path), split="test", download=False)
    data = load_data(f"stl10:{tmp_path}", "test", preprocess=preprocessing((3, 32, 32)))
    assert data.input_shape == (3, 32, 32) and data.y.tolist() == [0, 1, 9] and data.classes[0] == "c0"
    raw = torch.from_numpy(reference.data)
    expected = v2.CenterCrop(32)(v2.Resize(32, antialias=True)(raw)).float() / 255
    assert torch.equal(next(batches(data, 3))[0], expected)
    assert torch.equal(load_data(f"stl10:{tmp_path}", "test")[1][0], raw[1].float() / 255)  # native without a model


def test_no_network_while_a_source_opens():
    with pytest.raises(DataError, match="never downloads data"):
        with no_network("mnist:/x"):
            socket.getaddrinfo("example.org", 80)
    with pytest.raises(DataError, match="never downloads data"):  # a swallowed refusal is raised at the end
        with no_network("mnist:/x"):
            try:
                socket.create_connection(("127.0.0.1", 9))
            except Exception:
                pass


# ---------------------------------------------------------------------------------- npz


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "nhw"])
def test_npz_uint8_and_layouts(tmp_path, layout):
    rng = np.random.RandomState(4)
    x = rng.randint(0, 256, (6, 3, 5, 4), dtype=np.uint8)
    y = np.arange(6) % 3
    stored = {"nchw": x, "nhwc": x.transpose(0, 2, 3, 1), "nhw": x[:, 0]}[layout]
    np.savez_compressed(tmp_path / "d.npz", x=stored, y=y)
    data = load_data(f"npz:{tmp_path / 'd.npz'}")
    want = x if layout != "nhw" else x[:, :1]
    assert data.input_shape == want.shape[1:] and data.y.tolist() == y.tolist()
    assert torch.equal(next(batches(data, 6))[0], torch.from_numpy(want).float() / 255)


def test_npz_float_and_refusals(tmp_path):
    x = np.random.RandomState(5).rand(3, 1, 4, 4)
    np.savez(tmp_path / "f.npz", x=x, y=np.array([0, 1, 2]), index=np.array([7, 8, 9]))
    data = load_data(f"npz:{tmp_path / 'f.npz'}")
    assert data.in_memory and torch.equal(data.x, torch.from_numpy(x).float()) and data.index.tolist() == [7, 8, 9]
    cases = {
        "noy.npz": ({"x": x}, "no array 'y'"),
        "range.npz": ({"x": x * 255, "y": np.zeros(3, int)}, "outside"),
        "obj.npz": ({"x": np.array([None] * 3, dtype=object), "y": np.zeros(3, int)}, "Python objects"),
        "yfloat.npz": ({"x": x, "y": np.zeros(3)}, "expected integers"),
        "short.npz": ({"x": x, "y": np.zeros(2, int)}, "one label per row"),
    }
    for name, (arrays, pattern) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(DataError, match=pattern):
            load_data(f"npz:{tmp_path / name}")
    (tmp_path / "bad.npz").write_bytes(b"PAR1 not a zip")
    with pytest.raises(DataError, match="as an .npz archive.*parquet file: use --data hf:FILE"):
        load_data(f"npz:{tmp_path / 'bad.npz'}")


def test_npz_huge_declared_array_is_refused_before_reading(tmp_path):
    import zipfile

    header = "{'descr': '|u1', 'fortran_order': False, 'shape': (100000, 3, 1000, 1000), }"
    blob = b"\x93NUMPY\x01\x00" + len(header.ljust(118) + "\n").to_bytes(2, "little") + (header.ljust(118) + "\n").encode()
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w") as archive:
        archive.writestr("x.npy", blob)
        archive.writestr("y.npy", blob)
    with pytest.raises(DataError, match="declares .* GiB"):
        load_data(f"npz:{tmp_path / 'bomb.npz'}")


def test_npz_index_is_carried_never_a_lookup_key(tmp_path):
    """Issue 24 case 4: uint8 images with an ``index`` array are read by row; the index goes to the rows."""
    x = np.random.RandomState(6).randint(0, 256, (5, 1, 3, 3), dtype=np.uint8)
    index = np.array([4, 3, 2, 1, 0])
    np.savez(tmp_path / "r.npz", x=x, y=np.arange(5), index=index)
    np.savez(tmp_path / "big.npz", x=x, y=np.arange(5), index=np.array([10, 20, 30, 40, 50]))
    for name, want in (("r.npz", index), ("big.npz", [10, 20, 30, 40, 50])):
        data = load_data(f"npz:{tmp_path / name}", limit=4)
        got, _, got_index = next(batches(data, 4))
        assert torch.equal(got, torch.from_numpy(x[:4]).float() / 255) and got_index.tolist() == list(want[:4])
        assert torch.equal(data[1][0], torch.from_numpy(x[1]).float() / 255)


def test_npz_keras_layout_is_served_by_split(tmp_path):
    """Issue 25 item 8: ``x_train``/``y_train``, ``x_test``/``y_test`` picked by ``--split``; another split is
    refused naming those there are; ``split`` says which was served (``None`` for a plain x/y archive)."""
    x = np.random.RandomState(7).randint(0, 256, (6, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "k.npz", x_train=x[:4], y_train=np.arange(4), x_test=x[4:], y_test=np.array([1, 0]))
    train, test = load_data(f"npz:{tmp_path / 'k.npz'}", split="train"), load_data(f"npz:{tmp_path / 'k.npz'}")
    assert (len(train), train.split, len(test), test.split, test.y.tolist()) == (4, "train", 2, "test", [1, 0])
    assert torch.equal(next(batches(test, 2))[0], torch.from_numpy(x[4:, None]).float() / 255)
    with pytest.raises(DataError, match="has no split 'banana' .*for test, train"):
        load_data(f"npz:{tmp_path / 'k.npz'}", split="banana")
    np.savez(tmp_path / "p.npz", x=x, y=np.arange(6))
    assert load_data(f"npz:{tmp_path / 'p.npz'}", split="train").split is None
    np.savez(tmp_path / "none.npz", a=x)
    with pytest.raises(DataError, match="no array 'x' .*x_train, y_train"):
        load_data(f"npz:{tmp_path / 'none.npz'}")


def test_npz_shapes_and_sizes_are_checked_before_inflating(tmp_path, monkeypatch):
    """Issue 24 case 10: the shape error the headers show, and a zip entry bigger than its header declares,
    are refused before ``np.load`` inflates anything."""
    import zipfile

    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("inflated before the headers were checked"))
    x = np.zeros((50, 1, 8, 8), np.uint8)
    np.savez_compressed(tmp_path / "shape.npz", x=x, y=np.zeros(3, np.int64))
    with pytest.raises(DataError, match=r"y has shape \[3\], expected \(50,\)"):
        load_data(f"npz:{tmp_path / 'shape.npz'}")
    np.savez_compressed(tmp_path / "ok.npz", x=x, y=np.zeros(50, np.int64))
    with zipfile.ZipFile(tmp_path / "ok.npz") as good, zipfile.ZipFile(tmp_path / "long.npz", "w") as bad:
        bad.writestr("x.npy", good.read("x.npy") + bytes(10_000), zipfile.ZIP_DEFLATED)
        bad.writestr("y.npy", good.read("y.npy"))
    with pytest.raises(DataError, match=r"declares shape \[50, 1, 8, 8\] but its zip entry holds 13328 bytes"):
        load_data(f"npz:{tmp_path / 'long.npz'}")


def test_folder_hidden_or_empty_class_directories_never_shift_labels(tmp_path):
    """Issue 24 case 6: ``.ipynb_checkpoints`` (ImageFolder's class 0) and an empty named class are refused."""
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "d" / cls).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "d" / cls / "a.png")
    assert load_data(f"folder:{tmp_path / 'd'}").y.tolist() == [0, 1]
    (tmp_path / "d" / ".ipynb_checkpoints").mkdir()
    with pytest.raises(DataError, match="hidden directory .ipynb_checkpoints"):
        load_data(f"folder:{tmp_path / 'd'}")
    (tmp_path / "d" / ".ipynb_checkpoints").rmdir()
    (tmp_path / "d" / "ant").mkdir()
    with pytest.raises(DataError, match="class directory ant holds no image files"):
        load_data(f"folder:{tmp_path / 'd'}")


def test_folder_holding_only_another_split_is_refused(tmp_path):
    """Issue 25 item 8: a lone ``test/`` is not served for ``--split train``; a lone ``val/`` still is for test."""
    from PIL import Image

    (tmp_path / "test" / "cat").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "test" / "cat" / "a.png")
    assert load_data(f"folder:{tmp_path}").name.endswith(":test")
    with pytest.raises(DataError, match="holds only the split directory test/, not train"):
        load_data(f"folder:{tmp_path}", split="train")
    (tmp_path / "test").rename(tmp_path / "val")
    assert load_data(f"folder:{tmp_path}").name.endswith(":val")


def test_tensors_error_names_the_format_it_looks_like(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((1, 1, 2, 2)), y=np.zeros(1, int))
    (tmp_path / "d.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    (tmp_path / "d.bin").write_bytes(bytes(64))
    with pytest.raises(DataError, match="looks like a zip archive .*use --data npz:FILE"):
        load_data(f"tensors:{tmp_path / 'd.npz'}")
    with pytest.raises(DataError, match="MATLAB .mat file: use --data svhn:ROOT"):
        load_data(f"tensors:{tmp_path / 'd.mat'}")
    with pytest.raises(DataError, match="accepted --data forms: digits, .*npz:FILE, hf:PATH"):
        load_data(f"tensors:{tmp_path / 'd.bin'}")


# ---------------------------------------------------------------------------------- Hugging Face datasets


def _hf_dataset(n: int = 6, sizes=((20, 30), (30, 20))):
    import io

    import datasets
    from PIL import Image

    rng = np.random.RandomState(6)
    pngs = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        buffer = io.BytesIO()
        Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(buffer, format="PNG")
        pngs.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features({"img": datasets.Image(), "fine": datasets.ClassLabel(names=["a", "b", "c"]),
                                  "id": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"img": pngs, "fine": [i % 3 for i in range(n)], "id": list(range(n))},
                                      features=features)


def _reference(ds, crop: int) -> torch.Tensor:
    """What the columns give through datasets' own decoding and torchvision's v2 Resize + CenterCrop."""
    from torchvision.transforms import v2

    transform = v2.Compose([v2.Resize(crop, antialias=True), v2.CenterCrop(crop), v2.PILToTensor()])
    return torch.stack([transform(row["img"].convert("RGB")) for row in ds]).float() / 255


def test_hf_save_to_disk_dict_and_parquet(tmp_path):
    import datasets

    ds = _hf_dataset()
    datasets.DatasetDict({"train": ds, "test": ds.select(range(4)).flatten_indices()}).save_to_disk(tmp_path / "dict")
    pre = preprocessing((3, 16, 16))
    data = load_data(f"hf:{tmp_path / 'dict'}", "test", preprocess=pre)
    assert data.name.endswith(":test") and len(data) == 4 and data.classes == ["a", "b", "c"] and data.num_classes == 3
    assert data.y.tolist() == [0, 1, 2, 0] and data.input_shape == (3, 16, 16)
    assert torch.equal(next(batches(data, 4))[0], _reference(ds.select(range(4)), 16))
    with pytest.raises(DataError, match="no split 'validation'; it has train, test"):
        load_data(f"hf:{tmp_path / 'dict'}", "validation")

    ds.save_to_disk(tmp_path / "one")
    assert len(load_data(f"hf:{tmp_path / 'one'}", preprocess=pre)) == 6
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    ds.to_parquet(hub / "test-00000-of-00001.parquet")
    ds.select(range(2)).to_parquet(hub / "train-00000-of-00001.parquet")
    data = load_data(f"hf:{tmp_path / 'hub'}", "test", preprocess=pre)
    assert len(data) == 6 and data.classes == ["a", "b", "c"]
    assert torch.equal(next(batches(data, 6))[0], _reference(ds, 16))
    assert len(load_data(f"hf:{hub / 'train-00000-of-00001.parquet'}", preprocess=pre)) == 2
    with pytest.raises(DataError, match="none of 'validation'"):
        load_data(f"hf:{tmp_path / 'hub'}", "validation")


def test_hf_columns_chosen_by_type_and_by_option(tmp_path):
    import datasets

    ds = _hf_dataset(sizes=((8, 8),))
    ds.save_to_disk(tmp_path / "a")
    data = load_data(f"hf:{tmp_path / 'a'}", label_column="id")
    assert data.y.tolist() == list(range(6)) and data.input_shape == (3, 8, 8)
    with pytest.raises(UsageError, match="--image-column picture: .* has no such column; it has img, fine, id"):
        load_data(f"hf:{tmp_path / 'a'}", image_column="picture")
    with pytest.raises(DataError, match="holds int64, not encoded images"):
        load_data(f"hf:{tmp_path / 'a'}", image_column="id")
    two = ds.add_column("coarse", [0] * 6).cast_column("coarse", datasets.ClassLabel(names=["x"]))
    two.save_to_disk(tmp_path / "b")
    with pytest.raises(DataError, match=r"several label columns \(fine, coarse\).*--label-column"):
        load_data(f"hf:{tmp_path / 'b'}")
    unlabelled = ds.map(lambda row: {"fine": -1})
    unlabelled.save_to_disk(tmp_path / "c")
    with pytest.raises(DataError, match="-1 means unlabelled"):
        load_data(f"hf:{tmp_path / 'c'}")
    with pytest.raises(UsageError, match="names a column of an hf: data set"):
        load_data("digits", image_column="img")


def test_hf_entries_naming_paths_or_urls_are_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = _hf_dataset(n=2).data.table  # the real schema and its huggingface metadata, then entries without bytes
    struct = pa.array([{"bytes": None, "path": "https://example.org/x.png"}, {"bytes": None, "path": "/etc/hostname"}],
                      type=table.schema.field("img").type)
    pq.write_table(table.set_column(0, table.schema.field("img"), struct), tmp_path / "paths.parquet")
    with pytest.raises(DataError, match="row 0 .*holds no image bytes .*never the paths or URLs"):
        load_data(f"hf:{tmp_path / 'paths.parquet'}")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "state.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read .* save_to_disk folder"):
        load_data(f"hf:{tmp_path / 'junk'}")
    (tmp_path / "x.parquet").write_bytes(b"\x89PNG not parquet")
    with pytest.raises(DataError, match="as a parquet file .*PNG image: use --data folder:DIR"):
        load_data(f"hf:{tmp_path / 'x.parquet'}")


def test_hf_undecodable_image_message_has_no_python_repr(tmp_path):
    """Issue 24 case 14: ``cannot identify image file <_io.BytesIO object at 0x...>``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = _hf_dataset(n=2).data.table
    junk = pa.array([{"bytes": b"not an image", "path": None}] * 2, type=table.schema.field("img").type)
    pq.write_table(table.set_column(0, table.schema.field("img"), junk), tmp_path / "junk.parquet")
    with pytest.raises(DataError, match="cannot identify image file") as caught:
        load_data(f"hf:{tmp_path / 'junk.parquet'}")
    assert " object at 0x" not in str(caught.value)


def test_hf_parquet_that_expands_is_refused_while_decoding(tmp_path, monkeypatch):
    """Issue 24 case 10: a few KB of one repeated value decoding to gigabytes (the footer claims little)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import flatcli.inputs.data.hf as hf

    monkeypatch.setattr(hf, "MIN_DECODED_BYTES", 2**20)
    images = pa.DictionaryArray.from_arrays(pa.array([0] * 2000, pa.int32()), pa.array([bytes(10_000)]))
    pq.write_table(pa.table({"image": images, "label": pa.array([0] * 2000)}), tmp_path / "b.parquet")
    with pytest.raises(DataError, match="decodes to more than 1 MiB"):
        load_data(f"hf:{tmp_path / 'b.parquet'}")


# ---------------------------------------------------------------------------------- folder: resize and crop


def _jpegs(root: Path, sizes) -> None:
    from PIL import Image

    rng = np.random.RandomState(7)
    for i, (h, w) in enumerate(sizes):
        path = root / ("cat" if i % 2 else "dog") / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=90)


def test_folder_of_mixed_jpegs_matches_weights_transforms(tmp_path):
    from torchvision.datasets import ImageFolder
    from torchvision.models import ResNet18_Weights

    _jpegs(tmp_path / "val", [(300, 240), (240, 320), (256, 256), (333, 500), (224, 230)])
    transforms = ResNet18_Weights.IMAGENET1K_V1.transforms()  # resize 256, crop 224, bilinear, then Normalize
    reference = ImageFolder(str(tmp_path / "val"), transform=transforms)
    data = load_data(f"folder:{tmp_path}", "test", preprocess=preprocessing((3, 224, 224), resize=256))
    assert data.name.endswith(":val") and data.classes == ["cat", "dog"]  # the only split directory is read
    assert data.y.tolist() == [t for _, t in reference.samples] and data.input_shape == (3, 224, 224)
    mean, std = torch.tensor(transforms.mean).view(3, 1, 1), torch.tensor(transforms.std).view(3, 1, 1)
    x, _, _ = next(batches(data, 5))
    for i in range(len(data)):  # the same pixels: normalised as torchvision does, bit for bit
        assert torch.equal((x[i] - mean) / std, reference[i][0])


def test_folder_default_preprocessing_and_without_a_size(tmp_path):
    from torchvision.transforms import v2

    _jpegs(tmp_path, [(40, 30), (20, 20)])
    data = load_data(f"folder:{tmp_path}", preprocess=preprocessing((3, 20, 20)))
    from PIL import Image

    with Image.open(tmp_path / "dog" / "0.jpg") as image:
        expected = v2.Compose([v2.Resize(20, antialias=True), v2.CenterCrop(20), v2.PILToTensor()])(image.convert("RGB"))
    assert torch.equal(data[1][0], expected.float() / 255)  # shorter side to 20, centre crop: like Resize(20)
    assert data[0][0].shape == (3, 20, 20)
    with pytest.raises(DataError, match="give --crop N"):  # no model size and no crop: one size needed
        list(batches(load_data(f"folder:{tmp_path}"), 2))
    wide = preprocessing((3, 10, 30))
    assert wide.size_for(40, 30) == [40, 30] and wide.size_for(20, 20) == [30, 30]
    with pytest.raises(UsageError, match="smaller than the crop"):
        preprocessing((3, 224, 224), resize=200)
    with pytest.raises(UsageError, match="interpolation= must be one of"):
        preprocessing((3, 8, 8), interpolation="lanczos")


def test_folder_with_several_splits_and_none_asked(tmp_path):
    _jpegs(tmp_path / "train", [(8, 8)])
    _jpegs(tmp_path / "val", [(8, 8)])
    with pytest.raises(DataError, match="split directories train, val but no test; choose one with --split train"):
        load_data(f"folder:{tmp_path}", "test")
    assert load_data(f"folder:{tmp_path}", "val").name.endswith(":val")
    check_compatible(load_data(f"folder:{tmp_path}", "train"), (3, 8, 8), 2)


def test_limit_on_a_class_sorted_folder_covers_every_class(tmp_path):
    """Issue 25 item 5: ``--limit`` on class directories draws class by class (``--first``: today's first N)."""
    from PIL import Image

    for cls, n in (("a", 5), ("b", 5), ("c", 2)):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (4, 4), (i * 40, 0, 0)).save(tmp_path / "d" / cls / f"{i}.png")
    balanced = load_data(f"folder:{tmp_path / 'd'}", limit=7)
    assert balanced.y.tolist() == [0, 0, 0, 1, 1, 2, 2]  # round-robin: a0 b0 c0 a1 b1 c1 a2
    assert set(balanced.y.tolist()) == {0, 1, 2} and balanced.metadata["limit_order"] == "balanced"
    assert balanced.index.tolist() == sorted(balanced.index.tolist())  # kept in the folder's order
    whole = load_data(f"folder:{tmp_path / 'd'}")
    for i, sample in zip(balanced.index.tolist(), range(len(balanced))):
        assert torch.equal(balanced[sample][0], whole[i][0])  # each image is the one its index names
    first = load_data(f"folder:{tmp_path / 'd'}", limit=7, first=True)
    assert first.y.tolist() == [0] * 5 + [1] * 2 and "limit_order" not in first.metadata
    mixed = load_data("digits", limit=30)  # not sorted by class: the first N, as before
    assert mixed.index.tolist() == load_data("digits").index[:30].tolist() and "limit_order" not in mixed.metadata
