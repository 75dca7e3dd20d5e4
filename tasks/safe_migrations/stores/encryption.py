"""Backups encrypted to the team's age key (``backup.encrypt_to``), with pyrage.

A backup of an environment that names a recipient never reaches the disk in
clear: the dump streams through the encryptor into the file. Only whoever holds
the identity (``SAFE_MIGRATIONS_AGE_IDENTITY``: a key, or a file of keys) can
restore it, so the file may travel as a CI artifact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from safe_migrations.core.errors import BackupError, ConfigError

IDENTITY_VARIABLE = "SAFE_MIGRATIONS_AGE_IDENTITY"
SUFFIX = ".age"


def parse_recipient(value: str, where: str) -> Any:
    """An age (``age1...``) or SSH public key, or a ConfigError naming the setting."""
    import pyrage

    text = value.strip()
    try:
        if text.startswith(("ssh-ed25519 ", "ssh-rsa ")):
            return pyrage.ssh.Recipient.from_str(text)
        return pyrage.x25519.Recipient.from_str(text)
    except (pyrage.RecipientError, ValueError):
        raise ConfigError(
            f"{where}: backup.encrypt_to is not an age recipient (age1...) or SSH public key; "
            "paste the public key that `age-keygen` printed."
        ) from None


def identities(environ: dict[str, str] | None = None) -> list[Any]:
    """The identities in ``SAFE_MIGRATIONS_AGE_IDENTITY`` (a key, or a file of keys)."""
    import pyrage

    value = (environ if environ is not None else os.environ).get(IDENTITY_VARIABLE, "").strip()
    if not value:
        raise ConfigError(
            f"This backup is encrypted; set {IDENTITY_VARIABLE} to the age identity "
            "(AGE-SECRET-KEY-...) or to the file that holds it."
        )
    text = value
    if not value.startswith("AGE-SECRET-KEY-"):
        path = Path(value)
        if not path.is_file():
            raise ConfigError(
                f"{IDENTITY_VARIABLE} is neither an age key nor a readable file; "
                "point it at the identity file."
            )
        text = path.read_text(encoding="utf-8")
    keys = [line.strip() for line in text.splitlines() if line.strip().startswith("AGE-SECRET-")]
    try:
        return [pyrage.x25519.Identity.from_str(key) for key in keys]
    except (pyrage.IdentityError, ValueError):
        raise ConfigError(f"{IDENTITY_VARIABLE} holds a malformed age identity.") from None


def encrypt_stream(source: Any, target: Any, recipient: Any) -> None:
    """Encrypt everything ``source.read`` gives into ``target`` in constant memory."""
    import pyrage

    try:
        pyrage.encrypt_io(source, target, [recipient])
    except pyrage.EncryptError as exc:
        raise BackupError(f"Encrypting the backup failed: {exc}") from None


def decrypt_file(source: Path, target: Path, keys: list[Any]) -> None:
    """Decrypt an archive into a private file (0600) that the caller removes."""
    import pyrage

    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(source, "rb") as encrypted, os.fdopen(fd, "wb") as plain:
            pyrage.decrypt_io(encrypted, plain, keys)
    except pyrage.DecryptError:
        target.unlink(missing_ok=True)
        raise BackupError(
            f"{source.name} cannot be decrypted with the identity in {IDENTITY_VARIABLE}; "
            "it was encrypted to another key, or damaged."
        ) from None


class HashingWriter:
    """A file that also hashes and counts what it stores: the checksum of the encrypted
    bytes is computed on the way, without reading the file a second time."""

    def __init__(self, handle: Any) -> None:
        import hashlib

        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        self.handle.write(data)
        return len(data)

    def flush(self) -> None:
        self.handle.flush()
