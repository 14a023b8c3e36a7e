"""Output keys: one scheme for every store, injective, storable, checked at submit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.errors import InvalidParameters
from jobs.keys import (
    CONTENT_TYPES,
    EXTENSIONS,
    MAX_EXT_BYTES,
    MAX_NAME_BYTES,
    check_output_name,
    decode_name,
    encode_name,
    image_output_key,
    output_key,
)
from storage import LocalStore
from storage.base import check_key

# Ids as users write them: any text without NUL or lone surrogates (refused before keys are made).
ids = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=80
)


@given(ids, ids)
def test_two_different_ids_never_share_an_output_key(a: str, b: str) -> None:
    if a != b:
        assert output_key("j" * 32, a, "png") != output_key("j" * 32, b, "png")


formats = st.sampled_from(sorted(EXTENSIONS))


@given(ids, formats, ids, formats)
def test_two_items_never_share_a_key_whatever_their_formats(a: str, fa: str, b: str, fb: str) -> None:
    # "a.jpg" as PNG and "a" as JPEG, "a.png" as WebP and "a.png.webp" as PNG: the extension holds no ".", so
    # the last "." of a key always splits it into the item's name and its format's extension.
    if a != b:
        assert image_output_key("j" * 32, a, fa) != image_output_key("j" * 32, b, fb)


@given(ids, formats)
def test_a_key_names_its_item_and_its_format(item_id: str, image_format: str) -> None:
    key = image_output_key("j" * 32, item_id, image_format)
    name, _, ext = key.removeprefix("j" * 32 + "/").rpartition(".")
    assert (decode_name(name), ext) == (item_id, EXTENSIONS[image_format])
    check_key(key)


def test_each_format_has_its_extension_and_content_type() -> None:
    assert EXTENSIONS == {"png": "png", "jpeg": "jpg", "webp": "webp"}
    assert CONTENT_TYPES == {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
    assert max(len(ext) for ext in EXTENSIONS.values()) == MAX_EXT_BYTES
    assert image_output_key("j" * 32, "a.jpg", "png") == "j" * 32 + "/a.jpg.png"


@given(ids)
def test_a_name_decodes_to_its_id_and_is_a_single_plain_key_segment(item_id: str) -> None:
    name = encode_name(item_id)
    assert decode_name(name) == item_id
    assert name.isascii() and "/" not in name and not name.startswith(".")
    check_key(output_key("j" * 32, item_id, "png"))  # no empty, "." or ".." segment, relative


@given(st.from_regex(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,60}", fullmatch=True))
def test_safe_ids_keep_their_spelling(item_id: str) -> None:
    assert encode_name(item_id) == item_id


def test_ids_that_collided_before_now_get_different_files() -> None:
    # "a/b" used to become "a__b-3ec69c85", which is also a valid id of its own.
    assert encode_name("a/b") == "a%2Fb"
    assert encode_name("a__b-3ec69c85") == "a__b-3ec69c85"
    assert encode_name("a%2Fb") == "a%252Fb"
    assert encode_name(".hidden") == "%2Ehidden"


@settings(max_examples=50)
@given(ids)
def test_every_accepted_id_can_be_written_to_a_local_store(
    tmp_path_factory: pytest.TempPathFactory, item_id: str
) -> None:
    try:
        check_output_name(item_id)
    except InvalidParameters:
        assert len(encode_name(item_id)) > MAX_NAME_BYTES
        return
    store = LocalStore(tmp_path_factory.mktemp("store"))
    path = store.write(output_key("j" * 32, item_id, "webp"), b"x")
    assert os.path.exists(path)


def test_an_id_too_long_to_store_is_refused_naming_it(tmp_path: Path) -> None:
    check_output_name("x" * MAX_NAME_BYTES)
    with pytest.raises(InvalidParameters, match="too long for an output name") as error:
        check_output_name("x" * 230)
    assert "xxxxxxxxxx" in str(error.value)
    with pytest.raises(InvalidParameters, match="encodes to 201 bytes"):
        check_output_name("é" * 33 + "abc")  # 33 x 6 + 3
