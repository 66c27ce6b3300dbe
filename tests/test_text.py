"""Message wording helpers."""

from __future__ import annotations

import pytest

from pipeline.text import count_noun


@pytest.mark.parametrize("count, expected", [(0, "0 shards"), (1, "1 shard"), (2, "2 shards")])
def test_count_noun_regular(count, expected):
    assert count_noun(count, "shard") == expected


def test_count_noun_irregular():
    assert count_noun(1, "image is", "images are") == "1 image is"
    assert count_noun(3, "image is", "images are") == "3 images are"
