"""Sharing int8 models on the Hub: one-commit pushes with a generated model card, and clear errors
when the Hub refuses a repo, a revision or a token."""

import contextlib
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from . import modelcard, saving

# Weight files a push replaces: stale ones (other shards, a legacy pytorch_model.bin) go in the same
# commit, so the repo never holds weights that disagree with its config.json.
WEIGHT_PATTERNS = ("model*.safetensors", "model*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.bin.index.json")


class HubAccessError(OSError):
    """The Hub refused or could not find a repo, revision or token; the message says which and what to do."""


def check_revision(revision) -> None:
    """A revision names a branch, tag or commit: refuse one that is a path (the Hub cache keeps refs as files)."""
    if revision is None:
        return
    if (not isinstance(revision, str) or not revision or revision.startswith("/") or "\\" in revision
            or "\x00" in revision or ".." in revision.split("/")):
        raise ValueError(f"revision {str(revision)[:100]!r} is not a branch, tag or commit name: it must not hold "
                         "'..' segments, a leading '/' or backslashes.")


def _token_description(token) -> str:
    if token is False or (token is None and get_token() is None):
        return "without a token"
    return "with your saved token" if token is None or token is True else "with the token you passed"


def _causes(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def describe_hub_error(error: BaseException, repo_id: str, *, revision=None, token=None, action: str = "load") -> str | None:
    """A short message for a Hub refusal anywhere in ``error``'s chain; None if it is not one."""
    causes = list(_causes(error))

    def find(kind):
        return next((cause for cause in causes if isinstance(cause, kind)), None)

    endpoint, namespace = constants.ENDPOINT, repo_id.split("/")[0]
    login = 'pass token="hf_..." or log in with `hf auth login`'
    if find(GatedRepoError):
        return f"{repo_id!r} on {endpoint} is gated: request access on {endpoint}/{repo_id}, then {login}."
    if find(RevisionNotFoundError):
        return (f"{repo_id!r} on {endpoint} has no revision {revision!r}. "
                "Pass an existing branch, tag or commit id as revision=.")
    if find(RepositoryNotFoundError):
        if action == "push":
            return (f"Cannot push to {repo_id!r} on {endpoint} {_token_description(token)}: pushing needs a token "
                    f"with write access to the {namespace!r} namespace; {login}.")
        return (f"Cannot load {repo_id!r} from {endpoint}: no such repo, or it is private and was requested "
                f"{_token_description(token)}, which cannot read it. Check the repo id; for a private repo {login} "
                "with a token that has read access to it.")
    http_error = find(HfHubHTTPError)
    status = http_error.response.status_code if http_error is not None and http_error.response is not None else None
    if status == 401:
        return (f"{endpoint} refused the token used to {action} {repo_id!r} ({_token_description(token)}): it is "
                f"invalid or expired. Create a new one in your Hub settings and {login}.")
    if status == 403:
        return (f"The token used to {action} {repo_id!r} ({_token_description(token)}) is not allowed to: "
                f"{action} needs {'write' if action == 'push' else 'read'} access to the {namespace!r} namespace.")
    return None


@contextlib.contextmanager
def translate_hub_errors(repo_id, *, revision=None, token=None, action: str = "load"):
    """Re-raise Hub refusals (missing/private repo, bad token, missing revision) as one clear ``HubAccessError``."""
    try:
        yield
    except Exception as error:
        message = describe_hub_error(error, str(repo_id), revision=revision, token=token, action=action)
        if message is None:
            raise
        raise HubAccessError(message) from None


def _remote_card_is_handwritten(api: HfApi, repo_id: str, revision, token) -> bool:
    try:
        path = api.hf_hub_download(repo_id, modelcard.CARD_NAME, revision=revision, token=token)
    except (EntryNotFoundError, RevisionNotFoundError):
        return False
    return not modelcard.is_generated_card(Path(path).read_text(encoding="utf-8", errors="replace"))


def push_to_hub(
    model,
    repo_id: str,
    *,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = "50GB",
    tags: list[str] | None = None,
    tokenizer=None,
    save_directory=None,
    save_args: tuple = (),
    save_kwargs: dict | None = None,
    **card_fields,
):
    """transformers' ``push_to_hub``, bound to quantized models: one commit with the weights, config.json
    (with the manifest), the generation config, ``tokenizer``'s files when given, and the generated model
    card (the repo's README.md stays as it is if someone wrote it by hand). Weight files of an earlier
    push that this one does not replace are deleted in the same commit.

    The model, tokenizer and card are saved together into ``save_directory`` (default: a temporary
    directory) through ``optimum_int8.saving`` (crash-safe, never over another model), with ``save_args`` /
    ``save_kwargs`` for ``save_pretrained``. ``card_fields`` (license, datasets, base_model, language,
    task) go to :func:`optimum_int8.modelcard.build_model_card`.
    """
    api = HfApi()
    with translate_hub_errors(repo_id, revision=revision, token=token, action="push"), contextlib.ExitStack() as stack:
        repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        keep_remote_card = _remote_card_is_handwritten(api, repo_id, revision, token)
        if save_directory is None:
            save_directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="optimum-int8-push-"))
        save_directory = saving.save_quantized(
            model, save_directory, *save_args, tokenizer=tokenizer, card_fields={"repo_id": repo_id, "tags": tags, **card_fields},
            **{"max_shard_size": max_shard_size, **(save_kwargs or {})},
        )
        if revision is not None and not revision.startswith("refs/pr/"):
            api.create_branch(repo_id, branch=revision, token=token, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=save_directory,
            commit_message=commit_message or "Upload int8 model",
            commit_description=commit_description,
            token=token,
            revision=revision,
            create_pr=create_pr,
            ignore_patterns=[modelcard.CARD_NAME] if keep_remote_card else None,
            delete_patterns=list(WEIGHT_PATTERNS),
        )
