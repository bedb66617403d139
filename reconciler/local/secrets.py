"""`LocalSecrets`: the `SecretSource` of local mode. Credentials come from `--credentials FILE`
(a mapping of Secret name -> {key: value}, or Kubernetes Secret manifests) or from environment
variables `PMSCTL_CREDENTIALS_<SECRET_NAME>` holding a JSON object; never from the practice YAML.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pms_drivers.base import Credentials
from reconciler.local.errors import CredentialsNotFound, UpError

#: Environment variable prefix for credentials: PMSCTL_CREDENTIALS_<SECRET_NAME> = JSON object.
ENV_PREFIX = "PMSCTL_CREDENTIALS_"


def env_var_name(secret_name: str) -> str:
    """`bright-smiles-od` -> `PMSCTL_CREDENTIALS_BRIGHT_SMILES_OD`."""
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", secret_name).upper()


def _string_map(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str | int) for k, v in value.items()
    ):
        raise UpError(f"{where}: expected a mapping of key -> string (e.g. developerKey: ...)")
    return {k: str(v) for k, v in value.items()}


def parse_credentials_file(text: str, path: str) -> dict[str, dict[str, str]]:
    """Secret name -> {key: value} from a credentials file.

    Two shapes are accepted: a plain mapping (`bright-smiles-od: {developerKey: ..., customerKey:
    ...}`, YAML or JSON), or Kubernetes Secret manifests (`kind: Secret`, `stringData` and/or
    base64 `data`), one per document. Error messages never include a value.
    """
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        raise UpError(f"{where}: not valid YAML/JSON: {getattr(exc, 'problem', exc)}") from None
    out: dict[str, dict[str, str]] = {}
    for i, doc in enumerate(docs, 1):
        if not isinstance(doc, Mapping):
            raise UpError(f"{path}: document {i}: expected a mapping of Secret name -> keys")
        if doc.get("kind") == "Secret":
            name = (doc.get("metadata") or {}).get("name")
            if not isinstance(name, str) or not name:
                raise UpError(f"{path}: document {i}: a Secret needs metadata.name")
            values: dict[str, str] = {}
            for k, v in _string_map(doc.get("data") or {}, f"{path}: Secret {name}: data").items():
                try:
                    values[k] = base64.b64decode(v, validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    raise UpError(
                        f"{path}: Secret {name}: data.{k} is not base64 text (use stringData for plain values)"
                    ) from None
            values.update(
                _string_map(doc.get("stringData") or {}, f"{path}: Secret {name}: stringData")
            )
            out[name] = values
            continue
        for name, values in doc.items():
            out[str(name)] = _string_map(values, f"{path}: {name}")
    return out


def parse_credentials_env(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Env var name -> {key: value} for every PMSCTL_CREDENTIALS_* variable (JSON objects)."""
    out: dict[str, dict[str, str]] = {}
    for var, raw in environ.items():
        if not var.startswith(ENV_PREFIX) or var == ENV_PREFIX:
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise UpError(
                f'{var}: expected a JSON object like \'{{"developerKey": "...", "customerKey": "..."}}\''
            ) from None
        out[var] = _string_map(value, var)
    return out


class LocalSecrets:
    """The local `SecretSource`: Secret name -> Credentials from a file, then the environment.

    The environment wins over the file for the same Secret (so one key can be overridden in CI).
    Values are held as `Credentials`, whose repr is redacted.
    """

    def __init__(
        self,
        by_name: Mapping[str, Mapping[str, str]] | None = None,
        by_env: Mapping[str, Mapping[str, str]] | None = None,
        source: str = "",
    ) -> None:
        self._by_name = {k: Credentials(v) for k, v in (by_name or {}).items()}
        self._by_env = {k: Credentials(v) for k, v in (by_env or {}).items()}
        self._source = source

    @classmethod
    def load(cls, path: Path | None, environ: Mapping[str, str]) -> LocalSecrets:
        """From `--credentials FILE` (optional) and the environment; UpError when unreadable."""
        by_name: dict[str, dict[str, str]] = {}
        if path is not None:
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise UpError(f"--credentials {path}: cannot read: {exc.strerror}") from None
            by_name = parse_credentials_file(text, str(path))
        return cls(by_name, parse_credentials_env(environ), str(path) if path else "")

    @property
    def available(self) -> bool:
        """True when any credentials were given (then `--simulate` is not the default)."""
        return bool(self._by_name or self._by_env)

    def lookup(self, secret_name: str) -> Credentials:
        """The credentials for a Secret name; CredentialsNotFound says where it looked."""
        found = self._by_env.get(env_var_name(secret_name)) or self._by_name.get(secret_name)
        if found is None:
            where = self._source or "a --credentials file"
            raise CredentialsNotFound(
                f"no credentials for Secret {secret_name!r}: add it to {where} "
                f"or set {env_var_name(secret_name)} to a JSON object of its keys"
            )
        return found

    async def get(self, key: str, secret_name: str) -> Credentials:
        """`SecretSource.get`: `key` is the practice's engine key (unused locally)."""
        return self.lookup(secret_name)

    def __repr__(self) -> str:
        return f"LocalSecrets(<{len(self._by_name) + len(self._by_env)} secrets, redacted>)"
