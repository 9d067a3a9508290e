"""Atomic file writes and process memory accounting."""

import json
import os
import resource
import sys
import tempfile
from typing import Any, BinaryIO, Callable

import numpy as np

# mkstemp creates files readable only by their owner; read the umask once, at
# import, to give finished files the permissions a plain open() would.
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_file(
    path: str | os.PathLike[str], write_fn: Callable[[BinaryIO], Any]
) -> None:
  """Writes a file atomically via a callback that fills a binary file object.

  The data go to a temporary file in the destination directory (so that the
  final rename stays on one filesystem and is atomic), are flushed to disk,
  and only then replace `path`. A crash or an exception in `write_fn` leaves
  any existing file at `path` untouched and removes the temporary file.

  Args:
    path: destination file; missing parent folders are created.
    write_fn: called once with the open temporary file (binary mode).
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(
      dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.tmp'
  )
  try:
    with os.fdopen(fd, 'wb') as f:
      os.fchmod(f.fileno(), 0o666 & ~_UMASK)
      write_fn(f)
      f.flush()
      # Without fsync a power loss after the rename can leave an empty file.
      os.fsync(f.fileno())
    os.replace(tmp_path, path)
  except BaseException:
    try:
      os.unlink(tmp_path)
    except FileNotFoundError:
      pass
    raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
  """Writes `text` (UTF-8) to `path` atomically.

  Args:
    path: destination file.
    text: full contents of the file.
  """
  data = text.encode('utf-8')
  atomic_write_file(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
  """Writes `obj` as indented, key-sorted JSON to `path` atomically.

  Serialisation happens before any file is touched, so an object that is
  not JSON serialisable raises TypeError and leaves `path` as it was.

  Args:
    path: destination file.
    obj: a JSON-serialisable object.
  """
  text = json.dumps(obj, indent=2, sort_keys=True) + '\n'
  atomic_write_text(path, text)


def atomic_save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
  """Saves `array` in .npy format to exactly `path`, atomically.

  Writing through a file object also stops np.save from appending a second
  '.npy' suffix to the temporary name.

  Args:
    path: destination file, conventionally ending in '.npy'.
    array: array to save; object arrays are refused (no pickles).
  """
  array = np.asarray(array)
  atomic_write_file(path, lambda f: np.save(f, array, allow_pickle=False))


def peak_rss_mib() -> float:
  """Returns this process's peak resident set size in MiB."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  # ru_maxrss is in KiB on Linux but in bytes on macOS.
  if sys.platform == 'darwin':
    return peak / (1024.0 * 1024.0)
  return peak / 1024.0
