"""Keep loading's resident memory near the int8 size: page out checkpoint files, trim the heap.

Give file-backed pages back to the page cache after weights were copied out of an mmap'd checkpoint.

safetensors loads zero-copy from an mmap: int8 tensors are views of the file until they are packed
into the kernel's format. Packing reads (and so maps in) those pages, which would then count in our
resident set next to the packed copy. Paging them out right after each module is packed keeps peak
memory near the int8 size. Only ranges inside file-backed mappings of the checkpoint files are
touched, so anonymous memory is never affected; paged-out file pages are simply re-read if needed.
"""

import ctypes
import ctypes.util
import mmap
import sys

import torch

_MADV_PAGEOUT = 21


class FilePageReleaser:
    """Pages out the parts of mmap'd checkpoint files that given tensors occupy."""

    def __init__(self, paths):
        self._ranges = []
        self._libc = None
        if not sys.platform.startswith("linux") or not paths:
            return
        suffixes = tuple(str(path) for path in paths)
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].strip().endswith(suffixes):
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    self._ranges.append((start, end))
        if self._ranges:
            self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

    def release(self, tensor: torch.Tensor | None) -> None:
        if self._libc is None or tensor is None or tensor.device.type != "cpu":
            return
        begin = tensor.data_ptr()
        end = begin + tensor.untyped_storage().nbytes()
        for range_start, range_end in self._ranges:
            start = max(begin, range_start) // mmap.PAGESIZE * mmap.PAGESIZE
            stop = min(end, range_end)
            if start < stop:
                self._libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(stop - start), _MADV_PAGEOUT)


def _load_libc():
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _load_libc()


def trim_heap() -> None:
    """Return freed heap memory to the OS (glibc).

    Quantizing while loading frees one fp32 temporary after another. glibc raises its mmap threshold
    each time a large mmapped block is freed, so later temporaries come from the heap and stay
    resident after they are freed: on a BART-large-shaped model the load peaked near 2x the fp32 size
    instead of under the fp32 size. Trimming after each module hands those pages back.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
