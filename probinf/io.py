"""Save and reload fitted models (families, flows, circuits, transformers, training states) exactly.

`save` writes one file (any suffix) and `load` reads it back: every array bit for bit with
its dtype (x64 or not, weak types and typed PRNG keys included), every container, every
hyper-parameter and the classes themselves. No pickle is involved, and loading never runs
code from the file.

File layout::

    offset    size  content
    0         12    magic b"\\x89PROBINF\\r\\n\\x1a\\n"
    12        4     format version, uint32 little-endian (`FORMAT_VERSION`)
    16        8     header length H, uint64 little-endian
    24        H     header: UTF-8 JSON
    24+H      D     array data: each array's raw bytes in C order, at the offset the
                    header gives (64-byte aligned)
    24+H+D    32    SHA-256 of every byte before it

The header is ``{"format": "probinf.save", "version": 1, "class": "module:qualname",
"created_by": {...}, "tree": NODE, "arrays": [{"dtype", "shape", "offset", "nbytes",
"weak_type"}, ...], "data_bytes": D}``. ``tree`` describes the object: ``None``, booleans,
integers, finite floats and strings stand for themselves; anything else is a JSON object
whose ``"$"`` says what it is:

- ``jax`` / ``numpy`` / ``numpy_scalar`` / ``key``: an array (``"array"``: its index in
  ``arrays``); ``key`` is a typed PRNG key array stored as its key data plus ``"impl"``.
- ``list``, ``tuple``, ``set``, ``frozenset`` (``"items"``), ``dict`` (``"items"``: key, value
  pairs, in order), ``float`` (non-finite, as ``float.hex``), ``complex``, ``bytes``, ``dtype``.
- ``object``: an instance of ``"class"`` with its attributes ``"state"`` (an
  ``equinox.Module``, a dataclass or a plain class, as pickle would see it: ``vars(obj)``
  and its ``__slots__``); ``namedtuple`` (``"class"``, ``"items"``); ``enum`` (``"class"``,
  ``"name"``).
- ``class`` / ``function``: a reference ``"module:qualname"``. Functions (activations, log
  densities) are stored by reference only: a lambda, a nested function or a closure cannot
  be saved (`save` raises ``TypeError`` naming where it is, and writes nothing).

Loading rebuilds instances the way pickle and ``equinox``'s own unflattening do
(``object.__new__`` and attribute assignment, never ``__init__``), but only for classes
and functions defined in the trusted packages ``probinf``, ``flows``, ``circuits``,
``amortized``, ``equinox`` and ``optax``, plus the activations of ``jax.nn``, a few
element-wise ``jax.numpy`` functions and the Python, numpy and jax scalar types. A file
naming anything else (for example the log density of a target from a user's own module)
loads only when the caller names that module in ``trusted_modules``. Every file that
cannot be loaded (empty, truncated, corrupt, not written by `save`, from a newer format,
naming untrusted code, or holding 64-bit arrays while ``jax_enable_x64`` is off) raises
`SaveFileError` naming the file and the problem. An array held in several places is stored
once and shared again on loading; other shared objects come back as copies.
Files written by the earlier, pickle-based ``save`` are recognised and read only by
the explicit `load_legacy_pickle`.
"""

from __future__ import annotations

import base64
import enum
import functools
import hashlib
import importlib
import json
import math
import os
import re
import secrets
import struct
import sys
import types
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from probinf._version import __version__

__all__ = ["save", "load", "load_legacy_pickle", "SaveFileError", "FORMAT_VERSION", "TRUSTED_PACKAGES"]

FORMAT_VERSION = 1
#: Packages whose classes and functions `load` rebuilds without being told to trust them.
TRUSTED_PACKAGES = ("probinf", "flows", "circuits", "amortized", "equinox", "optax")
# Trusted, but never a reference target: the legacy loader is the one thing that unpickles.
_UNTRUSTED_MODULES = ("probinf.io",)
# Element-wise jax.numpy functions used as activations (all of jax.nn is allowed too).
_JNP_ACTIVATIONS = (
    "abs", "arctan", "arcsinh", "cbrt", "cos", "cosh", "exp", "exp2", "expm1", "log", "log1p",
    "negative", "reciprocal", "sign", "sin", "sinh", "sqrt", "square", "tan", "tanh",
)

_MAGIC = b"\x89PROBINF\r\n\x1a\n"
_PREFIX = struct.Struct("<12sIQ")  # magic, format version, header length
_DIGEST_BYTES = 32
_ALIGN = 64
_FORMAT_NAME = "probinf.save"
_LEGACY_FORMAT = "probinf-pytree-v1"
_PLAIN_DTYPE_KINDS = "biufcmMSU"  # numpy kinds with a fixed byte layout and no Python objects
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z")


class SaveFileError(ValueError):
    """A file `load` cannot read; the message names the file and what is wrong with it."""


class _Unsavable(Exception):
    def __init__(self, where: str, culprit: Any, reason: str, hint: str = ""):
        super().__init__(where, culprit, reason, hint)
        self.where, self.culprit, self.reason, self.hint = where, culprit, reason, hint


_FUNCTION_HINT = (
    " Functions are saved by reference (module and name), so a lambda, a nested function or a "
    "closure (e.g. the log density of from_logdensity(lambda ...) or of from_numpyro) cannot "
    "be saved: define it with `def` at the top level of a module, or save the fitted parts "
    "(the family, `target.params`) and rebuild the target when loading."
)


# --------------------------------------------------------------------------- saving


def save(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` to ``path`` so that `load` returns an identical copy (see the module docstring).

    ``obj`` may be any nesting of ``equinox`` modules, dataclasses, NamedTuples (optax
    states), plain objects, dicts, lists, tuples, sets, Python scalars, strings, jax and
    numpy arrays (any dtype without Python objects, typed PRNG keys included) and
    module-level functions and classes. An array held in several places is stored once.
    The file is written to a temporary name beside ``path`` and renamed, so an existing
    file (a checkpoint) is replaced atomically.

    Raises:
        TypeError: if part of ``obj`` cannot be stored; the message names its place (e.g.
            ``obj['model'].fn``) and says why, typically a lambda, a nested function or a
            closure. Nothing is written then.
    """
    writer = _Writer()
    try:
        tree = writer.encode(obj, "obj")
    except _Unsavable as err:
        culprit = _short_repr(err.culprit)
        raise TypeError(f"`obj` cannot be saved: {err.where} is {culprit}, {err.reason}.{err.hint}") from None
    header = {
        "format": _FORMAT_NAME,
        "version": FORMAT_VERSION,
        "class": _describe_class(type(obj)),
        "created_by": {"probinf": __version__, "jax": jax.__version__, "numpy": np.__version__},
        "tree": tree,
        "arrays": writer.entries,
        "data_bytes": writer.size,
    }
    header_bytes = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    chunks = [_PREFIX.pack(_MAGIC, FORMAT_VERSION, len(header_bytes)), header_bytes, *writer.chunks]
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    # realpath: a symlinked path is written through, as open() would.
    _write_atomically(os.path.realpath(os.fspath(path)), [*chunks, digest.digest()])


def _write_atomically(path: str, chunks: list[bytes]) -> None:
    directory, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open with 0o666 so the umask applies as for a plain open().
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            for chunk in chunks:
                file.write(chunk)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


class _Writer:
    """Turns an object into a JSON tree plus a list of array byte chunks."""

    def __init__(self) -> None:
        self.entries: list[dict] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.array_index: dict[int, int] = {}  # id(array) -> index; the object keeps them alive
        self.open: set[int] = set()  # ids of containers being encoded, to report cycles

    def encode(self, x: Any, where: str) -> Any:
        kind = type(x)
        if x is None or kind in (bool, int, str):
            return x
        if kind is float:
            return x if math.isfinite(x) else {"$": "float", "hex": x.hex()}
        if isinstance(x, jax.core.Tracer):  # x itself: its leaves are encoded one by one below
            raise _Unsavable(where, x, "a traced value (call save outside jit, grad and vmap)")
        if isinstance(x, jax.Array):
            if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
                data = self.add_array(x, jax.random.key_data(x), where)
                return {"$": "key", "impl": str(jax.random.key_impl(x)), "array": data}
            return {"$": "jax", "array": self.add_array(x, x, where)}
        if kind is np.ndarray:
            return {"$": "numpy", "array": self.add_array(x, x, where)}
        if isinstance(x, np.generic):
            return {"$": "numpy_scalar", "array": self.add_array(x, np.asarray(x), where)}
        if kind is complex:
            return {"$": "complex", "real": x.real.hex(), "imag": x.imag.hex()}
        if kind is bytes:
            return {"$": "bytes", "base64": base64.b64encode(x).decode()}
        if isinstance(x, np.dtype):
            return {"$": "dtype", "dtype": _dtype_to_str(x, where)}
        if isinstance(x, type):
            return {"$": "class", "ref": _class_ref(x, where)}
        if isinstance(x, enum.Enum):
            return {"$": "enum", "class": _class_ref(kind, where), "name": x.name}
        reference = _function_ref(x, where)
        if reference is not None:
            return {"$": "function", "ref": reference}
        if id(x) in self.open:
            raise _Unsavable(where, x, "which contains itself (a cycle), and a saved object must be a tree")
        self.open.add(id(x))
        try:
            return self.encode_container(x, kind, where)
        finally:
            self.open.discard(id(x))

    def encode_container(self, x: Any, kind: type, where: str) -> dict:
        if kind in (list, tuple, set, frozenset):
            items = [self.encode(item, f"{where}[{i}]") for i, item in enumerate(x)]
            return {"$": kind.__name__, "items": items}
        if kind is dict:
            items = [[self.encode(k, f"{where} (key {k!r})"), self.encode(v, f"{where}[{k!r}]")]
                     for k, v in x.items()]
            return {"$": "dict", "items": items}
        if isinstance(x, tuple) and isinstance(getattr(kind, "_fields", None), tuple):
            items = [self.encode(item, f"{where}.{name}") for name, item in zip(kind._fields, x, strict=True)]
            return {"$": "namedtuple", "class": _class_ref(kind, where), "items": items}
        problem = _not_rebuildable(kind)
        if problem:
            raise _Unsavable(where, x, f"an instance of {kind.__module__}.{kind.__qualname__}, which {problem}")
        state = {name: self.encode(value, f"{where}.{name}") for name, value in _instance_state(x).items()}
        return {"$": "object", "class": _class_ref(kind, where), "state": state}

    def add_array(self, owner: Any, array: Any, where: str) -> int:
        index = self.array_index.get(id(owner))
        if index is not None:
            return index
        weak_type = bool(getattr(array, "weak_type", False))
        array = np.asarray(array)
        data = array.tobytes(order="C")
        offset = -(-self.size // _ALIGN) * _ALIGN
        if offset > self.size:
            self.chunks.append(bytes(offset - self.size))
        self.chunks.append(data)
        self.size = offset + len(data)
        entry = {"dtype": _dtype_to_str(array.dtype, where), "shape": list(array.shape),
                 "offset": offset, "nbytes": len(data)}
        if weak_type:
            entry["weak_type"] = True
        self.entries.append(entry)
        self.array_index[id(owner)] = index = len(self.entries) - 1
        return index


def _instance_state(x: Any) -> dict[str, Any]:
    """What pickle's default protocol stores: ``vars(x)`` plus the filled ``__slots__``."""
    state = dict(vars(x)) if hasattr(x, "__dict__") else {}
    for name in _slot_names(type(x)):
        if name not in state and hasattr(x, name):
            state[name] = getattr(x, name)
    return state


def _slot_names(cls: type) -> list[str]:
    names = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for name in [slots] if isinstance(slots, str) else slots:
            if name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__") and not name.endswith("__"):
                name = f"_{klass.__name__.lstrip('_')}{name}"  # private names are mangled
            names.append(name)
    return names


def _not_rebuildable(cls: type) -> str:
    """Why an instance of ``cls`` cannot be rebuilt from its attributes ('' if it can)."""
    if not (cls.__new__ is object.__new__ or issubclass(cls, eqx.Module)):
        return "is built by its own __new__ (not a plain class, dataclass or equinox Module)"
    if (cls.__reduce_ex__ is not object.__reduce_ex__ or cls.__reduce__ is not object.__reduce__
            or cls.__getstate__ is not object.__getstate__ or hasattr(cls, "__setstate__")
            or hasattr(cls, "__getnewargs__") or hasattr(cls, "__getnewargs_ex__")):
        return "defines its own pickling (__reduce__, __getstate__ or __setstate__), so its attributes are not its state"
    return ""


def _short_repr(x: Any, limit: int = 300) -> str:
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_class(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve_name(module_name: str, qualname: str) -> Any:
    """``module.qualname`` from an already imported module, or None."""
    target: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        target = getattr(target, part, None)
        if target is None:
            return None
    return target


def _class_ref(cls: type, where: str) -> str:
    for reference, scalar_type in _scalar_types().items():
        if scalar_type is cls:
            return reference
    if _resolve_name(cls.__module__, cls.__qualname__) is not cls:
        raise _Unsavable(where, cls, "a class that cannot be found by its module and name "
                         "(defined inside a function?), and classes are saved by reference")
    return _describe_class(cls)


@functools.cache
def _scalar_types() -> dict[str, type]:
    """Scalar types a file may name without trust (a ``dtype=float`` hyper-parameter)."""
    names = [f"{kind}{bits}" for kind, sizes in (("int", (8, 16, 32, 64)), ("uint", (8, 16, 32, 64)),
                                                  ("float", (16, 32, 64)), ("complex", (64, 128)))
             for bits in sizes]
    table = {f"builtins:{t.__name__}": t for t in (bool, int, float, complex, str, bytes)}
    for module_name in ("numpy", "jax.numpy"):
        module = importlib.import_module(module_name)
        for name in [*names, "bool_", "bfloat16"]:
            if isinstance(getattr(module, name, None), type):
                table[f"{module_name}:{name}"] = getattr(module, name)
    return table


@functools.cache
def _public_jax_functions() -> dict[str, Any]:
    """``{"jax.nn:relu": jax.nn.relu, ...}``: the jax functions a file may name."""
    table = {}
    for module_name, names in (("jax.nn", dir(jax.nn)), ("jax.numpy", _JNP_ACTIVATIONS)):
        module = importlib.import_module(module_name)
        for name in names:
            value = getattr(module, name, None)
            if (not name.startswith("_") and callable(value)
                    and not isinstance(value, (type, types.ModuleType))):
                table.setdefault(f"{module_name}:{name}", value)
    return table


@functools.cache
def _public_jax_names() -> dict[int, str]:
    names: dict[int, str] = {}
    for reference, value in _public_jax_functions().items():
        names.setdefault(id(value), reference)  # jax.nn first: jax.nn.tanh is jnp.tanh
    return names


def _function_ref(x: Any, where: str) -> str | None:
    """The ``module:name`` of a function, None for a non-function; raises for an unnamed one."""
    reference = _public_jax_names().get(id(x))
    if reference is not None:
        return reference
    is_function = isinstance(x, (types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                                 functools.partial))
    module_name, qualname = getattr(x, "__module__", None), getattr(x, "__qualname__", None)
    if not (callable(x) and isinstance(module_name, str) and isinstance(qualname, str)):
        if is_function:
            raise _Unsavable(where, x, "a function without a module-level name", _FUNCTION_HINT)
        return None
    if isinstance(x, types.MethodType):
        raise _Unsavable(where, x, "a bound method, which has no module-level name", _FUNCTION_HINT)
    if "<locals>" not in qualname:
        if _resolve_name(module_name, qualname) is x:
            return f"{module_name}:{qualname}"
        # A module-level lambda bound to a name, like equinox's `_identity = lambda x: x`.
        module = sys.modules.get(module_name)
        for name, value in (vars(module).items() if module is not None else ()):
            if value is x and not name.startswith("__"):
                return f"{module_name}:{name}"
    if is_function or not isinstance(x, eqx.Module):
        raise _Unsavable(where, x, "a function that cannot be found by its module and name", _FUNCTION_HINT)
    return None  # an equinox Module wrapping a function: saved as an object


def _dtype_to_str(dtype: np.dtype, where: str) -> str:
    if dtype.kind in _PLAIN_DTYPE_KINDS:
        return dtype.str
    if _ml_dtypes().get(dtype.name) == dtype:
        return dtype.name
    raise _Unsavable(where, dtype, "an array dtype with no fixed byte layout (object or structured)")


@functools.cache
def _ml_dtypes() -> dict[str, np.dtype]:
    """bfloat16, float8_*, int4, ...: jax's extra dtypes, which numpy knows only by object."""
    import ml_dtypes  # jax's own dependency, where these dtypes live

    found = {}
    for name in dir(ml_dtypes):
        scalar_type = getattr(ml_dtypes, name)
        if isinstance(scalar_type, type) and issubclass(scalar_type, np.generic):
            dtype = np.dtype(scalar_type)
            if dtype.name == name:
                found[name] = dtype
    return found


# --------------------------------------------------------------------------- loading


def load(path: str | os.PathLike, *, trusted_modules: tuple[str, ...] | list[str] = ()) -> Any:
    """Read back an object written by `save`, identical to the one saved.

    Args:
        path: the file.
        trusted_modules: modules (or packages) besides `TRUSTED_PACKAGES` whose classes and
            functions the file may name, e.g. ``("my_project.models",)`` for a target whose
            log density is defined there. Importing them runs their code, so name only
            modules you trust.

    Raises:
        SaveFileError: (a ``ValueError``) if the file is empty, truncated, corrupt, not
            written by `save`, written by a newer format or by the earlier pickle-based
            ``save`` (see `load_legacy_pickle`), names a class or function outside
            the trusted modules, or holds 64-bit arrays while ``jax_enable_x64`` is off.
    """
    name = os.fspath(path)
    if isinstance(trusted_modules, str) or not all(isinstance(m, str) for m in trusted_modules):
        raise TypeError(f"`trusted_modules` must be a tuple of module names, got {trusted_modules!r}")
    with open(name, "rb") as file:
        blob = file.read()
    header = _parse(blob, name)
    reader = _Reader(header, memoryview(blob)[_PREFIX.size + header["_header_bytes"]:], name,
                     TRUSTED_PACKAGES + tuple(trusted_modules))
    try:
        return reader.decode(header["tree"], "obj")
    except SaveFileError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as err:
        raise reader.error(f"its header does not describe a valid object ({type(err).__name__}: {err})") from err


def _file_error(name: str, what: str) -> SaveFileError:
    return SaveFileError(f"`path` {name!r} cannot be loaded: {what}")


def _parse(blob: bytes, name: str) -> dict:
    """Check the frame of a file (magic, version, lengths, checksum) and return its header."""
    if not blob:
        raise _file_error(name, "the file is empty (0 bytes)")
    if blob[0] == 0x80 and len(blob) > 1 and 2 <= blob[1] <= 5:
        raise _file_error(name, (
            "it is a pickle, as written by the earlier, pickle-based probinf.save, and "
            "probinf no longer unpickles files by default because unpickling runs code. Convert it "
            "once: `obj = probinf.io.load_legacy_pickle(path)` (this runs code from the file: only "
            "for files you trust), then `probinf.save(path, obj)`."))
    if not blob.startswith(_MAGIC):
        if _MAGIC.startswith(blob):
            raise _file_error(name, f"it is truncated ({len(blob)} bytes, inside the file signature)")
        looks_like = "; it looks like a text file" if _looks_like_text(blob[:256]) else ""
        raise _file_error(name, f"it is not a file written by probinf.save (it starts with "
                                        f"{blob[:12]!r}, expected {_MAGIC!r}){looks_like}")
    if len(blob) < _PREFIX.size:
        raise _file_error(name, f"it is truncated ({len(blob)} bytes, inside the file prefix)")
    _, version, header_length = _PREFIX.unpack_from(blob)
    if version > FORMAT_VERSION:
        raise _file_error(name, f"it was written in format version {version} by a newer probinf; "
                                        f"this probinf ({__version__}) reads versions up to "
                                        f"{FORMAT_VERSION}: upgrade probinf to load it")
    if version < 1:
        raise _file_error(name, f"it is corrupt (format version {version})")
    header_end = _PREFIX.size + header_length
    if header_end + _DIGEST_BYTES > len(blob):
        raise _file_error(name, f"it is truncated or corrupt: its header should be {header_length} "
                                        f"bytes but the file has {len(blob)} bytes in all")
    try:
        header = json.loads(bytes(blob[_PREFIX.size:header_end]).decode("utf-8"),
                            parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise _file_error(name, f"it is corrupt: its header is not valid JSON ({err})") from err
    if not (isinstance(header, dict) and header.get("format") == _FORMAT_NAME
            and header.get("version") == version and "tree" in header
            and isinstance(header.get("arrays"), list) and type(header.get("data_bytes")) is int
            and header["data_bytes"] >= 0):
        raise _file_error(name, "it is corrupt: its header lacks the fields probinf.save writes")
    expected = header_end + header["data_bytes"] + _DIGEST_BYTES
    if len(blob) < expected:
        raise _file_error(name, f"it is truncated: {len(blob)} bytes, its header says {expected}")
    if len(blob) > expected:
        raise _file_error(name, f"it is corrupt: {len(blob) - expected} unexpected bytes after "
                                        f"its end ({len(blob)} bytes, its header says {expected})")
    if hashlib.sha256(memoryview(blob)[:-_DIGEST_BYTES]).digest() != blob[-_DIGEST_BYTES:]:
        raise _file_error(name, "it is corrupt: its SHA-256 checksum does not match its contents")
    header["_header_bytes"] = header_length
    return header


def _reject_constant(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


class _Reader:
    """Rebuilds an object from a checked header and its array data."""

    def __init__(self, header: dict, data: memoryview, name: str, trusted: tuple[str, ...]):
        self.entries, self.data, self.name, self.trusted = header["arrays"], data, name, trusted
        self.data = data[: header["data_bytes"]]
        self.cache: dict[tuple[int, str], Any] = {}  # (array index, kind) -> value: shared arrays stay shared

    def error(self, what: str) -> SaveFileError:
        return _file_error(self.name, what)

    def decode(self, node: Any, where: str) -> Any:
        if node is None or type(node) in (bool, int, float, str):
            return node
        if not (type(node) is dict and isinstance(node.get("$"), str)):
            raise self.error(f"its header is corrupt at {where} (unexpected {_short_repr(node, 80)})")
        kind = node["$"]
        if kind in ("jax", "numpy", "numpy_scalar", "key"):
            return self.array_value(node, kind, where)
        if kind == "float":
            return float.fromhex(node["hex"])
        if kind == "complex":
            return complex(float.fromhex(node["real"]), float.fromhex(node["imag"]))
        if kind == "bytes":
            return base64.b64decode(node["base64"], validate=True)
        if kind == "dtype":
            return self.dtype(node["dtype"], where)
        if kind in ("list", "tuple", "set", "frozenset"):
            items = [self.decode(item, f"{where}[{i}]") for i, item in enumerate(node["items"])]
            return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[kind](items)
        if kind == "dict":
            result = {}
            for key_node, value_node in node["items"]:
                key = self.decode(key_node, f"{where} (a key)")
                result[key] = self.decode(value_node, f"{where}[{key!r}]")
            return result
        if kind == "class":
            return self.resolve(node["ref"], where, want_class=True)
        if kind == "function":
            return self.resolve(node["ref"], where, want_class=False)
        if kind == "enum":
            cls = self.resolve(node["class"], where, want_class=True)
            if not issubclass(cls, enum.Enum):
                raise self.error(f"its header is corrupt at {where}: {node['class']!r} is not an Enum")
            return cls[node["name"]]
        if kind == "namedtuple":
            cls = self.resolve(node["class"], where, want_class=True)
            fields = getattr(cls, "_fields", None)
            if not (issubclass(cls, tuple) and isinstance(fields, tuple) and len(fields) == len(node["items"])):
                raise self.error(f"its header is corrupt at {where}: {node['class']!r} is not a NamedTuple "
                                 f"with {len(node['items'])} fields (was the class changed?)")
            items = [self.decode(item, f"{where}.{field}") for field, item in zip(fields, node["items"], strict=True)]
            return tuple.__new__(cls, items)
        if kind == "object":
            return self.instance(node, where)
        raise self.error(f"its header is corrupt at {where} (unknown kind {kind!r})")

    def instance(self, node: dict, where: str) -> Any:
        cls = self.resolve(node["class"], where, want_class=True)
        problem = _not_rebuildable(cls)
        if problem:
            raise self.error(f"{where} names {node['class']!r}, which {problem}")
        state = node["state"]
        if type(state) is not dict:
            raise self.error(f"its header is corrupt at {where} (state is not a mapping)")
        instance = object.__new__(cls)
        slots = set(_slot_names(cls))
        for attribute, value_node in state.items():
            value = self.decode(value_node, f"{where}.{attribute}")
            if attribute in slots:
                object.__setattr__(instance, attribute, value)
            else:  # as pickle does: straight into __dict__, bypassing __setattr__ and descriptors
                vars(instance)[attribute] = value
        return instance

    def resolve(self, reference: Any, where: str, *, want_class: bool) -> Any:
        what = "class" if want_class else "function"
        if not isinstance(reference, str) or reference.count(":") != 1:
            raise self.error(f"its header is corrupt at {where} (a {what} reference {reference!r})")
        public = (_scalar_types() if want_class else _public_jax_functions()).get(reference)
        if public is not None:
            return public
        module_name, qualname = reference.split(":")
        if not (_MODULE_NAME.match(module_name) and all(p.isidentifier() for p in qualname.split("."))):
            raise self.error(f"its header is corrupt at {where} (a {what} reference {reference!r})")
        if not self.is_trusted(module_name):
            raise self.error(
                f"{where} is the {what} {reference!r}, from a module load does not trust (it trusts "
                f"{', '.join(self.trusted)} and the activations of jax.nn). If you trust this file "
                f"and that module, pass trusted_modules=({module_name!r},) (importing it runs its code)")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise self.error(f"{where} is the {what} {reference!r}, but its module cannot be imported "
                             f"({err}); was it renamed or moved?") from err
        target: Any = module
        for part in qualname.split("."):
            target = getattr(target, part, None)
        if target is None:
            raise self.error(f"{where} is the {what} {reference!r}, which no longer exists "
                             f"(renamed or moved since the file was written?)")
        if getattr(target, "__module__", None) != module_name or isinstance(target, types.ModuleType):
            raise self.error(f"{where} names {reference!r}, which is not defined in {module_name}")
        if want_class != isinstance(target, type) or not callable(target):
            raise self.error(f"{where} names {reference!r}, which is not a {what}")
        return target

    def is_trusted(self, module_name: str) -> bool:
        def within(package: str) -> bool:
            return module_name == package or module_name.startswith(package + ".")

        return any(within(p) for p in self.trusted) and not any(within(p) for p in _UNTRUSTED_MODULES)

    def dtype(self, text: Any, where: str) -> np.dtype:
        if isinstance(text, str):
            if text[:1] in "<>|=":
                try:
                    dtype = np.dtype(text)
                except TypeError:
                    dtype = None
                if dtype is not None and dtype.kind in _PLAIN_DTYPE_KINDS:
                    return dtype
            elif text in _ml_dtypes():
                return _ml_dtypes()[text]
        raise self.error(f"its header is corrupt at {where} (dtype {text!r})")

    def raw_array(self, index: Any, where: str) -> np.ndarray:
        if type(index) is not int or not 0 <= index < len(self.entries):
            raise self.error(f"its header is corrupt at {where} (array index {index!r})")
        entry = self.entries[index]
        dtype = self.dtype(entry.get("dtype"), where)
        shape, offset, nbytes = entry.get("shape"), entry.get("offset"), entry.get("nbytes")
        if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)
                and type(offset) is int and type(nbytes) is int and 0 <= offset
                and offset + nbytes <= len(self.data) and nbytes == math.prod(shape) * dtype.itemsize):
            raise self.error(f"its header is corrupt at {where} (array entry {entry!r})")
        flat = np.frombuffer(self.data[offset: offset + nbytes], dtype=dtype)
        return flat.reshape(shape).copy()  # own, writable memory, not a view of the file

    def array_value(self, node: dict, kind: str, where: str) -> Any:
        index = node.get("array")
        cached = self.cache.get((index, kind)) if type(index) is int else None
        if cached is not None:
            return cached
        array = self.raw_array(index, where)
        if kind == "numpy":
            value = array
        elif kind == "numpy_scalar":
            if array.ndim:
                raise self.error(f"its header is corrupt at {where} (a scalar of shape {array.shape})")
            value = array[()]
        else:
            value = self.jax_array(array, self.entries[index].get("weak_type") is True, where)
            if kind == "key":
                try:
                    value = jax.random.wrap_key_data(value, impl=str(node["impl"]))
                except (TypeError, ValueError) as err:
                    raise self.error(f"{where} is a PRNG key that cannot be rebuilt ({err})") from err
        self.cache[(index, kind)] = value
        return value

    def jax_array(self, array: np.ndarray, weak_type: bool, where: str) -> jax.Array:
        if jax.dtypes.canonicalize_dtype(array.dtype) != array.dtype:
            raise self.error(
                f"{where} is a {array.dtype} array, which jax would truncate to "
                f"{jax.dtypes.canonicalize_dtype(array.dtype)} because jax_enable_x64 is off; "
                f"turn it on (jax.config.update('jax_enable_x64', True)) to load the file exactly")
        value = jnp.asarray(array)
        if weak_type:
            value = _as_weakly_typed(value, where)
        return value


def _as_weakly_typed(value: jax.Array, where: str) -> jax.Array:
    # jax has no public way to mark an array weakly typed; a Python scalar converted by
    # jnp.asarray is weakly typed in the default dtype of its kind, which covers the weak
    # scalars models hold (e.g. a float attribute). Values are exact either way.
    if value.ndim == 0:
        scalar = jnp.asarray(value.item())
        if scalar.dtype == value.dtype and scalar.weak_type:
            return scalar
    warnings.warn(f"{where} was a weakly typed {value.dtype} array of shape {value.shape}; it "
                  "loads with the same values, strongly typed (jax offers no public way to "
                  "restore the weak type)", RuntimeWarning, stacklevel=4)
    return value


# --------------------------------------------------------------------------- legacy files


def load_legacy_pickle(path: str | os.PathLike) -> Any:
    """Read a file written by the earlier, pickle-based ``probinf.save``.

    This unpickles the file, which runs whatever code the file names: use it only on files
    you trust, once, and write the result again with `save`.

    Raises:
        SaveFileError: if the file is not such a pickle.
    """
    import pickle

    name = os.fspath(path)
    with open(name, "rb") as file:
        try:
            payload = pickle.load(file)  # noqa: S301 (explicitly the legacy, trusted-file loader)
        except (pickle.UnpicklingError, EOFError, ValueError, UnicodeDecodeError) as err:
            raise _file_error(name, f"it is not a readable pickle ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != _LEGACY_FORMAT:
        raise _file_error(name, "it is a pickle, but not one written by the pickle-based probinf.save")

    def is_marked(x: Any) -> bool:
        return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) and x[0] == "__jax__"

    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(x[1]) if is_marked(x) else x, payload["tree"], is_leaf=is_marked
    )
