"""``python -m omni_app space push OUT --repo user/name``: upload a built Space to the Hub."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import RequestError, hidden
from .build import is_built_space

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
TOKEN_HELP = ("Set HF_TOKEN to a Hugging Face access token with write access (make one at "
              "https://huggingface.co/settings/tokens), or log in once with `hf auth login`.")


def push_space(folder: str | Path, repo_id: str, api=None, private: bool = False) -> str:
    """Create the Space ``repo_id`` if needed and make its files those of ``folder``; returns its URL.

    ``api`` is a ``huggingface_hub.HfApi`` (made with the token from ``HF_TOKEN`` or the saved
    login when not given). Files the Space has that ``folder`` lacks are deleted, so the Space
    holds exactly the build.
    """
    folder = Path(folder)
    if not folder.is_dir() or not is_built_space(folder):
        raise RequestError(f"{folder} is not a built Space: run `python -m omni_app space build {folder}` first.")
    if not REPO_ID.match(repo_id or ""):
        raise RequestError(f"--repo must look like user/name (the Space's owner and name), not {repo_id!r}.")
    if api is None:
        from huggingface_hub import HfApi, get_token

        token = get_token()
        if not token:
            raise RequestError(f"No Hugging Face token found. {TOKEN_HELP}")
        api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="space", space_sdk="gradio", exist_ok=True, private=private)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="space",
                          commit_message="Update the Space from its Spacefile", delete_patterns=["*"])
    except (TypeError, AttributeError, NameError):
        raise  # a bug here, not a refusal: keep its traceback
    except Exception as exc:  # the Hub's refusals and network failures, told in one line
        raise hidden(RequestError, f"The upload to {repo_id} failed: {_reason(exc)}", exc) from exc
    return f"https://huggingface.co/spaces/{repo_id}"


def _reason(exc: Exception) -> str:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return f"the Hub refused the token ({status}). {TOKEN_HELP}"
    if status == 404:
        return "the Hub has no such Space, or the token may not write to it."
    if status is not None:
        return f"the Hub answered HTTP {status}; try again later."
    if isinstance(exc, (OSError, ConnectionError)) or "connect" in type(exc).__name__.lower():
        return "huggingface.co could not be reached: check the network (and HF_ENDPOINT, if set)."
    return "the Hub did not accept it; check the token and the Space's name, and try again."
