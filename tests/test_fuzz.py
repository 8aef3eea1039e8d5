"""Fuzzing the loaders that read untrusted files: safetensors checkpoints, specs, ``tensors:`` data.

Every generated input must end in a clean load or a :class:`FlatrobError` (which the CLI turns into
one ``Error:`` line and exit 2); any other exception fails the test, and so does a case that runs
longer than :data:`CASE_SECONDS` (a SIGALRM interrupts it: no hangs). Generation is derandomized so CI
sees the same cases every run; the counts below add up to more than 500 cases, run in well under the
2 minutes CI allows.
"""

from __future__ import annotations

import contextlib
import json
import signal
import struct
from datetime import timedelta

import pytest
import torch
import torchvision.datasets.folder  # noqa: F401 - imported once here, not inside the first timed folder case
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from flatcli.inputs import checkpoint as ckpt
from flatcli.inputs import data as datamod
from flatcli.inputs import spec as specmod
from flatcli.errors import FlatrobError

CASE_SECONDS = 10

#: Number of generated cases per target (sum >= 500, the acceptance criterion).
EXAMPLES = {
    "checkpoint_bytes": 300,
    "checkpoint_structured": 600,
    "checkpoint_mutated": 400,
    "spec_text": 500,
    "spec_structured": 400,
    "data_structured": 500,
    "data_mutated": 300,
    "model_spec": 150,
    "image_mutated": 200,
    "pickle_mutated": 200,
    "embedded_code": 150,
    "folder_links": 150,
    "special_files": 60,
}
RAN = {key: 0 for key in EXAMPLES}


def fuzz_settings(key: str):
    return settings(
        max_examples=EXAMPLES[key],
        deadline=timedelta(seconds=5),
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


@contextlib.contextmanager
def time_limit(seconds: int = CASE_SECONDS):
    def expire(signum, frame):
        raise TimeoutError(f"a fuzz case ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def clean_or_flatrob_error(key: str, fn, *args, **kwargs) -> str:
    """``ok`` or ``error`` (a FlatrobError with a one-line message and exit code 2); anything else raises."""
    RAN[key] += 1
    with time_limit():
        try:
            fn(*args, **kwargs)
        except FlatrobError as exc:
            assert exc.exit_code == 2
            assert str(exc).strip(), "an error must say what is wrong"
            return "error"
    return "ok"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# ------------------------------------------------------------------------------------------------
# Strategies
# ------------------------------------------------------------------------------------------------

DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64", "BOOL",
          "F8_E4M3", "F8_E5M2", "C64", "Q7", "", "f32"]
KEYS = ["x", "y", "index", "fc.weight", "fc.bias", "conv1.weight", "__metadata__", "", "a" * 300]

dims = st.one_of(st.integers(0, 6), st.integers(-3, 2**63 - 1), st.sampled_from([2**31, 2**32, 2**40, 2**62]))
offsets = st.one_of(
    st.lists(st.integers(0, 512), min_size=2, max_size=2).map(sorted),
    st.lists(st.integers(-(2**63), 2**64), min_size=0, max_size=3),
)
entry = st.fixed_dictionaries(
    {"dtype": st.sampled_from(DTYPES), "shape": st.lists(dims, max_size=5), "data_offsets": offsets}
)
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=20))
json_value = st.recursive(json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                          max_leaves=12)
metadata = st.one_of(st.dictionaries(st.sampled_from(["flatrob.spec", "flatrob.attack", "x"]), st.text(max_size=60), max_size=3),
                     json_value)
header = st.dictionaries(st.sampled_from(KEYS), st.one_of(entry, json_value), max_size=4)


def _with_metadata(h: dict, meta) -> dict:
    if "__metadata__" in h or meta is None:
        return h
    return {**h, "__metadata__": meta}


def _container(h: dict, body: bytes, length_delta: int = 0) -> bytes:
    raw = json.dumps(h, allow_nan=True).encode()
    return struct.pack("<Q", max(0, len(raw) + length_delta)) + raw + body


def _small_valid() -> bytes:
    return save({"x": torch.rand(2, 1, 2, 2), "y": torch.tensor([0, 1]), "fc.weight": torch.ones(2, 3)},
                metadata={"flatrob.spec": "arch: mlp\nlayer: fc\n"})


VALID = _small_valid()


@st.composite
def mutated(draw, base: bytes = VALID):
    blob = bytearray(base)
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "length"]))
        if kind == "flip" and blob:
            i = draw(st.integers(0, len(blob) - 1))
            blob[i] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del blob[draw(st.integers(0, len(blob))):]
        elif kind == "insert":
            i = draw(st.integers(0, len(blob)))
            blob[i:i] = draw(st.binary(max_size=16))
        elif kind == "length" and len(blob) >= 8:
            blob[:8] = struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
    return bytes(blob)


def _write(work, name: str, blob: bytes):
    path = work / name
    path.write_bytes(blob)
    return path


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------


@fuzz_settings("checkpoint_bytes")
@given(blob=st.binary(max_size=256))
def test_checkpoint_arbitrary_bytes(work, blob):
    path = _write(work, "c.safetensors", blob)
    assert clean_or_flatrob_error("checkpoint_bytes", ckpt.read, str(path)) == "error"  # never a model


@fuzz_settings("checkpoint_structured")
@given(h=header, meta=st.one_of(st.none(), metadata), body=st.binary(max_size=512), delta=st.integers(-4, 4))
def test_checkpoint_structured_header(work, h, meta, body, delta):
    path = _write(work, "s.safetensors", _container(_with_metadata(h, meta), body, delta))
    clean_or_flatrob_error("checkpoint_structured", ckpt.read, str(path))


@fuzz_settings("checkpoint_mutated")
@given(blob=mutated())
def test_checkpoint_mutated_valid_file(work, blob):
    path = _write(work, "m.safetensors", blob)
    clean_or_flatrob_error("checkpoint_mutated", ckpt.read, str(path))


# ------------------------------------------------------------------------------------------------
# Specs
# ------------------------------------------------------------------------------------------------

yaml_chars = st.sampled_from(list("abcdefgxyz_:-[]{},&*!|>%@`'\"#\n\t 0123456789.") + ["!!python/object:os.system",
                                                                                     "*a", "&a ", "arch: ", "layer: ",
                                                                                     "input_shape: ", "\x00", "\ud7ff"])


@fuzz_settings("spec_text")
@given(text=st.one_of(st.text(max_size=200), st.lists(yaml_chars, max_size=60).map("".join)))
def test_spec_arbitrary_text(text):
    clean_or_flatrob_error("spec_text", specmod.parse_spec, text, "fuzz")


@fuzz_settings("spec_structured")
@given(doc=st.dictionaries(st.sampled_from(specmod.FIELDS + ["layr", "head"]), json_value, max_size=6),
       as_json=st.booleans())
def test_spec_structured_documents(doc, as_json):
    text = json.dumps(doc) if as_json else yaml.safe_dump(doc)
    clean_or_flatrob_error("spec_structured", specmod.parse_spec, text, "fuzz")


# ------------------------------------------------------------------------------------------------
# tensors: data files
# ------------------------------------------------------------------------------------------------

small_dims = st.lists(st.integers(0, 4), max_size=5)
TORCH_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.uint8,
                torch.int8, torch.bool]


@st.composite
def tensors(draw):
    out = {}
    for key in draw(st.lists(st.sampled_from(["x", "y", "index", "z"]), unique=True, max_size=4)):
        shape = draw(small_dims)
        dtype = draw(st.sampled_from(TORCH_DTYPES))
        fill = draw(st.sampled_from([0.0, 0.5, 1.0, -1.0, 2.0, 255.0, float("nan"), float("inf"), 1e30]))
        t = torch.full(shape, fill) if dtype.is_floating_point else torch.full(shape, fill).nan_to_num(0, 0, 0)
        out[key] = t.to(dtype)
    return out


@fuzz_settings("data_structured")
@given(ts=tensors(), meta=st.one_of(st.none(), st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=2)))
def test_data_tensor_files(work, ts, meta):
    path = _write(work, "d.safetensors", save(ts, metadata=meta))
    clean_or_flatrob_error("data_structured", datamod.load_data, f"tensors:{path}", "test", None)


@fuzz_settings("data_mutated")
@given(blob=mutated())
def test_data_mutated_file(work, blob):
    path = _write(work, "dm.safetensors", blob)
    clean_or_flatrob_error("data_mutated", datamod.load_data, f"tensors:{path}", "test", None)


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()


@fuzz_settings("image_mutated")
@given(blob=st.one_of(mutated(PNG), st.binary(max_size=128)), suffix=st.sampled_from([".png", ".jpg", ".gif", ".bmp"]))
def test_folder_with_a_mutated_image(work, blob, suffix):
    import shutil

    root = work / "folder"
    shutil.rmtree(root, ignore_errors=True)
    (root / "0").mkdir(parents=True)
    (root / "0" / "a.png").write_bytes(PNG)
    (root / "0" / f"b{suffix}").write_bytes(blob)

    def read_all():
        ds = datamod.load_data(f"folder:{root}", "test", None)
        for _ in datamod.batches(ds, 2):
            pass

    clean_or_flatrob_error("image_mutated", read_all)


def _pickle() -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"state_dict": {"fc.weight": torch.ones(2, 3), "fc.bias": torch.zeros(2)}, "epoch": 1}, buf)
    return buf.getvalue()


PICKLE = _pickle()


@fuzz_settings("pickle_mutated")
@given(blob=st.one_of(mutated(PICKLE), st.binary(max_size=128)))
def test_convert_a_mutated_pickle(work, blob):
    from flatcli.inputs.convert import convert_pickle

    src = _write(work, "p.pt", blob)
    clean_or_flatrob_error("pickle_mutated", convert_pickle, src, work / "p.safetensors", force=True)


# ------------------------------------------------------------------------------------------------
# Spec embedded in a real checkpoint, all the way to a built model
# ------------------------------------------------------------------------------------------------

ARCHS = [None, "small-cnn", "mlp", "vgg11-bn", "collections:OrderedDict", "flatcli.errors:FlatrobError",
         "torch.nn:Linear", "torch.nn:Identity", "nope", "torchvision:nope", ":", "a:"]


@st.composite
def model_specs(draw):
    doc = {}
    if draw(st.booleans()):
        doc["arch"] = draw(st.sampled_from(ARCHS))
    if draw(st.booleans()):
        doc["arch_kwargs"] = draw(st.dictionaries(st.sampled_from(["width", "hidden", "in_features", "bias", "dropout"]),
                                                  st.one_of(st.integers(-2, 64), st.lists(st.integers(-1, 16), max_size=2),
                                                            st.booleans(), st.text(max_size=3)), max_size=2))
    if draw(st.booleans()):
        doc["layer"] = draw(st.sampled_from(["fc", "conv1", "bn1", "nope", "", "fc.weight"]))
    if draw(st.booleans()):
        doc["num_classes"] = draw(st.integers(-1, 12))
    if draw(st.booleans()):
        doc["input_shape"] = draw(st.lists(st.integers(0, 9), max_size=4))
    for key in ("mean", "std"):
        if draw(st.booleans()):
            doc[key] = draw(st.lists(st.floats(-2, 2), max_size=4))
    return doc


@fuzz_settings("model_spec")
@given(doc=model_specs())
def test_model_with_fuzzed_embedded_spec(work, doc):
    from flatcli.models.loading import load_model

    state = ckpt.read("example:digits-cnn").state_dict
    path = _write(work, "model.safetensors", save(state, metadata={"flatrob.spec": yaml.safe_dump(doc)}))
    clean_or_flatrob_error("model_spec", load_model, str(path))


# ------------------------------------------------------------------------------------------------
# Embedded specs naming code: refused before anything is imported, whatever else the spec says
# ------------------------------------------------------------------------------------------------

identifier = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
module_path = st.one_of(st.sampled_from(["this", "os", "subprocess", "builtins", "torch.nn", "flatcli.errors",
                                         "venv.__main__", "collections"]),
                        st.lists(identifier, min_size=1, max_size=3).map(".".join))
code_arch = st.tuples(module_path, st.one_of(identifier, st.sampled_from(["X", "system", "Linear", ""]))).map(":".join)


@fuzz_settings("embedded_code")
@given(arch=code_arch, doc=model_specs())
def test_embedded_code_is_refused_before_importing(work, arch, doc):
    import sys

    from flatcli.models.loading import load_model

    state = ckpt.read("example:digits-cnn").state_dict
    path = _write(work, "code.safetensors", save(state, metadata={"flatrob.spec": yaml.safe_dump({**doc, "arch": arch})}))
    before = set(sys.modules)
    RAN["embedded_code"] += 1
    with time_limit(), pytest.raises(FlatrobError) as err:
        load_model(str(path))
    assert "names code" in str(err.value) or "spec embedded" in str(err.value), str(err.value)
    assert set(sys.modules) == before  # nothing was imported


# ------------------------------------------------------------------------------------------------
# Folder trees with directory links (cycles, ancestors, siblings) and special files
# ------------------------------------------------------------------------------------------------

@st.composite
def trees(draw):
    """Up to 8 directories below the root, image / text / pipe files in them, links between them."""
    dirs = ["."]
    for _ in range(draw(st.integers(1, 8))):
        parent = draw(st.sampled_from(dirs))
        dirs.append(f"{parent}/{draw(st.sampled_from(['0', '1', '2', 'cat', 'sub', '10', '99999999']))}")
    files = draw(st.lists(st.tuples(st.sampled_from(dirs), st.sampled_from(["a.png", "b.PNG", "c.txt", "d.png"]),
                                    st.sampled_from(["png", "text", "fifo"])), max_size=8))
    links = draw(st.lists(st.tuples(st.sampled_from(dirs), st.sampled_from(["l", "m"]),
                                    st.sampled_from(dirs + ["..", "/proc", "missing"])), max_size=4))
    return dirs, files, links


@fuzz_settings("folder_links")
@given(tree=trees())
def test_folder_trees_with_links(work, tree):
    import os
    import shutil

    dirs, files, links = tree
    root = work / "tree"
    shutil.rmtree(root, ignore_errors=True)
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for d, name, kind in files:
        target = root / d / name
        if target.exists() or target.is_symlink():
            continue
        if kind == "png":
            target.write_bytes(PNG)
        elif kind == "text":
            target.write_text("not an image")
        else:
            os.mkfifo(target)  # never opened: only regular files are images
    for d, name, dest in links:
        link = root / d / name
        if not (link.exists() or link.is_symlink()):
            link.symlink_to(dest if dest in ("..", "/proc", "missing") else os.path.relpath(root / dest, root / d))

    def read_all():
        ds = datamod.load_data(f"folder:{root}", "test", None, num_classes=10)
        for _ in datamod.batches(ds, 4):
            pass

    clean_or_flatrob_error("folder_links", read_all)


@fuzz_settings("special_files")
@given(blob=st.binary(max_size=200), endless=st.booleans(),
       reader=st.sampled_from(["spec", "detector", "from_json", "data"]))
def test_text_inputs_that_are_pipes(work, blob, endless, reader):
    """A named pipe (stat: size 0) fed a few bytes or an endless stream: every reader stops at its limit."""
    import os
    import threading

    from flatcli.inputs.detector_file import load_detector
    from flatcli.runs.bound_numbers import read_sharpness_json

    pipe = work / f"pipe-{reader}"
    if pipe.exists():
        pipe.unlink()
    os.mkfifo(pipe)

    def feed():
        try:
            with open(pipe, "wb") as handle:
                handle.write(blob)
                while endless:
                    handle.write(b"\0" * 65536)
        except OSError:
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    read = {"spec": specmod.read_spec_file, "detector": load_detector, "from_json": read_sharpness_json,
            "data": lambda p: datamod.load_data(f"tensors:{p}", "test", None)}[reader]
    clean_or_flatrob_error("special_files", read, str(pipe))
    if writer.is_alive():  # the reader may have refused without opening the pipe: drain it, let the writer go
        fd = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)
        for _ in range(5):
            writer.join(0.05)
            if not writer.is_alive():
                break
            try:
                os.read(fd, 1 << 16)
            except BlockingIOError:
                pass
        os.close(fd)  # an endless writer now fails with EPIPE and stops
    writer.join(CASE_SECONDS)
    assert not writer.is_alive()


def test_the_unmutated_inputs_load(work):
    """The fuzzers start from inputs that load, so 'ok' is reachable and refusals are not blanket."""
    path = _write(work, "valid.safetensors", VALID)
    assert clean_or_flatrob_error("checkpoint_mutated", ckpt.read, str(path)) == "ok"
    assert clean_or_flatrob_error("data_mutated", datamod.load_data, f"tensors:{path}", "test", None) == "ok"
    assert clean_or_flatrob_error("spec_text", specmod.parse_spec, "arch: mlp\nlayer: fc\n", "fuzz") == "ok"


def test_enough_cases_ran():
    """The acceptance floor: at least 500 fuzz cases (when the whole file runs)."""
    assert sum(EXAMPLES.values()) >= 500
    if all(RAN.values()):
        assert sum(RAN.values()) >= 500, RAN
