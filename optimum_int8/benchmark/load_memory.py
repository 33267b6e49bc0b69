"""Load time and peak resident memory while loading a checkpoint, measured in a fresh Python process.

The child imports the libraries and the loader's module first, records its resident memory (the
baseline), resets the kernel's high-water mark to it, then loads. The peak above the baseline is what
loading cost. Linux only: it reads /proc/self/status and writes /proc/self/clear_refs.

The child runs ``child_main`` with arguments LOADER ("module:function"), DIRECTORY, THREADS (0: torch's
default) and modules to import before the baseline.
"""

import dataclasses
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path


@dataclasses.dataclass
class LoadMeasurement:
    seconds: float
    baseline_bytes: int
    peak_bytes: int  # high-water mark of the resident set while loading
    after_bytes: int  # resident set once loaded

    @property
    def peak_above_baseline(self) -> int:
        return self.peak_bytes - self.baseline_bytes


def loader_name(function) -> str:
    return f"{function.__module__}:{function.__qualname__}"


def measure_in_fresh_process(loader, directory: Path, threads: int = 0, preload=()) -> LoadMeasurement:
    """Run ``loader(directory)`` (a module-level function, or its "module:function" name) in a new process.

    ``preload`` names modules to import before the baseline (e.g. ``onnxruntime``), as a program would.
    """
    name = loader if isinstance(loader, str) else loader_name(loader)
    if not sys.platform.startswith("linux"):
        raise OSError("load-memory measurement reads /proc and runs on Linux only")
    program = f"from {__name__} import child_main; child_main()"
    command = [sys.executable, "-c", program, name, str(directory), str(threads or 0), *preload]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"loading {directory} with {name} in a fresh process failed:\n{result.stderr[-4000:]}")
    return LoadMeasurement(**json.loads(result.stdout.strip().splitlines()[-1]))


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))


def _measure(name: str, directory: str) -> LoadMeasurement:
    module_name, function_name = name.split(":")
    loader = getattr(importlib.import_module(module_name), function_name)
    baseline = _status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM (the peak) to the current resident set
    start = time.perf_counter()
    model = loader(Path(directory))
    seconds = time.perf_counter() - start
    measurement = LoadMeasurement(seconds, baseline, _status_bytes("VmHWM"), _status_bytes("VmRSS"))
    del model
    return measurement


def child_main() -> None:
    import torch

    import optimum_int8  # noqa: F401  (registers the quantizer, as a user's program would)

    name, directory, threads, *preload = sys.argv[1:]
    if int(threads):
        torch.set_num_threads(int(threads))
    for module in preload:
        importlib.import_module(module)
    print(json.dumps(dataclasses.asdict(_measure(name, directory))))
