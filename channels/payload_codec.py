"""Payloads encrypted at rest in Temporal: with `THREADLINE_PAYLOAD_KEY` (or `THREADLINE_PAYLOAD_KEY_FILE`) every
payload a Threadline process writes (turns, replies, tool arguments, memos, activity summaries, failure messages)
is AES-256-GCM encrypted by this codec, in the agent, the CLI and every channel alike (`channels.delivery.connect`
is the one place clients are made). Keys have ids: the first key encrypts, every key decrypts, so a key rotates by
putting the new one first and keeping the old ones until their threads are done.

    THREADLINE_PAYLOAD_KEY="k2:BASE64KEY,k1:BASE64OLDKEY"      # or one BASE64KEY (its id is k1)
    THREADLINE_PAYLOAD_KEY_FILE=/etc/threadline/keys           # lines "ID BASE64KEY", the first encrypts

A key is 32 random bytes, base64: `python -c "import os, base64; print(base64.b64encode(os.urandom(32)).decode())"`.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12


class PayloadKeyError(ValueError):
    """A key setting that cannot work, or a payload encrypted with a key this process does not have."""


def _key(value: str, where: str) -> bytes:
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise PayloadKeyError(f"{where}: a key must be base64 ({e})") from e
    if len(key) != 32:
        raise PayloadKeyError(f"{where}: a key must be 32 bytes (AES-256), this one is {len(key)}")
    return key


def keys_from_env(env: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """[(key id, key)], the encrypting key first; [] when encryption is off."""
    keys: list[tuple[str, bytes]] = []
    if value := env.get("THREADLINE_PAYLOAD_KEY", "").strip():
        for n, entry in enumerate(e.strip() for e in value.split(",") if e.strip()):
            kid, sep, key = entry.rpartition(":")
            keys.append((kid if sep else f"k{n + 1}", _key(key, "THREADLINE_PAYLOAD_KEY")))
    if path := env.get("THREADLINE_PAYLOAD_KEY_FILE", "").strip():
        try:
            lines = Path(path).expanduser().read_text().splitlines()
        except OSError as e:
            raise PayloadKeyError(f"THREADLINE_PAYLOAD_KEY_FILE {path}: {e.strerror or e}") from e
        for line in (entry.strip() for entry in lines):
            if line and not line.startswith("#"):
                kid, _, key = line.partition(" ")
                keys.append((kid, _key(key, f"THREADLINE_PAYLOAD_KEY_FILE {path}")))
    if len({kid for kid, _ in keys}) != len(keys):
        raise PayloadKeyError("two payload keys have the same id: give every key an id of its own")
    return keys


class EncryptionCodec(PayloadCodec):
    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if not keys:
            raise PayloadKeyError("an encryption codec needs a key")
        self.current = keys[0][0]
        self.ciphers = {kid: AESGCM(key) for kid, key in keys}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        cipher = self.ciphers[self.current]
        encoded = []
        for payload in payloads:
            nonce = os.urandom(NONCE_BYTES)
            data = cipher.encrypt(nonce, payload.SerializeToString(), self.current.encode())
            encoded.append(Payload(metadata={"encoding": ENCODING, KEY_ID: self.current.encode()}, data=nonce + data))
        return encoded

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        from cryptography.exceptions import InvalidTag

        decoded = []
        for payload in payloads:
            if payload.metadata.get("encoding") != ENCODING:
                decoded.append(payload)
                continue
            kid = payload.metadata.get(KEY_ID, b"").decode()
            cipher = self.ciphers.get(kid)
            if cipher is None:
                raise PayloadKeyError(f"a payload is encrypted with key {kid!r}, which this process does not have: "
                                      "add it to THREADLINE_PAYLOAD_KEY (old keys keep decrypting)")
            try:
                plain = cipher.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], kid.encode())
            except InvalidTag as e:
                raise PayloadKeyError(f"a payload does not decrypt with key {kid!r}: the key is not the one it was "
                                      "encrypted with") from e
            decoded.append(Payload.FromString(plain))
        return decoded


def codec_from_env(env: Mapping[str, str] | None = None) -> EncryptionCodec | None:
    keys = keys_from_env(os.environ if env is None else env)
    return EncryptionCodec(keys) if keys else None
