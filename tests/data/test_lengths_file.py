"""A lengths file (``--lengths FILE`` of plan/simulate) that is not text is one line naming the fix."""

from __future__ import annotations

import pytest

from hdp.data.synthetic import read_lengths


def test_a_binary_lengths_file_is_one_line(tmp_path):
    path = tmp_path / "lengths.bin"
    path.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(ValueError, match="is not text: give one integer length per line"):
        read_lengths(str(path))


def test_a_text_lengths_file_reads_with_comments(tmp_path):
    path = tmp_path / "lengths.txt"
    path.write_text("# lengths\n12\n\n7  # a short one\n")
    assert read_lengths(str(path)) == [12, 7]
