"""The saving policy: crash-safe at every kill point, never over another model, concurrent saves and loads.

Kill-point tests run the save in a real child process (``os.fork``: the parent's model is already in
memory) whose filesystem steps are gated: at the Nth step the child reports which step it reached and
waits, and the parent kills it with SIGKILL there. Every step of a full save is tried in turn.
"""

import copy
import errno
import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from conftest import LEGACY_FIXTURES, run
from optimum_int8 import INCModelForSeq2SeqLM, Int8Config, quantize_model, saving
from optimum_int8.saving import OverwriteRefusedError

# Every filesystem step a save takes, in the modules that take it.
GATED_STEPS = [(os, "fsync"), (os, "rename"), (saving, "_exchange"), (shutil, "rmtree"), (shutil, "copy2"),
               (shutil, "copyfile"), ("transformers.modeling_utils", "safe_save_file")]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def models(bart_fp32_dir):
    fp32 = AutoModelForSeq2SeqLM.from_pretrained(bart_fp32_dir)
    old = quantize_model(copy.deepcopy(fp32), Int8Config(modules_in_fp32=["lm_head"]))
    new = quantize_model(copy.deepcopy(fp32), Int8Config(modules_in_bf16=["model.decoder.layers.*.fc2"]))
    return old, new


@pytest.fixture
def workspace(tmp_path, models, bart):
    """The old and the new checkpoint saved once for reference (same directory name, so same card), and
    a work directory holding the old one with a tokenizer file beside it."""
    old, new = models
    for kind, model in (("old", old), ("new", new)):
        (tmp_path / kind / "int8").mkdir(parents=True)
        (tmp_path / kind / "int8" / "tokenizer.json").write_text('{"kept": true}')
        model.save_pretrained(tmp_path / kind / "int8")
    work = tmp_path / "work"
    shutil.copytree(tmp_path / "old" / "int8", work / "int8")
    snapshots = {kind: _snapshot(tmp_path / kind / "int8") for kind in ("old", "new")}
    assert snapshots["old"] != snapshots["new"]
    outputs = {kind: run(INCModelForSeq2SeqLM.from_pretrained(tmp_path / kind / "int8"), bart.inputs()) for kind in ("old", "new")}
    return work / "int8", snapshots, outputs


def _gated_child(action, kill_at: int, *, no_exchange: bool = False):
    """Fork a child that runs ``action()`` with its Nth filesystem step blocked; (pid, pipe to read from)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        return pid, read_end
    try:
        os.close(read_end)
        counter = itertools.count(1)

        def gate(name, function):
            def gated(*args, **kwargs):
                if next(counter) == kill_at:
                    os.write(write_end, name.encode())
                    time.sleep(600)
                return function(*args, **kwargs)
            return gated

        for owner, name in GATED_STEPS:
            owner = sys.modules[owner] if isinstance(owner, str) else owner
            setattr(owner, name, gate(name, getattr(owner, name)))
        if no_exchange:
            def cannot_exchange(first, second):
                raise OSError(errno.EINVAL, "RENAME_EXCHANGE not supported")
            saving._exchange = gate("_exchange", cannot_exchange)
        action()
        os.write(write_end, b"done")
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which fails the test
        os.write(write_end, f"error: {error!r}".encode())
    finally:
        os._exit(0)


def _kill_at_every_step(action, *, no_exchange: bool = False):
    """Run ``action()`` in a child killed at its 1st, 2nd, ... filesystem step until a run completes; yields the
    step number and the step each kill interrupted."""
    for kill_at in itertools.count(1):
        pid, read_end = _gated_child(action, kill_at, no_exchange=no_exchange)
        message = _wait_for(pid, read_end)
        _kill(pid)
        assert not message.startswith(("error", "timeout")), message
        if message == "done":
            return
        yield kill_at, message


def _wait_for(pid: int, read_end: int, timeout: float = 120) -> str:
    ready, _, _ = select.select([read_end], [], [], timeout)
    message = os.read(read_end, 4096).decode() if ready else "timeout"
    os.close(read_end)
    return message


def _kill(pid: int) -> None:
    with_signal = signal.SIGKILL
    try:
        os.kill(pid, with_signal)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


def _which(found, candidates: dict, when: str) -> str:
    """The name of the candidate (old or new checkpoint files, or model outputs) ``found`` equals; fails on a mix."""
    same = [kind for kind, candidate in candidates.items()
            if (torch.equal(found, candidate) if isinstance(found, torch.Tensor) else found == candidate)]
    assert same, f"{when}: neither the old nor the new checkpoint"
    return same[0]


def _leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name != target.name)


@pytest.mark.parametrize("no_exchange", [False, True], ids=["exchange", "two-renames"])
def test_a_save_killed_at_any_step_leaves_the_old_or_the_new_checkpoint(workspace, models, bart, no_exchange):
    target, snapshots, outputs = workspace
    _, new = models
    reached, steps = {"old": 0, "new": 0, "restored": 0}, []
    for kill_at, message in _kill_at_every_step(lambda: new.save_pretrained(target), no_exchange=no_exchange):
        steps.append(message)
        if target.exists():
            state = _which(_snapshot(target), snapshots, f"after a kill at step {kill_at} ({message})")
        else:
            # Only without an atomic exchange: killed between its two renames, the old checkpoint waits
            # under its replaced name for the next load or save to put it back.
            assert no_exchange and any(".replaced-" in name for name in _leftovers(target)), _leftovers(target)
            state = "restored"
        reached[state] += 1
        # The next load (even kill points) or save (odd ones) repairs the path and removes what the kill left.
        if kill_at % 2 == 0:
            loaded = INCModelForSeq2SeqLM.from_pretrained(target)
            assert torch.equal(run(loaded, bart.inputs()), outputs["new" if state == "new" else "old"])
        else:
            new.save_pretrained(target)
            assert _snapshot(target) == snapshots["new"]
        assert _leftovers(target) == [], (kill_at, message)
        shutil.rmtree(target)
        shutil.copytree(target.parent.parent / "old" / "int8", target)
    assert _snapshot(target) == snapshots["new"] and _leftovers(target) == []
    assert "_exchange" in steps and "safe_save_file" in steps and "fsync" in steps and "rmtree" in steps
    assert reached["old"] and reached["new"] and (reached["restored"] > 0) == no_exchange, reached


def test_a_save_killed_while_writing_the_weights_leaves_the_old_checkpoint(workspace, models):
    target, snapshots, _ = workspace
    _, new = models

    def write_half_then_wait(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 1000)
        os.write(write_end, b"writing")
        time.sleep(600)

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            import transformers.modeling_utils

            transformers.modeling_utils.safe_save_file = write_half_then_wait
            new.save_pretrained(target)
        finally:
            os._exit(0)
    os.close(write_end)
    assert _wait_for(pid, read_end) == "writing"
    _kill(pid)
    assert _snapshot(target) == snapshots["old"]
    staging = _leftovers(target)
    assert len(staging) == 1 and staging[0].startswith(".int8.saving-")
    new.save_pretrained(target)
    assert _snapshot(target) == snapshots["new"] and _leftovers(target) == []


def test_a_save_killed_by_a_signal_in_a_separate_interpreter(workspace, bart_fp32_dir):
    """The same guarantee with nothing shared: a fresh python process quantizes and saves, and is
    SIGKILLed once its new checkpoint is complete and about to be swapped in."""
    target, snapshots, _ = workspace
    script = textwrap.dedent(f"""
        import sys, time
        from transformers import AutoModelForSeq2SeqLM
        from optimum_int8 import Int8Config, quantize_model, saving
        model = quantize_model(AutoModelForSeq2SeqLM.from_pretrained({str(bart_fp32_dir)!r}),
                               Int8Config(modules_in_bf16=["model.decoder.layers.*.fc2"]))
        def wait(first, second):
            print("swapping", flush=True)
            time.sleep(600)
        saving._exchange = wait
        model.save_pretrained({str(target)!r})
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert child.stdout.readline().strip() == "swapping"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert _snapshot(target) == snapshots["old"]
    assert [name.split("-")[0] for name in _leftovers(target)] == [".int8.saving"]
    INCModelForSeq2SeqLM.from_pretrained(target)
    assert _leftovers(target) == []


@pytest.mark.parametrize("writer", ["convert", "tuner"])
def test_convert_and_the_tuner_killed_at_any_step_leave_no_checkpoint_or_a_whole_one(writer, tmp_path, bart_fp32_dir):
    """The other writers, tokenizer and model card included: killed before their rename, nothing is at the path
    and the next write cleans up; after it, the whole checkpoint is."""
    from word_tokenizer import word_tokenizer

    from optimum_int8 import convert_legacy_checkpoint
    from optimum_int8.tuning import INCQuantizer

    target = tmp_path / "writes" / "out"
    target.parent.mkdir()
    if writer == "convert":
        def write():
            convert_legacy_checkpoint(LEGACY_FIXTURES / "bart_seq2seq_dynamic", target, task="text2text-generation")
    else:
        quantizer = INCQuantizer(AutoModelForSeq2SeqLM.from_pretrained(bart_fp32_dir), tokenizer=word_tokenizer())

        def write():
            quantizer.quantize(save_directory=target, show_progress=False)
    write()
    complete = _snapshot(target)
    assert {"model.safetensors", "config.json", "README.md", "tokenizer.json"} <= set(complete)
    shutil.rmtree(target)
    steps, reached = [], {"nothing": 0, "whole": 0}
    for kill_at, message in _kill_at_every_step(write):
        steps.append(message)
        reached["whole" if target.exists() else "nothing"] += 1
        if target.exists():
            assert _snapshot(target) == complete, f"a kill at step {kill_at} ({message})"
            INCModelForSeq2SeqLM.from_pretrained(target)
        else:
            write()
            assert _snapshot(target) == complete
        assert _leftovers(target) == [], (kill_at, message)
        shutil.rmtree(target)
    assert "fsync" in steps and "safe_save_file" in steps and "rename" in steps
    assert reached["nothing"] and reached["whole"], reached


def test_leftovers_of_a_live_process_are_left_alone(workspace, models):
    target, _, _ = workspace
    live = target.parent / f".int8.saving-{saving._HOST}-{os.getpid()}-abc123"
    live.mkdir()
    other_host = target.parent / f".int8.saving-elsewhere-1-abc123"
    other_host.mkdir()
    INCModelForSeq2SeqLM.from_pretrained(target)
    assert live.is_dir() and other_host.is_dir()


def test_loads_during_saves_see_the_old_or_the_new_model(workspace, models, bart, tmp_path):
    target, _, outputs = workspace
    old, new = models
    started, stop = tmp_path / "started", tmp_path / "stop"

    def save_back_and_forth():
        for model in itertools.islice(itertools.cycle((new, old)), 500):
            if stop.exists():
                break
            model.save_pretrained(target)
            started.touch()

    pid, read_end = _gated_child(save_back_and_forth, kill_at=0)
    seen = []
    try:
        while not started.exists():
            time.sleep(0.01)
        for _ in range(6):  # every one of these loads overlaps saves of the other process
            output = run(INCModelForSeq2SeqLM.from_pretrained(target), bart.inputs())
            seen.append(_which(output, outputs, "a load during saves"))
        stop.touch()
        assert _wait_for(pid, read_end) == "done"
    finally:
        _kill(pid)
    assert len(seen) == 6 and _leftovers(target) == []


def test_two_concurrent_saves_one_wins_whole(workspace, models):
    target, snapshots, _ = workspace
    old, new = models
    children = [_gated_child(lambda model=model: [model.save_pretrained(target) for _ in range(3)], kill_at=0)
                for model in (new, old, new)]
    messages = [_wait_for(pid, read_end) for pid, read_end in children]
    for pid, _ in children:
        _kill(pid)
    assert messages == ["done"] * 3
    assert _snapshot(target) in (snapshots["old"], snapshots["new"])
    assert _leftovers(target) == []


# -- what may be replaced


def test_saving_over_the_float_source_model_is_refused(models, bart_fp32_dir):
    _, new = models
    before = _snapshot(bart_fp32_dir)
    with pytest.raises(OverwriteRefusedError, match=r"bart-fp32 is the model being quantized.*overwrite=True"):
        new.save_pretrained(bart_fp32_dir)
    with pytest.raises(OverwriteRefusedError, match=r"contains the model being quantized"):
        new.save_pretrained(bart_fp32_dir.parent)
    assert _snapshot(bart_fp32_dir) == before and _leftovers(bart_fp32_dir) == []


def test_saving_over_another_model_is_refused_unless_asked(tmp_path, models, bart):
    _, new = models
    other = tmp_path / "other-fp32"
    bart.build(seed=3).save_pretrained(other)
    before = _snapshot(other)
    with pytest.raises(OverwriteRefusedError, match=r"other-fp32 holds a float model.*--overwrite"):
        new.save_pretrained(other)
    assert _snapshot(other) == before
    new.save_pretrained(other, overwrite=True)
    assert json.loads((other / "config.json").read_text())["quantization_config"]["quant_method"] == "optimum_int8"


@pytest.mark.parametrize("holding", ["legacy", "weights-only"])
def test_saving_over_a_legacy_checkpoint_or_bare_weights_is_refused(tmp_path, models, holding):
    _, new = models
    target = tmp_path / "target"
    if holding == "legacy":
        shutil.copytree(LEGACY_FIXTURES / "bart_seq2seq_dynamic", target)
        expected = "holds a legacy INC int8 checkpoint"
    else:
        target.mkdir()
        (target / "pytorch_model.bin").write_bytes(b"weights")
        expected = r"holds weights \(pytorch_model.bin\) without a config.json"
    with pytest.raises(OverwriteRefusedError, match=expected):
        new.save_pretrained(target)


def test_a_directory_without_a_model_is_saved_into_and_its_files_kept(tmp_path, models):
    _, new = models
    target = tmp_path / "out"
    target.mkdir()
    (target / "tokenizer.json").write_text("{}")
    (target / "notes").mkdir()
    (target / "notes" / "a.txt").write_text("mine")
    new.save_pretrained(target)
    assert (target / "notes" / "a.txt").read_text() == "mine" and (target / "tokenizer.json").is_file()
    assert (target / "model.safetensors").is_file()


def test_an_earlier_models_generation_config_is_not_carried_over(tmp_path, models, bart):
    """A seq2seq checkpoint replaced by an encoder-only one must not keep the seq2seq generation config."""
    old, _ = models
    target = tmp_path / "out"
    old.save_pretrained(target)
    assert (target / "generation_config.json").is_file()
    from conftest import TINY_ARCHS

    bert = quantize_model(TINY_ARCHS["bert"].build())
    bert.save_pretrained(target)
    assert not (target / "generation_config.json").exists()


def test_saving_onto_a_file_or_into_a_read_only_directory_fails_cleanly(tmp_path, models, mounted_tmpfs):
    _, new = models
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="exists and is a file"):
        new.save_pretrained(tmp_path / "file")
    read_only = mounted_tmpfs("ro,size=1m")
    with pytest.raises(OSError, match="Read-only file system"):
        new.save_pretrained(read_only / "int8")
    assert list(read_only.iterdir()) == []


def test_a_full_disk_fails_cleanly_and_keeps_the_old_checkpoint(workspace, models, mounted_tmpfs):
    target, snapshots, _ = workspace
    old, new = models
    disk = mounted_tmpfs("size=2m")
    old.save_pretrained(disk / "int8")
    before = _snapshot(disk / "int8")
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(b"\0" * (free - 16384))  # room for the config, not for the weights
    with pytest.raises(OSError, match="No space left on device"):
        new.save_pretrained(disk / "int8")
    assert _snapshot(disk / "int8") == before and sorted(p.name for p in disk.iterdir()) == ["filler", "int8"]


def test_a_failed_save_leaves_the_previous_directory_intact(workspace, models, monkeypatch):
    target, snapshots, _ = workspace
    _, new = models

    def fail_midway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("transformers.modeling_utils.safe_save_file", fail_midway)
    with pytest.raises(OSError, match="No space left"):
        new.save_pretrained(target)
    assert _snapshot(target) == snapshots["old"] and _leftovers(target) == []
    with pytest.raises(OSError, match="No space left"):
        new.save_pretrained(target.parent / "new")
    assert not (target.parent / "new").exists() and _leftovers(target) == []


def test_saving_over_a_checkpoint_keeps_other_files_and_drops_stale_shards(tmp_path, models):
    old, _ = models
    target = tmp_path / "out"
    old.save_pretrained(target, max_shard_size="20KB")
    assert (target / "model.safetensors.index.json").is_file()
    (target / "tokenizer.json").write_text("{}")
    old.save_pretrained(target)
    assert sorted(p.name for p in target.iterdir()) == [
        "README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json"
    ]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask


def test_the_tuners_save_writes_the_tokenizer_inside_the_same_replacement(tmp_path, bart_fp32_dir, monkeypatch):
    from word_tokenizer import word_tokenizer

    from optimum_int8.tuning import INCQuantizer

    quantizer = INCQuantizer(AutoModelForSeq2SeqLM.from_pretrained(bart_fp32_dir), tokenizer=word_tokenizer())
    monkeypatch.setattr("transformers.modeling_utils.safe_save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        quantizer.quantize(save_directory=tmp_path / "int8")
    assert not (tmp_path / "int8").exists()
    monkeypatch.undo()
    quantizer.quantize(save_directory=tmp_path / "int8")
    assert {"tokenizer.json", "model.safetensors", "README.md"} <= {p.name for p in (tmp_path / "int8").iterdir()}
    with pytest.raises(OverwriteRefusedError, match="is the model being quantized"):
        quantizer.quantize(save_directory=bart_fp32_dir)


def test_a_file_linking_outside_the_checkpoint_is_not_carried_into_the_new_one(tmp_path, models):
    old, new = models
    target = tmp_path / "out"
    old.save_pretrained(target)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the Hub")
    (target / "tokenizer.json").symlink_to(secret)
    (target / "vocab.txt").write_text("w1\n")
    (target / "vocab-link.txt").symlink_to("vocab.txt")
    new.save_pretrained(target)
    assert not (target / "tokenizer.json").exists() and not (target / "tokenizer.json").is_symlink()
    assert (target / "vocab-link.txt").is_symlink() and (target / "vocab-link.txt").read_text() == "w1\n"


def test_a_filesystem_without_flock_still_loads_and_saves(workspace, models, monkeypatch):
    target, snapshots, _ = workspace
    _, new = models

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(saving.fcntl, "flock", no_locks)
    INCModelForSeq2SeqLM.from_pretrained(target)
    new.save_pretrained(target)
    assert _snapshot(target) == snapshots["new"] and _leftovers(target) == []
