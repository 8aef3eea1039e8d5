"""How figures word their settings."""

from __future__ import annotations

from flatcli.outputs.figures import eps_text


def test_radii_in_255ths_are_written_as_fractions():
    assert eps_text(8 / 255) == "8/255" and eps_text(2 / 255) == "2/255" and eps_text(1.0) == "1"
    assert eps_text(0.025) == "0.025" and eps_text(0.0313725) == "0.03137" and eps_text(0.0) == "0"
