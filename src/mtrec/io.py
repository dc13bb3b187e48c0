"""File access shared by every module: atomic writes, output-path checks, strict JSON, and reading a
JSON/YAML mapping with clear errors.

Atomic writes go to a temporary file beside the target, fsync, then rename over it: a reader (or a
process killed mid-write) sees either the old file or the new one, never half of one. Temporaries are
named ``.<target>.<pid>-<host>.<random>.tmp``, so the ones a killed process left behind can be told from
anything else: :func:`remove_stale_temporaries` deletes only those whose process is gone.

Every JSON file mtrec writes is strict JSON (:func:`json_text`): a NaN or infinite float is written as
``null``, never as the ``NaN``/``Infinity`` that other parsers refuse.
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mtrec.errors import UserError


class PathError(UserError, ValueError):
    """A path that cannot be read or written as asked; the message names it."""


# ---- reading ---------------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-3`` as a number as YAML 1.2 does (YAML 1.1 needs ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


YAML_NODES = 1_000_000  # values a YAML document may hold once its aliases are expanded
CONFIG_BYTES = 16 << 20  # the largest file read_mapping reads unless told otherwise


def _expanded_size(root: yaml.Node) -> int:
    """The values ``root`` holds with every alias expanded (shared nodes counted at each use), computed
    without expanding; ValueError where it passes :data:`YAML_NODES` or an alias refers to itself."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                    else list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if done:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[id(node)] > YAML_NODES:
                mark = node.start_mark
                raise ValueError(f"line {mark.line + 1}, column {mark.column + 1}: its aliases expand to more "
                                 f"than {YAML_NODES:,} values (an alias bomb?)")
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            raise ValueError(f"line {node.start_mark.line + 1}: an alias refers to the value that holds it")
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def load_yaml(text: str) -> Any:
    """A YAML document (:class:`_Loader`); ValueError where its aliases expand beyond :data:`YAML_NODES`
    values (a few hundred bytes of nested aliases can stand for billions)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON (use null for a missing number)")


def _read_text(path: Path, what: str, error: type[Exception], max_bytes: int | None) -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes`` bytes; ``error`` naming it otherwise."""
    try:
        info = os.stat(path)  # before opening: opening a FIFO would wait for a writer
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {path} is not a regular file (a device, FIFO or socket)")
        if max_bytes is not None and info.st_size > max_bytes:
            raise error(f"{what} {path} is {info.st_size:,} bytes, more than a {what} may be ({max_bytes:,})")
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1 if max_bytes is not None else -1)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise error(f"{what} expected, found a directory: {path}") from None
    except OSError as exc:
        raise error(f"{what} {path}: cannot read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}): is it a {what}?") from None


def read_mapping(path: str | Path, what: str, error: type[Exception] = ValueError,
                 max_bytes: int | None = CONFIG_BYTES) -> dict[str, Any]:
    """The mapping at the top of a ``.json`` file (read as strict JSON) or any other file (read as YAML).

    Raises ``error`` with a message naming the file and the problem: not found (``what`` names the kind
    of file, e.g. "dataset config"), not a regular file (a FIFO, a device), larger than ``max_bytes``,
    not readable, not valid JSON/YAML (with the parser's line and column; aliases that expand too far),
    or not a mapping at the top level.
    """
    path = Path(path)
    text = _read_text(path, what, error, max_bytes)
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        data = json.loads(text, parse_constant=_refuse_constant) if kind == "JSON" else load_yaml(text)
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else " ".join(str(exc).split())
        raise error(f"{path}: not valid {kind}: {reason}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


# ---- strict JSON -----------------------------------------------------------------------------------------
def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf; NumPy floats too) replaced by None, tuples as lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "dtype") and hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # a NumPy scalar
        return json_safe(obj.item())
    return obj


def json_text(obj: Any, indent: int | None = None, default: Callable[[Any], Any] | None = None,
              ensure_ascii: bool = True) -> str:
    """Strict JSON for ``obj`` (see :func:`json_safe`); ``default`` converts objects JSON does not know."""
    if default is not None:
        obj = json.loads(json.dumps(obj, default=default))
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False, ensure_ascii=ensure_ascii)


# ---- output paths ----------------------------------------------------------------------------------------
def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_parent(path: Path, what: str) -> None:
    existing = _first_existing(path.parent)
    if not existing.is_dir():
        raise PathError(f"{what} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PathError(f"{what} {path}: cannot write in {existing} (permission denied)")


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """``path`` as an absolute path, if a file can be written there; PathError naming it if not (a
    directory, a parent that is a file, a directory without write permission)."""
    path = Path(os.path.abspath(path))
    if path.is_dir():
        raise PathError(f"{what} {path} is a directory; give a file name")
    _check_regular(path, what)
    if path.exists() and not os.access(path, os.W_OK):
        raise PathError(f"{what} {path}: not writable (permission denied)")
    _check_parent(path, what)
    return path


def _check_regular(path: Path, what: str) -> None:
    """PathError if ``path`` exists and is not a regular file (a FIFO, a device node, a socket): writing
    there would replace it with a file."""
    if path.exists() and not path.is_file():
        raise PathError(f"{what} {path} is not a regular file (a device, FIFO or socket); give a file name")


def check_output_dir(path: str | Path, what: str = "output directory") -> Path:
    """``path`` as an absolute path, if a directory can be created or written there; PathError if not."""
    path = Path(os.path.abspath(path))
    if path.exists() and not path.is_dir():
        raise PathError(f"{what} {path} is {'a file' if path.is_file() else 'a device, FIFO or socket'}, not a "
                        f"directory")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise PathError(f"{what} {path}: not writable (permission denied)")
        return path
    _check_parent(path, what)
    return path


def foreign_files(directory: Path, ours: re.Pattern[str]) -> list[str]:
    """Paths (relative, with ``/``) of the files under ``directory`` that ``ours`` does not match, besides
    temporaries of mtrec's atomic writes: what writing over the directory must never delete."""
    found = []
    for path in sorted(Path(directory).rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if path.is_dir() and not path.is_symlink():
            continue
        if not ours.match(relative) and not any(_TEMPORARY.match(part) for part in Path(relative).parts):
            found.append(relative)
    return found


def check_own_dir(directory: Path, ours: re.Pattern[str], what: str) -> None:
    """PathError if ``directory`` holds a file that is not one of ours (``what`` names what it should be)."""
    foreign = foreign_files(directory, ours) if directory.is_dir() else []
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise PathError(f"output directory {directory} is not empty and not {what} (it holds {shown}): "
                        f"refusing to write over it; choose a new or empty directory")


def is_inside(path: str | Path, directory: str | Path) -> bool:
    """Whether ``path`` is ``directory`` or lies under it (symbolic links resolved)."""
    p, d = Path(path).resolve(), Path(directory).resolve()
    return p == d or d in p.parents


def _write_error(target: Path, exc: OSError) -> PathError:
    """An OS error while writing ``target`` (or its temporary) as one line naming ``target``."""
    other = exc.filename and Path(os.fsdecode(exc.filename)).name not in (target.name, "") \
        and not Path(os.fsdecode(exc.filename)).name.startswith(f".{target.name}.")
    return PathError(f"cannot write {target}: {exc.strerror or exc}" + (f" ({exc.filename})" if other else ""))


# ---- temporaries -----------------------------------------------------------------------------------------
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def temporary_prefix(name: str, pid: int | None = None) -> str:
    """How the temporaries of target ``name`` written by process ``pid`` (default: this one) begin."""
    return f".{name}.{os.getpid() if pid is None else pid}-{_HOST}."


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<host>[A-Za-z0-9-]+)\.[A-Za-z0-9_]+\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(directory: Path, name: str | None = None) -> list[Path]:
    """Delete the temporaries (of target ``name``, or of any target) that an mtrec process on this machine
    left in ``directory`` when it was killed; anything else is left alone. Returns what was deleted."""
    removed: list[Path] = []
    pattern = f".{name}.*.tmp" if name is not None else ".*.tmp"
    for path in Path(directory).glob(pattern):
        match = _TEMPORARY.match(path.name)
        if not match or match["host"] != _HOST or _alive(int(match["pid"])):
            continue
        if name is not None and match["name"] != name:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


# ---- atomic writes ---------------------------------------------------------------------------------------
def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then move the finished file to ``path`` atomically. An OS error (no space,
    no permission, a parent that is a file) is a PathError naming ``path``; the old file is kept."""
    path = Path(os.path.abspath(path))
    if not path.is_dir():
        _check_regular(path, "output file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent, path.name)
        fd, tmp_name = tempfile.mkstemp(prefix=temporary_prefix(path.name), suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _discard(_: object) -> None:
    """Drop a writer's return value (byte counts)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: _discard(tmp.write_bytes(data)))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: _discard(tmp.write_text(text)))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def atomic_replace_dir(target: Path, build: Callable[[Path], None]) -> None:
    """Build a directory in a temporary sibling, then put it at ``target`` (replacing any old one).

    Where the system allows, old and new are swapped in one atomic step, so ``target`` is never missing;
    elsewhere the old directory is first moved aside. The caller decides whether ``target`` may be
    replaced at all (see :func:`mtrec.data.dataset.check_replaceable`)."""
    target = Path(os.path.abspath(target))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target.parent, target.name)
        tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(target.name), suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise _write_error(target, exc) from exc
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        build(tmp)
        if target.exists():
            if not _exchange(tmp, target):
                old = Path(tempfile.mkdtemp(prefix=temporary_prefix(target.name), suffix=".tmp",
                                            dir=target.parent))
                os.replace(target, old)
                try:
                    os.replace(tmp, target)
                except OSError:
                    os.replace(old, target)  # put the old directory back
                    raise
                tmp = old
            shutil.rmtree(tmp, ignore_errors=True)  # the old directory
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(target, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
