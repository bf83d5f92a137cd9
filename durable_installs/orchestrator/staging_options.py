"""The worker's model-staging settings, from its options and its environment.

Closed by default: a worker started without ``--allow-model-source`` refuses every model
source, as a node agent started without ``--allow-gallery`` refuses every gallery. The
nodes' file-transfer token is read from a file (``--node-files-token-file``, what a systemd
unit should use: a token on a command line is visible to every local user) or from
``NODE_FILES_TOKEN``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from activities.sources import SourcePrefixError, TrustedSources
from activities.staging import StagingConfig

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
MAX_TOKEN_BYTES = 4096


def parse_bytes(text: str) -> int:
    """``50G``, ``512MiB``, ``1048576`` as bytes (powers of 1024); ValueError otherwise."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size (like 50G, 512M or 1048576)")
    number, unit = float(match.group(1)), match.group(2).upper()
    return int(number * 1024 ** " KMGT".index(unit or " "))


def staging_config(
    allow_model_source: list[str] | None,
    node_files_token_file: str | None,
    model_cache_dir: str,
    model_cache_bytes: str,
    staging_rate_limit: str,
) -> StagingConfig:
    """The settings the worker's options give; ValueError naming the option that is wrong."""
    prefixes = allow_model_source
    if prefixes is None:
        prefixes = os.environ.get("MODEL_SOURCES", "").split()
    try:
        sources = TrustedSources(tuple(prefixes))
    except SourcePrefixError as err:
        raise ValueError(f"--allow-model-source: {err}") from None
    token = os.environ.get("NODE_FILES_TOKEN", "")
    if node_files_token_file:
        try:
            token = Path(node_files_token_file).read_text()[: MAX_TOKEN_BYTES + 1].strip()
        except OSError as err:
            raise ValueError(
                f"--node-files-token-file: cannot read {node_files_token_file}: "
                f"{err.strerror or err}"
            ) from None
    if len(token) > MAX_TOKEN_BYTES or any(ord(c) < 0x21 or ord(c) > 0x7E for c in token):
        raise ValueError("the node files token must be at most 4096 printable ASCII characters")
    try:
        cache_bytes = parse_bytes(model_cache_bytes)
    except ValueError as err:
        raise ValueError(f"--model-cache-bytes: {err}") from None
    try:
        rate = parse_bytes(staging_rate_limit)
    except ValueError as err:
        raise ValueError(f"--staging-rate-limit: {err}") from None
    return StagingConfig(
        sources=sources,
        files_token=token,
        cache_dir=Path(model_cache_dir).expanduser().absolute(),
        cache_bytes=cache_bytes,
        max_bytes_per_second=rate,
    )
