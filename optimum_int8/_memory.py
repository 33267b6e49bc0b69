"""Give file-backed pages back to the page cache after weights were copied out of an mmap'd checkpoint."""

import ctypes
import ctypes.util
import sys

_MADV_PAGEOUT = 21


def _file_backed_ranges(path_suffix: str):
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip().endswith(path_suffix):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                yield start, end


def release_file_pages(paths) -> None:
    """Ask the kernel to drop this process's resident pages of the given mmap'd files.

    safetensors loads zero-copy from an mmap; once the int8 tensors are packed into the kernel's format,
    the file pages are dead weight in our resident set. Only file-backed mappings of those exact files
    are touched, so no anonymous memory can be lost. A no-op off Linux or on kernels without PAGEOUT.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    for path in paths:
        for start, end in _file_backed_ranges(str(path)):
            libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_PAGEOUT)
