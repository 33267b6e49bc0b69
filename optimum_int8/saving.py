"""Saving policy: how every checkpoint directory optimum-int8 writes gets onto disk.

Every write (a quantized model's ``save_pretrained``, ``convert``, the tuner's save, the Hub push) goes
through :func:`staged_directory`:

1. Refuse a target that is a file, that is (or contains) the model being quantized, or that holds a
   model which is not an optimum-int8 checkpoint (fp32 weights, a legacy INC checkpoint), unless
   ``overwrite=True``.
2. Write everything (weights, config, tokenizer, model card) into a staging directory beside the
   target, ``.<name>.saving-<host>-<pid>-<random>``; files saved earlier beside the weights (tokenizer,
   a handwritten README) are carried over, the old model's own files are not.
3. fsync every file and directory of the staging directory.
4. Swap it into place in one step: ``renameat2(RENAME_EXCHANGE)``, so the path always names a
   complete checkpoint, the old one or the new one. Where the filesystem cannot exchange, the old
   directory is first renamed to ``.<name>.replaced-<host>-<pid>-<random>``; a crash between the two
   renames leaves it there, and the next load or save of the path puts it back.
5. fsync the parent directory; delete the old checkpoint.

Staging and replaced directories left by a killed process (its pid is gone) are removed by the next
load or save of that path. Loads through optimum-int8's loaders hold a shared ``flock`` on the
checkpoint directory; the swap takes it exclusively, so a load sees one checkpoint, never a mix, and of
two concurrent saves the one that swaps last wins, whole. docs/format.md states these guarantees.
"""

import contextlib
import ctypes
import errno
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: saves still stage and swap, but loads and swaps take no lock
    fcntl = None

from safetensors import SafetensorError

from . import generation, modelcard
from .checkpoint import is_weight_file
from .configuration import QUANT_METHOD

logger = logging.getLogger(__name__)

# What ``save_pretrained(..., push_to_hub=True)`` passes on to the push rather than to the save.
PUSH_KEYWORDS = ("repo_id", "commit_message", "commit_description", "private", "token", "revision", "create_pr", "tags")
# Files that belong to the model being replaced: never carried over into the new checkpoint.
_MODEL_FILES = ("config.json", "generation_config.json")
_STAGING, _REPLACED = "saving", "replaced"
_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


class OverwriteRefusedError(FileExistsError):
    """Saving would replace a model that is not an optimum-int8 checkpoint, or the model being quantized."""


# -- leftovers of earlier saves


def _leftover_pattern(name: str) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(name)}\.({_STAGING}|{_REPLACED})-(.+)-(\d+)-[A-Za-z0-9_]+$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dead_leftovers(target: Path) -> tuple[list[Path], list[Path]]:
    """(staging, replaced) directories beside ``target`` whose writer (a process of this host) is gone."""
    pattern, staging, replaced = _leftover_pattern(target.name), [], []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return [], []
    for entry in entries:
        match = pattern.match(entry.name)
        if match and match.group(2) == _HOST and not _pid_alive(int(match.group(3))):
            (staging if match.group(1) == _STAGING else replaced).append(Path(entry.path))
    return staging, replaced


def recover(target) -> list[Path]:
    """Put back a checkpoint a killed save left under a replaced name, and remove dead staging directories.

    Called by every load and save of ``target``; returns the leftovers that could not be removed (a
    read-only parent directory, say), which are then named in a warning.
    """
    target = Path(target)
    staging, replaced = _dead_leftovers(target)
    if replaced and not os.path.lexists(target):
        newest = max(replaced, key=lambda path: path.stat().st_mtime_ns)
        with contextlib.suppress(FileNotFoundError, FileExistsError, OSError):
            os.rename(newest, target)
            logger.warning(f"{target}: a save was killed while replacing it; restored the previous checkpoint.")
            replaced.remove(newest)
    left = []
    for path in staging + replaced:
        shutil.rmtree(path, ignore_errors=True)
        if os.path.lexists(path):
            left.append(path)
    if left:
        logger.warning(f"{target}: could not remove what interrupted saves left: {', '.join(map(str, left))}")
    return left


# -- locking and swapping


@contextlib.contextmanager
def _directory_lock(path: Path, exclusive: bool):
    """flock ``path``'s directory (the one it names when the lock is taken); yields False if there is none."""
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            yield False
            return
        try:
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            except OSError as error:
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                    raise
                logger.debug(f"{path}: this filesystem has no flock; proceeding without the lock")
            locked, now = os.fstat(fd), None
            with contextlib.suppress(FileNotFoundError):
                now = os.stat(path)
            if now is not None and (now.st_dev, now.st_ino) == (locked.st_dev, locked.st_ino):
                yield True
                return
        finally:
            os.close(fd)  # releases the lock
        # The path was swapped while we waited: lock the directory it names now.


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)


def _exchange(first: Path, second: Path) -> None:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); OSError where unsupported."""
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(first), None, str(second))


def _fsync_path(path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                _fsync_path(path)
        _fsync_path(directory, directory=True)


def _swap_into_place(staging: Path, target: Path) -> Path | None:
    """Make ``staging`` the directory at ``target``; return where the old checkpoint now is (None: there was none)."""
    while True:
        if not os.path.lexists(target):
            try:
                os.rename(staging, target)
                return None
            except OSError as error:
                if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                continue  # another save put a checkpoint there first: replace it
        with _directory_lock(target, exclusive=True) as locked:
            if not locked:
                continue
            try:
                _exchange(staging, target)
                return staging
            except OSError as error:
                if error.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
            backup = Path(tempfile.mkdtemp(prefix=_prefix(target, _REPLACED), dir=target.parent))
            os.rmdir(backup)
            os.rename(target, backup)
            try:
                os.rename(staging, target)
            except BaseException:
                os.rename(backup, target)
                raise
            return backup


def _prefix(target: Path, kind: str) -> str:
    return f".{target.name}.{kind}-{_HOST}-{os.getpid()}-"


# -- what may be replaced


def _held_model(target: Path) -> str | None:
    """What ``target`` holds that must not be replaced silently; None for an optimum-int8 checkpoint or no model."""
    config_file = target / "config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return "a config.json that is not valid JSON"
        quantization = config.get("quantization_config") if isinstance(config, dict) else None
        method = quantization.get("quant_method") if isinstance(quantization, dict) else None
        if method == QUANT_METHOD:
            return None
        if method is not None:
            return f"a {method!r} quantized model"
        if isinstance(config, dict) and "int8" in (config.get("torch_dtype"), config.get("dtype")):
            return "a legacy INC int8 checkpoint"
        return "a float model (its config.json has no optimum-int8 quantization_config)"
    weights = sorted(entry.name for entry in target.iterdir() if is_weight_file(entry.name))
    return f"weights ({', '.join(weights)}) without a config.json" if weights else None


def _is_within(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def check_target(target: Path, *, sources=(), overwrite: bool = False, new_only: bool = False) -> None:
    """Raise unless saving into ``target`` (absolute, resolved) is allowed; see the module docstring."""
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is a file; save into a directory.")
    for source in sources:
        source = Path(os.path.realpath(source))
        if _is_within(source, target) and not overwrite:
            what = "is" if source == target else "contains"
            raise OverwriteRefusedError(
                f"{target} {what} the model being quantized ({source}); saving there would replace it. "
                "Save into another directory, or pass overwrite=True (--overwrite) to replace it."
            )
    if not target.is_dir():
        return
    if new_only and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not an empty directory; write into a new directory.")
    held = _held_model(target)
    if held is not None and not overwrite:
        raise OverwriteRefusedError(
            f"{target} holds {held}; saving there would replace it. Save into another directory, "
            "or pass overwrite=True (--overwrite) to replace it."
        )


def _carry_over(old_dir: Path, new_dir: Path) -> None:
    """Keep files saved earlier beside the weights (tokenizer, README, ...); the old model's files are replaced."""
    root = Path(os.path.realpath(old_dir))
    for entry in old_dir.iterdir():
        destination = new_dir / entry.name
        if is_weight_file(entry.name) or entry.name in _MODEL_FILES or destination.exists():
            continue
        if entry.is_symlink() and not _is_within(Path(os.path.realpath(entry)), root):
            # A push would upload what it points to: never carry a file from outside the checkpoint into it.
            logger.warning(f"{entry} links outside {old_dir} (to {os.path.realpath(entry)}); not carried into the new checkpoint.")
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, destination, symlinks=True)
        else:
            shutil.copy2(entry, destination, follow_symlinks=False)


@contextlib.contextmanager
def staged_directory(target, *, carry_over: bool = True, sources=(), overwrite: bool = False, new_only: bool = False):
    """Yield a staging directory beside ``target`` to write into; on success it replaces ``target`` in one step.

    On any failure the staging directory is removed and ``target`` is left exactly as it was.
    ``sources``: directories of the model being written (never replaced); ``overwrite``: replace them,
    or a model that is not an optimum-int8 checkpoint, anyway; ``new_only``: ``target`` must be new or empty.
    """
    target = Path(os.path.realpath(Path(target).expanduser()))
    recover(target)
    check_target(target, sources=sources, overwrite=overwrite, new_only=new_only)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_prefix(target, _STAGING), dir=target.parent))
    try:
        if carry_over and target.is_dir():
            _carry_over(target, staging)
        yield staging
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
        _fsync_tree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = _swap_into_place(staging, target)
    _fsync_path(target.parent, directory=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def reading(directory):
    """Hold ``directory`` (a local checkpoint) steady while it is loaded: no save swaps it meanwhile.

    Repairs what a killed save left first. A name that is no local path (a Hub repo id) passes through.
    """
    path = Path(directory).expanduser()
    if not path.parent.is_dir():
        yield
        return
    recover(path)
    with _directory_lock(path, exclusive=False):
        yield


# -- quantized models


def _model_sources(model) -> list[str]:
    """The local directory a model was quantized from (not one it was loaded from pre-quantized)."""
    quantizer = getattr(model, "hf_quantizer", None)
    name = getattr(model, "name_or_path", "") or ""
    if (quantizer is not None and quantizer.pre_quantized) or not name or not Path(name).expanduser().is_dir():
        return []
    return [str(Path(name).expanduser())]


def _as_os_error(error: Exception, target: Path) -> OSError | None:
    """safetensors reports a failed write (a full disk, say) as its own error: the OSError it is, if it is one."""
    match = re.search(r"os error (\d+)", str(error))
    if match is None:
        return None
    code = int(match.group(1))
    return OSError(code, f"{os.strerror(code)}: writing the weights of {target}")


def save_quantized(model, save_directory, *save_args, tokenizer=None, files: dict | None = None,
                   card_fields: dict | None = None, sources=(), overwrite: bool = False, carry_over: bool = True,
                   new_only: bool = False, **save_kwargs) -> Path:
    """Write a quantized model, ``tokenizer``'s files, ``files`` and the model card as one crash-safe replacement.

    ``save_args`` / ``save_kwargs`` go to transformers' ``save_pretrained``; ``files`` maps names to
    paths copied in verbatim (a converted checkpoint's tokenizer files); ``card_fields`` go to
    :func:`optimum_int8.modelcard.build_model_card` (``repo_id`` defaults to the directory name). The
    other keywords are :func:`staged_directory`'s.
    """
    target = Path(os.path.realpath(Path(save_directory).expanduser()))
    sources = [*sources, *_model_sources(model)]
    with staged_directory(target, sources=sources, overwrite=overwrite, carry_over=carry_over, new_only=new_only) as staging:
        try:
            with generation.saved_without_fast_decode(model):
                type(model).save_pretrained(model, staging, *save_args, **save_kwargs)
        except SafetensorError as error:
            os_error = _as_os_error(error, target)
            if os_error is None:
                raise
            raise os_error from error
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        for name, path in (files or {}).items():
            shutil.copyfile(path, staging / name)
        modelcard.write_model_card(model, staging, **{"repo_id": target.name, **(card_fields or {})})
    return target


def atomic_save_pretrained(model, save_directory, *args, push_to_hub: bool = False, overwrite: bool = False, **kwargs):
    """``save_pretrained`` bound to each quantized model: :func:`save_quantized`, crash-safe.

    ``push_to_hub=True`` hands the save to the model's own ``push_to_hub`` (the one-commit push of
    ``optimum_int8.hub``), which saves into ``save_directory`` the same way and uploads it.
    """
    if push_to_hub:
        push_kwargs = {key: kwargs.pop(key) for key in PUSH_KEYWORDS if key in kwargs}
        return model.push_to_hub(push_kwargs.pop("repo_id", Path(save_directory).name), save_directory=save_directory,
                                 save_args=args, save_kwargs={**kwargs, "overwrite": overwrite}, **push_kwargs)
    save_quantized(model, save_directory, *args, overwrite=overwrite, **kwargs)
