"""Dead letters fit the DLQ: oversized ones are truncated with their size, offset and hash."""

from __future__ import annotations

import hashlib

from connectors.dead_letters import KEY_KEPT_BYTES, letter_size, make_letter


def test_a_small_letter_is_kept_whole() -> None:
    letter = make_letter(b"k", b"v" * 100, "too_large", "d", "in", 3, 42, max_letter_bytes=4096)
    assert letter.key == b"k" and letter.value == b"v" * 100
    assert not any(k.startswith("featsieve.truncated") for k, _ in letter.headers)


def test_an_oversized_letter_is_cut_to_the_bound_with_size_offset_and_hash() -> None:
    value = bytes(range(256)) * 4000  # ~1 MB
    letter = make_letter(b"key", value, "too_large", "message over max_message_bytes", "in", 1, 7,
                         max_letter_bytes=100_000)
    h = dict(letter.headers)
    assert letter.size <= 100_000 and letter_size(letter.key, letter.value, letter.headers) == letter.size
    assert value.startswith(letter.value) and len(letter.value) > 90_000
    assert h["featsieve.truncated"] == b"value"
    assert h["featsieve.original.size"] == str(len(value)).encode()
    assert h["featsieve.original.sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert h["featsieve.source.offset"] == b"7" and h["featsieve.source.partition"] == b"1"
    assert h["featsieve.reason"] == b"too_large" and h["featsieve.original.key"] == b"key"


def test_an_oversized_key_is_cut_too() -> None:
    key = b"k" * 200_000
    letter = make_letter(key, b"v" * 10, "too_large", "d", "in", 0, 0, max_letter_bytes=8192)
    h = dict(letter.headers)
    assert letter.size <= 8192 and letter.key == key[:KEY_KEPT_BYTES]
    assert h["featsieve.truncated"] == b"key,value"
    assert h["featsieve.original.key.size"] == b"200000"
    assert h["featsieve.original.key.sha256"] == hashlib.sha256(key).hexdigest().encode()
    assert h["featsieve.original.key"] == key[:KEY_KEPT_BYTES]
