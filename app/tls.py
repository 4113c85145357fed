"""--sslcert/--sslkey: checking the pair before the server binds (uvicorn does the TLS itself)."""

from __future__ import annotations

import ssl
from pathlib import Path


class _Encrypted(Exception):
    pass


def _no_password() -> bytes:
    raise _Encrypted  # OpenSSL would otherwise prompt for the passphrase on the terminal


def check_pair(cert: Path, key: Path) -> None:
    """ValueError naming the option when a file is missing or unreadable, or the key does not fit."""
    for option, path in (("--sslcert", cert), ("--sslkey", key)):
        try:
            with path.open("rb"):
                pass
        except OSError as error:
            raise ValueError(f"{option}: cannot read {str(path)!r}: {error.strerror}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cafile=cert)  # parses the certificates alone, so a bad one is named
    except ssl.SSLError:
        raise ValueError(f"--sslcert: no PEM certificate in {str(cert)!r}") from None
    try:
        context.load_cert_chain(cert, key, password=_no_password)  # what uvicorn does at start-up
    except _Encrypted:
        raise ValueError(f"--sslkey: {str(key)!r} is encrypted; give a key without a passphrase") from None
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"--sslkey: {str(key)!r} is not the key of the certificate in --sslcert") from None
        raise ValueError(f"--sslkey: no PEM private key in {str(key)!r}") from None
