"""Reading specs and other text inputs: duplicate keys refused, every read bounded whatever stat says."""

from __future__ import annotations

import os
import threading

import pytest

from flatcli.errors import DetectorError, SpecError
from flatcli.inputs.spec import MAX_SPEC_BYTES, parse_spec, read_spec_file
from flatcli.inputs.text import read_text


@pytest.mark.parametrize(
    "text, message",
    [
        ("arch: small-cnn\nlayer: fc\narch: mlp\n", "key 'arch' appears twice in one mapping (lines 1 and 3)"),
        ("arch_kwargs:\n  width: 16\n  width: 8\n", "key 'width' appears twice in one mapping (lines 2 and 3)"),
        ('{"layer": "fc", "layer": "conv1"}', "key 'layer' appears twice in one mapping (line 1, columns 2 and 17)"),
    ],
)
def test_a_key_given_twice_is_refused_naming_it_and_both_places(text, message):
    with pytest.raises(SpecError) as err:
        parse_spec(text, "spec s.yaml")
    assert message in str(err.value) and str(err.value).startswith("spec s.yaml: ")


def test_the_same_key_in_different_mappings_is_fine():
    spec = parse_spec("arch: small-cnn\narch_kwargs: {width: 16}\nlayer: fc\n")
    assert spec.arch == "small-cnn" and spec.arch_kwargs == {"width": 16}


def _endless_pipe(path) -> threading.Thread:
    """A named pipe at ``path`` fed zeros for ever (until its reader goes away): stat says size 0."""
    os.mkfifo(path)

    def feed():
        try:
            with open(path, "wb") as handle:
                while True:
                    handle.write(b"\0" * 65536)
        except (BrokenPipeError, OSError):
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    return writer


def test_an_endless_spec_is_refused_after_reading_its_limit(tmp_path):
    writer = _endless_pipe(tmp_path / "spec.yaml")
    assert os.stat(tmp_path / "spec.yaml").st_size == 0
    with pytest.raises(SpecError, match="larger than the 64 KiB a spec may have"):
        read_spec_file(tmp_path / "spec.yaml")
    writer.join(10)
    assert not writer.is_alive()  # the reader stopped after MAX_SPEC_BYTES + 1 bytes and closed the pipe
    assert MAX_SPEC_BYTES == 64 * 1024


def test_read_text_names_the_input_in_every_failure(tmp_path):
    (tmp_path / "big.json").write_bytes(b"x" * 11)
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe")
    cases = {"big.json": "larger than the 10 bytes", "bin.json": "not UTF-8", "nope.json": "does not exist; hint",
             ".": "is a directory"}
    for name, message in cases.items():
        with pytest.raises(DetectorError, match=message):
            read_text(tmp_path / name, limit=10, what="detector file", error=DetectorError, missing_hint="; hint")
    assert read_text(tmp_path / "big.json", limit=11, what="x", error=DetectorError) == "x" * 11


def test_preprocessing_keys_are_read_and_round_trip():
    spec = parse_spec("resize: 256\ncrop: 224\ninterpolation: bicubic")
    assert (spec.resize, spec.crop, spec.interpolation) == (256, 224, "bicubic")
    assert parse_spec(str(spec.to_dict()).replace("'", '"')) == spec


@pytest.mark.parametrize("text, words", [("resize: 0", "resize must be a side"), ("crop: 70000", "crop must be"),
                                         ("crop: x", "crop must be an integer"),
                                         ("interpolation: lanczos", "interpolation must be one of")])
def test_bad_preprocessing_keys_are_refused(text, words):
    with pytest.raises(SpecError, match=words):
        parse_spec(text)
