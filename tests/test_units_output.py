"""The text-output conventions of imagetool.units: one shape per fact."""

from __future__ import annotations

import pytest

from imagetool.units import count, format_seconds


@pytest.mark.parametrize("n,text", [(0, "0 disks"), (1, "1 disk"), (2, "2 disks")])
def test_count_agrees_with_its_number(n, text):
    assert count(n, "disk") == text


def test_count_irregular_plural():
    assert count(3, "directory", "directories") == "3 directories"
    assert count(1, "directory", "directories") == "1 directory"


def test_seconds_have_a_space_before_the_unit():
    assert format_seconds(0.5) == "0.5 s" and format_seconds(12.34) == "12.3 s"
