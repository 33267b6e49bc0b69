import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from optimum_int8 import INCModelForSeq2SeqLM, quantize_model
from optimum_int8._memory import FilePageReleaser

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import measure_load_memory  # noqa: E402


def _resident_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of `path` (from /proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if "-" in line.split(" ", 1)[0] and len(line.split()) >= 5:
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_releaser_pages_out_only_the_checkpoint_mapping(tmp_path):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "t.safetensors"
    save_file({"w": torch.ones(4 * 1024 * 1024, dtype=torch.int8)}, path)
    tensor = load_file(path)["w"]
    anonymous = torch.ones(1024)
    assert int(tensor.sum()) == tensor.numel()  # touch every page
    if _resident_kib(path) == 0:
        pytest.skip("safetensors copied the tensor instead of mapping the file")
    releaser = FilePageReleaser([path.resolve()])
    releaser.release(tensor)
    releaser.release(anonymous)
    assert _resident_kib(path) < 1024
    assert int(tensor.sum()) == tensor.numel() and int(anonymous.sum()) == 1024


def test_loaded_model_is_unaffected_by_paging_out(tmp_path, bart, bart_fp32_dir):
    qmodel = quantize_model(AutoModelForSeq2SeqLM.from_pretrained(bart_fp32_dir))
    qmodel.save_pretrained(tmp_path / "int8")
    inputs = bart.inputs()
    with torch.no_grad():
        expected = qmodel(**inputs).logits
        assert torch.equal(INCModelForSeq2SeqLM.from_pretrained(tmp_path / "int8")(**inputs).logits, expected)


def test_memory_script_measures_both_loads_in_fresh_processes(tmp_path, capsys):
    results = measure_load_memory.main(["--preset", "tiny", "--workdir", str(tmp_path)])
    assert [row["what"] for row in results] == ["load int8 checkpoint", "quantize fp32 while loading"]
    assert all(row["peak_bytes"] > 0 and row["checkpoint_bytes"] > 0 for row in results)
    assert "| load int8 checkpoint" in capsys.readouterr().out
