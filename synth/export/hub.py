"""Upload an exported folder to the Hugging Face Hub; the token never leaves the API calls."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from huggingface_hub import HfApi

log = logging.getLogger(__name__)

TOKEN_ENV_VARS: tuple[str, ...] = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


class MissingTokenError(RuntimeError):
    """No Hugging Face token was given and none is set in the environment."""


def resolve_token(token: str | None = None) -> str:
    """The token argument, else $HF_TOKEN, else $HUGGING_FACE_HUB_TOKEN."""
    if token:
        return token
    for var in TOKEN_ENV_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return value
    raise MissingTokenError(
        "no Hugging Face token: pass token=... or set HF_TOKEN (or HUGGING_FACE_HUB_TOKEN) "
        "to a token with write access (https://huggingface.co/settings/tokens)"
    )


def push_to_hub(
    dataset_dir: Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    api: HfApi | None = None,
) -> str:
    """Create the dataset repo (if needed) and upload ``dataset_dir`` to it. Returns the URL.

    The token comes from ``token`` or the environment and is passed to the API calls only; it
    is never logged nor written anywhere. Shards an export is still writing (``*.tmp``) stay local.
    """
    dataset_dir = Path(dataset_dir)
    if not (dataset_dir / "README.md").is_file():
        raise FileNotFoundError(f"{dataset_dir} is not an exported dataset (no README.md)")
    if not repo_id or repo_id.count("/") > 1 or repo_id.startswith("/") or repo_id.endswith("/"):
        raise ValueError(f"repo_id must look like 'owner/name', got {repo_id!r}")
    resolved = resolve_token(token)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=resolved)

    log.info("creating dataset repo %s (private=%s)", repo_id, private)
    repo_url = api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private, token=resolved)
    log.info("uploading %s to %s", dataset_dir, repo_id)
    api.upload_folder(
        folder_path=str(dataset_dir),
        repo_id=repo_id,
        repo_type="dataset",
        token=resolved,
        commit_message="Upload synthetic dataset exported by synth",
        ignore_patterns=["*.tmp", ".cache/**"],
    )
    if isinstance(repo_url, str) and repo_url:
        url = str(repo_url)
    else:
        endpoint = getattr(api, "endpoint", None) or "https://huggingface.co"
        url = f"{endpoint.rstrip('/')}/datasets/{repo_id}"
    log.info("pushed dataset to %s", url)
    return url
