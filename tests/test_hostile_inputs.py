"""Hostile and broken files across every command: exit 2, one ``Error:`` line, no traceback, no file.

A catalogue of inputs a user (or an attacker handing over a file) can give flatrob: corrupt or
oversized safetensors headers, weights of the wrong dtype or an absurd shape, metadata that is not
YAML/JSON, YAML tags and alias bombs, ``module.path:Class`` naming something that is not an
``nn.Module`` subclass, pickles, data with NaN or values outside [0, 1], labels out of range, images
of the wrong shape. Each is run through a command that reads it; nothing is executed, nothing
crashes, and the output directory stays empty (not even a temporary file). The cases already in
``test_bad_inputs_sharpness.py``, ``test_attack_cli.py``, ``test_bound_cli.py`` and
``test_detect_cli.py`` are not repeated here.
"""

from __future__ import annotations

import json
import struct
import zlib

import pytest
import torch
from safetensors.torch import save_file

from flatcli.inputs.checkpoint import read
from tests.conftest import EXAMPLE, assert_one_error, invoke

SPEC = None


def _raw_safetensors(path, header: bytes | dict, body: bytes = b"", length: int | None = None) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + raw + body)


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    ck = read(EXAMPLE)
    state = ck.state_dict
    spec = ck.metadata["flatrob.spec"]
    meta = {"flatrob.spec": spec}
    f: dict[str, object] = {}

    def st(name, tensors, metadata=meta):
        f[name] = d / f"{name}.safetensors"
        save_file(tensors, str(f[name]), metadata=metadata)

    def raw(name, header, body=b"", length=None):
        f[name] = d / f"{name}.safetensors"
        _raw_safetensors(f[name], header, body, length)

    def text(name, content, suffix=".yaml"):
        f[name] = d / f"{name}{suffix}"
        f[name].write_text(content)

    # --- checkpoints: the container ---
    f["empty"] = d / "empty.safetensors"
    f["empty"].write_bytes(b"")
    raw("huge_header", b"{}", length=2**63 - 1)
    raw("header_past_eof", b'{"a": 1}', length=4096)
    raw("header_not_json", b"\xff\xfe not json at all")
    raw("header_list", b"[1, 2, 3]")
    raw("header_nested", b"[" * 100_000 + b"]" * 100_000)
    raw("offsets_out_of_range", {"fc.weight": {"dtype": "F32", "shape": [10, 32], "data_offsets": [0, 1280]}}, b"\0" * 16)
    raw("unknown_dtype", {"fc.weight": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8)
    raw("absurd_shape", {"fc.weight": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, b"\0" * 8)
    raw("negative_shape", {"fc.weight": {"dtype": "F32", "shape": [-1, 2], "data_offsets": [0, 8]}}, b"\0" * 8)
    raw("f16_wrong_size", {"fc.weight": {"dtype": "F16", "shape": [10, 32], "data_offsets": [0, 64]}}, b"\0" * 64)
    raw("bf16_wrong_size", {"fc.weight": {"dtype": "BF16", "shape": [10, 32], "data_offsets": [0, 100]}}, b"\0" * 100)
    raw("metadata_not_strings", {"__metadata__": {"flatrob.spec": {"arch": "mlp"}}})
    # --- checkpoints: the weights ---
    st("int_weights", {k: (v * 100).to(torch.int32) if v.is_floating_point() else v for k, v in state.items()})
    st("f16_inf", {**{k: v.half() if v.is_floating_point() else v for k, v in state.items()},
                   "fc.weight": torch.full((10, 32), 1e6).half()})
    st("bf16_nan", {**state, "fc.bias": torch.full((10,), float("nan"), dtype=torch.bfloat16)})
    st("bool_weights", {**state, "conv1.weight": torch.ones(16, 1, 3, 3, dtype=torch.bool)})
    st("absurd_head", {**state, "fc.weight": torch.zeros(10, 32, 1, 1, 1)})
    st("scalar_head", {**state, "fc.weight": torch.tensor(1.0)})
    st("no_tensors_meta_only", {}, metadata=meta)
    # --- checkpoints: the embedded spec ---
    st("meta_json_list", state, {"flatrob.spec": "[1, 2, 3]"})
    st("meta_yaml_tag", state, {"flatrob.spec": "arch: !!python/object/apply:os.system ['echo pwned']\n"})
    st("meta_alias_bomb", state, {"flatrob.spec": BOMB})
    st("meta_huge_spec", state, {"flatrob.spec": "# " + "x" * 70_000 + "\narch: small-cnn\n"})
    st("meta_not_module", state, {"flatrob.spec": "arch: collections:OrderedDict\nlayer: fc\nnum_classes: 10\n"})
    # --- pickles ---
    f["pickle_pth"] = d / "model.pth"
    torch.save(state, f["pickle_pth"])
    f["pickle_disguised"] = d / "disguised.safetensors"
    torch.save(state, f["pickle_disguised"])
    # --- spec files ---
    text("spec_python_tag", "arch: !!python/name:os.system\n")
    text("spec_custom_tag", "arch: !Net small-cnn\n")
    text("spec_alias_bomb", BOMB)
    text("spec_function", "arch: builtins:print\nlayer: fc\n")
    text("spec_non_module_class", "arch: flatcli.errors:FlatrobError\nlayer: fc\n")
    text("spec_missing_module", "arch: no_such_module_xyz:Net\nlayer: fc\n")
    text("spec_torchvision_weights", "arch: 'torchvision:resnet18'\narch_kwargs: {weights: IMAGENET1K_V1}\n")
    text("spec_torchvision_backbone", "arch: 'torchvision:fasterrcnn_resnet50_fpn'\narch_kwargs: {weights_backbone: DEFAULT}\n")
    text("spec_torchvision_pretrained", "arch: 'torchvision:resnet18'\narch_kwargs: {pretrained: true}\n")
    text("spec_binary", "")
    f["spec_binary"].write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    text("spec_huge_input", "input_shape: [1, 100000000, 100000000]\n")
    text("spec_bad_num_classes", "num_classes: 0\n")
    # --- data files ---
    x = torch.rand(6, 1, 8, 8)
    y = torch.arange(6, dtype=torch.int64)
    st("data_nan", {"x": x.clone().index_fill_(0, torch.tensor([2]), float("nan")), "y": y}, None)
    st("data_inf", {"x": x.clone().index_fill_(0, torch.tensor([1]), float("inf")), "y": y}, None)
    st("data_above_one", {"x": x * 255, "y": y}, None)
    st("data_negative", {"x": x - 0.5, "y": y}, None)
    st("data_int_images", {"x": (x * 255).to(torch.uint8), "y": y}, None)
    st("data_float_labels", {"x": x, "y": y.float()}, None)
    st("data_negative_labels", {"x": x, "y": -y - 1}, None)
    st("data_labels_too_big", {"x": x, "y": y + 100}, None)
    st("data_label_count", {"x": x, "y": y[:4]}, None)
    st("data_wrong_channels", {"x": torch.rand(6, 3, 8, 8), "y": y}, None)
    st("data_wrong_size", {"x": torch.rand(6, 1, 28, 28), "y": y}, None)
    st("data_flat_images", {"x": torch.rand(6, 64), "y": y}, None)
    st("data_no_y", {"x": x}, None)
    st("data_float_index", {"x": x, "y": y, "index": torch.arange(6.0)}, None)
    raw("data_huge_header", b"{}", length=2**40)
    raw("data_absurd_shape", {"x": {"dtype": "F32", "shape": [2**31, 1, 2**16, 2**16], "data_offsets": [0, 4]},
                              "y": {"dtype": "I64", "shape": [1], "data_offsets": [4, 12]}}, b"\0" * 12)
    f["data_pickle"] = d / "data.safetensors.pt"
    torch.save({"x": x, "y": y}, f["data_pickle"])
    # --- JSON inputs of bound / detect ---
    text("json_nested", "[" * 100_000 + "]" * 100_000, ".json")
    text("json_not_utf8", "", ".json")
    f["json_not_utf8"].write_bytes(b"\xff\xfe\x00{")
    text("detector_nested", '{"a":' * 50_000 + "1" + "}" * 50_000, ".json")
    text("detector_wrong_types", json.dumps({"schema_version": 1, "kind": "flatrob-detector", "method": "stump",
                                              "score": "relative_sharpness", "threshold": "high",
                                              "direction": "sideways", "meta": []}), ".json")
    # --- image folders ---
    def png(width: int, height: int) -> bytes:
        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")

    for name, size in (("folder_bomb", 30000), ("folder_big", 10000)):  # 900M pixels (error), 100M (warning)
        (d / name / "0").mkdir(parents=True)
        (d / name / "0" / "x.png").write_bytes(png(size, size))
        f[name] = d / name
    (d / "folder_truncated" / "3").mkdir(parents=True)
    (d / "folder_truncated" / "3" / "x.png").write_bytes(png(8, 8)[:40])
    f["folder_truncated"] = d / "folder_truncated"
    (d / "folder_text" / "1").mkdir(parents=True)
    (d / "folder_text" / "1" / "x.png").write_text("not an image")
    f["folder_text"] = d / "folder_text"
    # --- embedded specs that name code, data or sizes (refused before anything is imported or allocated) ---
    st("meta_code_this", state, {"flatrob.spec": "arch: this:X\nlayer: fc\nnum_classes: 10\n"})
    st("meta_code_venv", state, {"flatrob.spec": "arch: venv.__main__:X\nlayer: fc\nnum_classes: 10\n"})
    st("meta_code_os", state, {"flatrob.spec": "arch: os:system\n"})
    st("meta_detection", state, {"flatrob.spec": "arch: torchvision:fasterrcnn_mobilenet_v3_large_fpn\nlayer: fc\n"
                                                 "num_classes: 10\n"})
    st("meta_wide", state, {"flatrob.spec": spec.replace("width: 16", "width: 6000")})
    st("meta_data_proc", state, {"flatrob.spec": spec.replace("data: digits", "data: folder:/proc")})
    st("meta_duplicate", state, {"flatrob.spec": "arch: small-cnn\nlayer: fc\narch: mlp\n"})
    text("spec_duplicate", "layer: fc\nlayer: conv1\n")
    text("spec_duplicate_kwargs", "arch: small-cnn\narch_kwargs: {width: 16, width: 8}\n")
    # --- a module:Class the data does not fit (the first forward pass fails) ---
    from torchvision.models.vision_transformer import VisionTransformer

    vit = {"image_size": 28, "patch_size": 7, "num_layers": 1, "num_heads": 2, "hidden_dim": 8, "mlp_dim": 16}
    f["vit28"] = d / "vit28.safetensors"
    save_file({k: v.contiguous() for k, v in VisionTransformer(**vit, num_classes=10).state_dict().items()},
              str(f["vit28"]))
    text("spec_vit28", "arch: 'torchvision.models.vision_transformer:VisionTransformer'\n"
                       f"arch_kwargs: {json.dumps(vit)}\nlayer: heads.head\n")
    # --- folders with links ---
    for name in ("folder_up_link", "folder_two_links", "folder_class_1e8"):
        (d / name / "0").mkdir(parents=True)
        (d / name / "0" / "x.png").write_bytes(png(8, 8))
        f[name] = d / name
    (d / "folder_up_link" / "0" / "up").symlink_to("..")
    (d / "folder_two_links" / "1").symlink_to("0")
    (d / "folder_class_1e8" / "100000000").mkdir()
    # --- sharpness JSON, detector and adversarial files that were tampered with ---
    sharp = {"command": "sharpness", "config": {}, "summary": {"relative_sharpness": {"mean": 0.5}, "weight_norm": 1.0,
                                                              "feature_norm_min": 2.0, "classes": 10, "features": 32,
                                                              "grad_norm": {"mean": 0.1}}}
    for name, key, value in (("json_features_true", "features", True), ("json_features_fraction", "features", 10.5),
                             ("json_classes_401_digits", "classes", 10**400)):
        text(name, json.dumps({**sharp, "summary": {**sharp["summary"], key: value}}), ".json")
    detector = {"schema_version": 1, "kind": "flatrob-detector", "method": "stump", "score": "relative_sharpness",
                "threshold": 1.0, "direction": "above", "meta": {"checkpoint_sha256": ck.sha256, "layer": "fc"}}
    text("detector_401_digits", json.dumps({**detector, "threshold": 10**400}), ".json")
    text("detector_meta_weight_norm", json.dumps({**detector, "meta": {**detector["meta"], "weight_norm": 5}}), ".json")
    text("detector_meta_layer_list", json.dumps({**detector, "meta": {**detector["meta"], "layer": ["fc"]}}), ".json")
    text("detector_coef_1e308", json.dumps({**detector, "method": "components", "score": "components",
                                            "coef": [1e308] * 3, "intercept": 0.0, "mean": [-700.0] * 3,
                                            "scale": [1e-300] * 3}), ".json")
    st("adv_nested_meta", {"x": x, "y": y}, {"flatrob.attack": '{"a":' * 900 + "1" + "}" * 900})
    f["out"] = d / "out"
    return {k: str(v) for k, v in f.items()}


LIMIT = ["--limit", "6", "--batch-size", "6"]
ATTACK = ["--steps", "1"]

# case: (command and arguments, fragments the one error line must contain)
CASES: dict[str, tuple[list[str], list[str]]] = {
    # checkpoint container
    "empty checkpoint": (["sharpness", "{empty}"], ["not a safetensors"]),
    "header length 2^63": (["attack", "{huge_header}", *ATTACK], ["header claims"]),
    "header past end of file": (["sweep-scale", "{header_past_eof}"], ["header claims"]),
    "header not json": (["detect", "{header_not_json}"], ["not json"]),
    "header a json list": (["bound", "{header_list}", "--epsilon", "0.1"], ["json object"]),
    "header nested 100k deep": (["inspect", "{header_nested}"], ["not json"]),
    "tensor offsets past the data": (["attack", "{offsets_out_of_range}", *ATTACK], ["safetensors"]),
    "unknown tensor dtype": (["inspect", "{unknown_dtype}"], ["safetensors"]),
    "absurd tensor shape in header": (["sharpness", "{absurd_shape}"], ["safetensors"]),
    "negative tensor shape": (["bound", "{negative_shape}", "--epsilon", "0.1"], ["safetensors"]),
    "float16 size does not match shape": (["detect", "{f16_wrong_size}"], ["safetensors"]),
    "bfloat16 size does not match shape": (["sweep-scale", "{bf16_wrong_size}"], ["safetensors"]),
    "metadata values not strings": (["attack", "{metadata_not_strings}", *ATTACK], ["metadata"]),
    # weights
    "integer weights": (["attack", "{int_weights}", *ATTACK], ["dtype int32", "floating"]),
    "bool weights": (["sharpness", "{bool_weights}"], ["dtype", "conv1.weight"]),
    "float16 weights overflow to inf": (["detect", "{f16_inf}"], ["nan or inf"]),
    "bfloat16 NaN bias": (["bound", "{bf16_nan}", "--epsilon", "0.1"], ["nan or inf"]),
    "head weight of absurd rank": (["sweep-scale", "{absurd_head}"], ["fc.weight"]),
    "head weight a scalar": (["sharpness", "{scalar_head}"], ["fc.weight"]),
    "metadata only, no tensors": (["attack", "{no_tensors_meta_only}", *ATTACK], ["no tensors"]),
    # embedded spec
    "embedded spec a json list": (["attack", "{meta_json_list}", *ATTACK], ["mapping"]),
    "embedded spec with python tag": (["sweep-scale", "{meta_yaml_tag}"], ["yaml"]),
    "embedded alias bomb": (["detect", "{meta_alias_bomb}"], ["alias"]),
    "embedded spec over 64 KiB": (["bound", "{meta_huge_spec}", "--epsilon", "0.1"], ["64 kib"]),
    "embedded class refused without trust": (["inspect", "{meta_not_module}"], ["names code", "--trust-embedded-code"]),
    # pickles
    "pth pickle to attack": (["attack", "{pickle_pth}", *ATTACK], ["pickle"]),
    "pth pickle to bound": (["bound", "{pickle_pth}", "--epsilon", "0.1"], ["pickle"]),
    "pickle renamed .safetensors": (["detect", "{pickle_disguised}"], ["not a safetensors"]),
    # spec files
    "spec python/name tag": (["attack", EXAMPLE, "--spec", "{spec_python_tag}", *ATTACK], ["yaml"]),
    "spec custom tag": (["sweep-scale", EXAMPLE, "--spec", "{spec_custom_tag}"], ["yaml"]),
    "spec alias bomb": (["bound", EXAMPLE, "--spec", "{spec_alias_bomb}", "--epsilon", "0.1"], ["alias"]),
    "spec arch a function": (["detect", EXAMPLE, "--spec", "{spec_function}"], ["nn.module"]),
    "spec arch an exception class": (["attack", EXAMPLE, "--spec", "{spec_non_module_class}", *ATTACK], ["nn.module"]),
    "spec arch module missing": (["inspect", EXAMPLE, "--spec", "{spec_missing_module}"], ["no_such_module_xyz"]),
    "arch option a function": (["sweep-scale", EXAMPLE, "--arch", "os:system"], ["nn.module"]),
    "torchvision weights would download": (["sharpness", EXAMPLE, "--spec", "{spec_torchvision_weights}"], ["weights", "download"]),
    "torchvision backbone weights": (["inspect", EXAMPLE, "--spec", "{spec_torchvision_backbone}"], ["weights_backbone"]),
    "torchvision pretrained=True": (["attack", EXAMPLE, "--spec", "{spec_torchvision_pretrained}", *ATTACK], ["pretrained"]),
    "spec not text": (["sweep-scale", EXAMPLE, "--spec", "{spec_binary}"], ["spec"]),
    "spec absurd input shape": (["detect", EXAMPLE, "--spec", "{spec_huge_input}"], ["input_shape"]),
    "spec zero classes": (["bound", EXAMPLE, "--spec", "{spec_bad_num_classes}", "--epsilon", "0.1"], ["num_classes"]),
    # data
    "data with NaN": (["attack", EXAMPLE, "--data", "tensors:{data_nan}", *ATTACK], ["nan"]),
    "data with Inf": (["sweep-scale", EXAMPLE, "--data", "tensors:{data_inf}"], ["infinite"]),
    "data in 0..255": (["detect", EXAMPLE, "--data", "tensors:{data_above_one}"], ["outside [0, 1]"]),
    "data normalised (negative)": (["bound", EXAMPLE, "--data", "tensors:{data_negative}", "--epsilon", "0.1"], ["outside [0, 1]"]),
    "data uint8 images": (["attack", EXAMPLE, "--data", "tensors:{data_int_images}", *ATTACK], ["dtype"]),
    "data float labels": (["sweep-scale", EXAMPLE, "--data", "tensors:{data_float_labels}"], ["y has dtype"]),
    "data negative labels": (["detect", EXAMPLE, "--data", "tensors:{data_negative_labels}"], ["negative"]),
    "data labels past the classes": (["attack", EXAMPLE, "--data", "tensors:{data_labels_too_big}", *ATTACK], ["label"]),
    "data fewer labels than images": (["bound", EXAMPLE, "--data", "tensors:{data_label_count}", "--epsilon", "0.1"], ["one label per row"]),
    "data 3 channels for a 1-channel model": (["sweep-scale", EXAMPLE, "--data", "tensors:{data_wrong_channels}"], ["shape"]),
    "data 28x28 for an 8x8 model": (["detect", EXAMPLE, "--data", "tensors:{data_wrong_size}"], ["shape"]),
    "data not NCHW": (["attack", EXAMPLE, "--data", "tensors:{data_flat_images}", *ATTACK], ["4 dimensions"]),
    "data without labels": (["bound", EXAMPLE, "--data", "tensors:{data_no_y}", "--epsilon", "0.1"], ["no tensor 'y'"]),
    "data float index": (["sweep-scale", EXAMPLE, "--data", "tensors:{data_float_index}"], ["index"]),
    "data header length 2^40": (["detect", EXAMPLE, "--data", "tensors:{data_huge_header}"], ["safetensors"]),
    "data absurd shape in header": (["attack", EXAMPLE, "--data", "tensors:{data_absurd_shape}", *ATTACK], ["safetensors"]),
    "data a pickle": (["sharpness", EXAMPLE, "--data", "tensors:{data_pickle}"], ["safetensors"]),
    "data a device file": (["attack", EXAMPLE, "--data", "tensors:/dev/zero", *ATTACK], ["not a file"]),
    "detect adversarials with NaN": (["detect", EXAMPLE, "--adversarial", "{data_nan}"], ["nan"]),
    "image decompression bomb": (["attack", EXAMPLE, "--data", "folder:{folder_bomb}", *ATTACK], ["decompression bomb"]),
    "image of 100M pixels": (["sweep-scale", EXAMPLE, "--data", "folder:{folder_big}"], ["decompression bomb"]),
    "truncated png": (["detect", EXAMPLE, "--data", "folder:{folder_truncated}"], ["cannot read image"]),
    "text file named .png": (["bound", EXAMPLE, "--data", "folder:{folder_text}", "--epsilon", "0.1"], ["cannot read image"]),
    # JSON inputs
    "bound json nested 100k deep": (["bound", "--from-json", "{json_nested}", "-L", "3", "--epsilon", "0.1"], ["json"]),
    "bound json not utf-8": (["bound", "--from-json", "{json_not_utf8}", "-L", "3", "--epsilon", "0.1"], ["json"]),
    "detector nested 50k deep": (["detect", EXAMPLE, "--detector", "{detector_nested}"], ["detector_nested.json"]),
    "detector fields of the wrong type": (["detect", EXAMPLE, "--detector", "{detector_wrong_types}"], ["detector_wrong_types.json"]),
    # embedded specs naming code (the trust rule), data and sizes
    "embedded arch this:X": (["inspect", "{meta_code_this}"], ["names code", "--trust-embedded-code"]),
    "embedded arch venv.__main__:X": (["sweep-scale", "{meta_code_venv}"], ["names code", "--trust-embedded-code"]),
    "embedded arch os:system": (["attack", "{meta_code_os}", *ATTACK], ["names code"]),
    "embedded torchvision detection builder": (["inspect", "{meta_detection}"], ["not a classification model"]),
    "embedded width 6000": (["bound", "{meta_wide}", "--epsilon", "0.1"], ["does not fit the model"]),
    "embedded data folder:/proc": (["sharpness", "{meta_data_proc}"], ["lies on proc"]),
    "embedded spec with a key twice": (["detect", "{meta_duplicate}"], ["'arch' appears twice", "lines 1 and 3"]),
    "spec with a key twice": (["sharpness", EXAMPLE, "--spec", "{spec_duplicate}"], ["'layer' appears twice"]),
    "spec with a kwarg twice": (["attack", EXAMPLE, "--spec", "{spec_duplicate_kwargs}", *ATTACK], ["'width'"]),
    "module:Class the data does not fit": (["sharpness", "{vit28}", "--spec", "{spec_vit28}"],
                                           ["does not fit the model", "(1, 8, 8)", "expected 28 but got 8"]),
    # folder trees with links
    "folder with a .. link": (["attack", EXAMPLE, "--data", "folder:{folder_up_link}", *ATTACK], ["link cycle"]),
    "folder with two links to one class": (["sweep-scale", EXAMPLE, "--data", "folder:{folder_two_links}"],
                                           ["link cycle"]),
    "folder class named 100000000": (["detect", EXAMPLE, "--data", "folder:{folder_class_1e8}"],
                                     ["class directory named 100000000"]),
    # tampered JSON and metadata
    "bound json features true": (["bound", "--from-json", "{json_features_true}", "-L", "3", "--epsilon", "0.1"],
                                 ["summary.features must be a number"]),
    "bound json features 10.5": (["bound", "--from-json", "{json_features_fraction}", "-L", "3", "--epsilon", "0.1"],
                                 ["summary.features must be a whole number"]),
    "bound json 401-digit classes": (["bound", "--from-json", "{json_classes_401_digits}", "-L", "3", "--epsilon",
                                      "0.1"], ["json"]),
    "detector 401-digit threshold": (["detect", EXAMPLE, "--detector", "{detector_401_digits}"],
                                     ["detector_401_digits.json", "401 digits"]),
    "detector meta weight_norm a number": (["detect", EXAMPLE, "--detector", "{detector_meta_weight_norm}"],
                                           ["detector_meta_weight_norm.json", "meta.weight_norm"]),
    "detector meta layer a list": (["detect", EXAMPLE, "--detector", "{detector_meta_layer_list}"],
                                   ["detector_meta_layer_list.json", "meta.layer"]),
    "detector scores overflow": (["detect", EXAMPLE, "--detector", "{detector_coef_1e308}"],
                                 ["detector_coef_1e308.json", "non-finite scores"]),
    "adversarial metadata nested 900 deep": (["detect", EXAMPLE, "--adversarial", "{adv_nested_meta}"],
                                             ["adv_nested_meta.safetensors", "flatrob.attack"]),
    # options that reach allocation or overflow
    "--eps 1e308": (["attack", EXAMPLE, "--eps", "1e308"], ["--eps"]),
    "--alpha 1e308": (["detect", EXAMPLE, "--alpha", "1e308"], ["--alpha"]),
    "--seed 2^70": (["sharpness", EXAMPLE, "--seed", str(2**70)], ["--seed"]),
    "--steps 10^9": (["sweep-scale", EXAMPLE, "--steps", str(10**9)], ["--steps"]),
    "--hutchinson 10^12": (["sharpness", EXAMPLE, "--hutchinson", str(10**12)], ["--hutchinson"]),
    "bound with a denormal L": (["bound", "--kappa", "0.8", "--lipschitz", "1e-320", "--r", "3.1", "--classes", "10",
                                 "--features", "512", "--epsilon", "0.1"], ["overflows float64", "L = 1e-320"]),
}

# Options that keep each run small; added only where the command takes them.
SMALL = {"attack": LIMIT, "sweep-scale": [*LIMIT, "--scales", "1,2"], "detect": LIMIT, "sharpness": LIMIT,
         "bound": ["--limit", "6"], "inspect": []}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_one_error_and_no_file(files, tmp_path, case):
    args, fragments = CASES[case]
    args = [a.format(**files) for a in args]
    command = args[0]
    out = tmp_path / "result.json"
    numbers_only = command == "bound" and args[1].startswith("-")  # --from-json or numbers: no checkpoint
    extra = [] if numbers_only else SMALL[command]
    res = invoke(*args, *extra, "--format", "json", "--output", str(out))
    assert_one_error(res, *fragments)
    assert list(tmp_path.iterdir()) == []  # no output file, not even a temporary one


def test_catalogue_covers_every_command_and_is_large():
    commands = {args[0] for args, _ in CASES.values()}
    assert commands == {"sharpness", "inspect", "attack", "sweep-scale", "bound", "detect"}
    assert len(CASES) >= 30


def test_nothing_executed_by_a_yaml_tag(files, tmp_path, monkeypatch):
    """``!!python/object/apply:os.system`` in a spec must never reach os.system."""
    import os

    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a) or 0)
    res = invoke("inspect", files["meta_yaml_tag"])
    assert_one_error(res, "yaml")
    res = invoke("inspect", EXAMPLE, "--spec", files["spec_python_tag"])
    assert_one_error(res, "yaml")
    assert calls == []


def test_float16_and_bfloat16_checkpoints_that_fit_still_load(tmp_path):
    """Half-precision weights are legitimate: they load (upcast), only broken ones are refused."""
    ck = read(EXAMPLE)
    for dtype in (torch.float16, torch.bfloat16):
        path = tmp_path / f"{dtype}.safetensors"
        save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in ck.state_dict.items()}, str(path),
                  metadata={"flatrob.spec": ck.metadata["flatrob.spec"]})
        res = invoke("inspect", str(path), "--format", "json")
        assert res.exit_code == 0, res.stderr


# ---------------------------------------------------------------- issue 24: exit codes, names, messages


def test_an_existing_directory_as_an_output_is_exit_2(tmp_path):
    """Case 12: ``-o DIR`` and ``convert --force`` onto a directory were exit 1 (IsADirectoryError)."""
    import torch

    (tmp_path / "out").mkdir()
    assert_one_error(invoke("sharpness", EXAMPLE, "--limit", "4", "-f", "json", "-o", tmp_path / "out"),
                     "is a directory")
    torch.save({"w": torch.zeros(2)}, tmp_path / "w.pt")
    (tmp_path / "x.safetensors").mkdir()
    assert_one_error(invoke("convert", tmp_path / "w.pt", tmp_path / "x.safetensors", "--force"), "is a directory")


def test_an_unknown_timm_tag_in_an_embedded_spec_is_exit_2(tmp_path):
    """Case 12: an embedded ``timm:resnet18.no_such_tag``."""
    pytest.importorskip("timm")
    ck = read(EXAMPLE)
    spec = "arch: timm:resnet18.no_such_tag\nlayer: fc\nnum_classes: 10\ninput_shape: [1, 8, 8]\n"
    save_file(ck.state_dict, str(tmp_path / "t.safetensors"), metadata={"flatrob.spec": spec})
    assert_one_error(invoke("inspect", tmp_path / "t.safetensors"), "no_such_tag")


def test_a_legal_250_byte_output_name_is_written(tmp_path):
    """Case 13: the temporary file beside a 250-byte name was what was too long."""
    out = tmp_path / ("a" * 245 + ".json")
    res = invoke("sharpness", EXAMPLE, "--limit", "4", "-f", "json", "-o", out)
    assert res.exit_code == 0, res.stderr
    assert json.loads(out.read_text())["command"] == "sharpness" and len(list(tmp_path.iterdir())) == 1


def test_convert_says_one_line_without_torchs_warnings(tmp_path):
    """Case 14: a pickle-protocol warning came before ``Error:``."""
    import subprocess
    import sys

    (tmp_path / "junk.pt").write_bytes(b"\x80\x05junk")  # pickle protocol 5: torch warns about it
    res = subprocess.run([sys.executable, "-m", "flatcli", "convert", "junk.pt", "j.safetensors"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("Error: ") and len(res.stderr.splitlines()) == 1, res.stderr


def test_convert_refuses_a_view_larger_than_its_data(tmp_path):
    """Case 9: a 1.5 KB file declaring a 20000 x 20000 tensor wrote 1.6 GB; now refused before materialising."""
    import torch

    torch.save({"w": torch.zeros(1).expand(20000, 20000), "b": torch.ones(3)}, tmp_path / "v.pt")
    assert_one_error(invoke("convert", tmp_path / "v.pt", tmp_path / "v.safetensors"), "views 4 bytes")
    assert not (tmp_path / "v.safetensors").exists()
    torch.save({"w": torch.arange(6.0).reshape(2, 3)[:, :2], "b": torch.ones(3)}, tmp_path / "ok.pt")  # views fit
    assert invoke("convert", tmp_path / "ok.pt", tmp_path / "ok.safetensors").exit_code == 0


@pytest.mark.parametrize("option", [["--resize", "8"], ["--crop", "8"], ["--interpolation", "nearest"]])
def test_resizing_options_are_refused_for_exact_pixel_sources(tmp_path, option):
    """Case 14: ``--resize/--crop`` were silently ignored for ``tensors:``."""
    save_file({"x": torch.zeros(2, 1, 8, 8), "y": torch.zeros(2, dtype=torch.int64)}, str(tmp_path / "d.safetensors"))
    res = invoke("sharpness", EXAMPLE, "--data", f"tensors:{tmp_path / 'd.safetensors'}", *option)
    assert_one_error(res, f"{option[0]} resizes images read from files; tensors: holds exact pixels")


def test_timms_channel_note_is_not_printed(caplog):
    """Case 14: timm's "Pretrained mean/std does not match 1 channels" reached stderr despite ``-q``."""
    timm = pytest.importorskip("timm")
    from flatcli.models.timm_models import data_defaults

    net = timm.create_model("test_resnet", in_chans=1, num_classes=10)
    with caplog.at_level("WARNING"):
        assert data_defaults(net)["mean"] == (0.5,)
    assert not [r for r in caplog.records if r.name.startswith("timm")]
