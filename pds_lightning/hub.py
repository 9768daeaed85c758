"""Files of a Hugging Face Hub model repository, through huggingface_hub's own cache.

`snapshot` downloads the files a converter asks for (`huggingface_hub.snapshot_download`, its standard cache
under HF_HOME / HF_HUB_CACHE, its offline mode HF_HUB_OFFLINE=1 and its token HF_TOKEN / `hf auth login`) and
returns the local snapshot folder; the folder's name is the resolved commit, so a conversion pins the exact
revision it read. Errors are one line (HubError, a ValueError) naming the repo, the revision and the fix.
`is_repo_id` says whether a command-line argument names a repo rather than a folder, `sha256` hashes a file
read, so the converted checkpoint records what it came from.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Sequence

# org/name as the Hub spells repo ids (huggingface_hub validates the details when it is called)
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
COMMIT = re.compile(r"[0-9a-f]{40}")
LOGIN = "set HF_TOKEN or run `hf auth login` if it is private or gated"


class HubError(ValueError):
    """A Hub repo or revision could not be read; the message names it and what to do."""


def is_repo_id(text: str | os.PathLike) -> bool:
    """A path that exists is a folder; otherwise a string of the form org/name is a Hub repo id."""
    return not os.path.exists(text) and REPO_ID.fullmatch(str(text)) is not None


def sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes (read in chunks: weights are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def cached_revisions(repo_id: str) -> list[str]:
    """The refs (branch / tag names) and commits of `repo_id` in the local cache, for error messages."""
    from huggingface_hub.file_download import repo_folder_name

    folder = cache_dir() / repo_folder_name(repo_id=repo_id, repo_type="model")
    refs = sorted(str(p.relative_to(folder / "refs")) for p in (folder / "refs").rglob("*") if p.is_file())
    commits = sorted(p.name for p in (folder / "snapshots").glob("*") if p.is_dir())
    return refs + [c for c in commits if c not in refs]


def not_cached(repo_id: str, revision: str | None) -> HubError:
    """The offline miss, naming whether the repo or only the revision is absent from the cache."""
    cached = cached_revisions(repo_id)
    fix = "run once without HF_HUB_OFFLINE=1 to download it"
    if not cached:
        return HubError(f"Hub repo {repo_id} is not in the Hugging Face cache {cache_dir()} and HF_HUB_OFFLINE=1 "
                        f"forbids downloading: {fix} (or check the repo id)")
    return HubError(f"revision {revision or 'main'} of Hub repo {repo_id} is not in the Hugging Face cache "
                    f"{cache_dir()} (cached: {', '.join(cached)}) and HF_HUB_OFFLINE=1 forbids downloading: {fix}, "
                    "or pass a cached --revision")


def snapshot(repo_id: str, revision: str | None, patterns: Sequence[str]) -> Path:
    """The local snapshot folder of `repo_id` at `revision` (None: main) holding the files that match
    `patterns` that the repo has; downloaded into the cache unless already there (or offline)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (GatedRepoError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError,
                                       RepositoryNotFoundError, RevisionNotFoundError)

    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=list(patterns))
    except HFValidationError as err:
        raise HubError(f"{repo_id} is neither a folder nor a valid Hub repo id (org/name): {err}") from err
    except GatedRepoError as err:
        raise HubError(f"Hub repo {repo_id} is gated: accept its terms on the Hub and {LOGIN}") from err
    except RepositoryNotFoundError as err:
        raise HubError(f"Hub repo {repo_id} was not found (and no folder {repo_id} exists): check the name, or "
                       f"{LOGIN}") from err
    except RevisionNotFoundError as err:
        raise HubError(f"revision {revision} of Hub repo {repo_id} does not exist: pass a branch, tag or "
                       "commit of the repo to --revision") from err
    except LocalEntryNotFoundError as err:
        if offline():
            raise not_cached(repo_id, revision) from err
        raise HubError(f"cannot download Hub repo {repo_id} (revision {revision or 'main'}) and it is not in the "
                       f"cache {cache_dir()}: check the network, or {LOGIN}") from err
    except HfHubHTTPError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HubError(f"cannot download Hub repo {repo_id}: {first}") from err
    return Path(folder)


def commit_of(folder: Path) -> str:
    """The commit a snapshot folder holds: huggingface_hub names snapshot folders by their commit."""
    if not COMMIT.fullmatch(folder.name):
        raise HubError(f"{folder} is not a snapshot folder of the Hugging Face cache (its name is no commit hash)")
    return folder.name
