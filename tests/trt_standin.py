"""A strict stand-in for the ``tensorrt`` module, built from one release's real API surface.

``tests/data/trt_api/api-VERSION.json`` are dumps of TensorRT's pybind11 bindings (classes,
signatures, read-only / writable properties, enum values; see the README there). Nothing here
behaves like TensorRT: the stand-in only refuses what the real bindings refuse, so code that runs
against it uses names, argument counts and keywords that exist in that release:

* an unknown module / class / instance attribute -> AttributeError;
* a call that fits no overload (arity, keyword, or an enum of the wrong type) -> TypeError;
* setting a read-only property, or an attribute the class lacks -> AttributeError.

Calls return a default of the declared type (a stand-in object of the declared class, an enum's
first member, True, 0, "", [], None) unless a test sets a hook with ``set_return``.
"""

from __future__ import annotations

import ast
import contextlib
import enum
import functools
import inspect
import json
import math
import re
import sys
import types
import weakref
from dataclasses import dataclass
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data" / "trt_api"
VERSIONS = ("10.12.0.36", "10.16.1.11", "11.4.0.106")

# Module paths and the C++ namespaces pybind11 prints for types it had not registered yet.
_PREFIX = re.compile(
    r"\b(tensorrt_bindings\.tensorrt|tensorrt|nvinfer1(::v_1_0)?|nvonnxparser)(\.|::)"
)
_CPP_NAMES = {"IBuilder": "Builder", "IParserError": "ParserError", "IRuntime": "Runtime"}
_SIGNATURE = re.compile(r"^(?:\d+\. )?\w*\((.*)\)(?: -> (.+))?$")
# Fresh defaults for the builtin return types, by the type's last dotted name before "[".
_BUILTIN_DEFAULTS = {
    "None": lambda: None, "bool": lambda: True, "int": lambda: 0, "SupportsInt": lambda: 0,
    "float": lambda: 0.0, "str": lambda: "", "bytes": lambda: b"", "buffer": lambda: b"",
    "Buffer": lambda: b"", "memoryview": lambda: memoryview(b""), "list": list, "List": list,
    "Sequence": list, "tuple": tuple, "Tuple": tuple, "dict": dict, "Dict": dict,
    "Iterator": lambda: iter(()),
}  # fmt: skip
# pybind11 gives these buffer / sequence behaviour that a dump cannot show; our code calls
# bytes(host_memory) and list(dims), so their stand-ins derive from the builtin.
_VALUE_BASES = {"IHostMemory": bytes, "Dims": tuple, "Dims2": tuple, "Dims3": tuple,
                "Dims4": tuple, "DimsHW": tuple}  # fmt: skip
_NUMPY_TYPES = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32",
                "INT64": "int64", "BOOL": "bool", "UINT8": "uint8"}  # fmt: skip
# Functions TensorRT's __init__.py defines in Python: no pybind11 signature in the dump.
_PYTHON_FUNCTIONS = {
    "__enter__": lambda this: this,
    "__exit__": lambda this, exc_type, exc_value, traceback: None,
    "common_enter": lambda this: this,
    "common_exit": lambda this, exc_type, exc_value, traceback: None,
    "volume": lambda iterable: math.prod(iterable),
    "nptype": lambda trt_type: __import__("numpy").dtype(_NUMPY_TYPES[trt_type.name]).type,
}
_CONTROLLERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> Standin
_OWNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # class -> Standin


class _Strict(type):
    """Metaclass of the stand-in classes: a class attribute the release lacks is recorded."""

    def __getattr__(cls, attr):
        owner = next((c for c in cls.__mro__ if c in _OWNERS), None)
        if owner is None:  # still being built
            raise AttributeError(attr)
        _OWNERS[owner].missing_attr(owner.__qualname__, attr)


class _StrictEnum(enum.EnumMeta):
    __getattr__ = _Strict.__getattr__


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    optional: bool  # has a default
    keyword: bool  # pybind11 names arguments it was given no name for argN: positional only
    positional: bool  # False after a bare "*"


@dataclass(frozen=True)
class Signature:
    params: tuple[Param, ...]
    returns: str
    var_args: bool = False
    var_kwargs: bool = False


def load_surface(version: str) -> dict:
    return json.loads((DATA / f"api-{version}.json").read_text())


def clean_type(text: str) -> str:
    name = _PREFIX.sub("", text.strip())
    return _CPP_NAMES.get(name, name)


def _split_top(text: str) -> list[str]:
    """Split on the commas outside brackets: types nest, defaults look like <Enum.X: 0>."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch in "([{<") - (ch in ")]}>")
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_signature(line: str) -> Signature | None:
    match = _SIGNATURE.match(line.strip())
    if match is None:
        return None
    params, var_args, var_kwargs, kw_only = [], False, False, False
    for part in _split_top(match.group(1)):
        head, _, default = part.partition("=")
        name, _, typ = head.partition(":")
        name = name.strip()
        if name == "/":  # everything before it is positional only
            params = [Param(p.name, p.type, p.optional, False, True) for p in params]
        elif name.startswith("**"):
            var_kwargs = True
        elif name.startswith("*"):
            var_args, kw_only = var_args or name != "*", True
        else:
            keyword = re.fullmatch(r"arg\d+", name) is None
            params.append(Param(name, clean_type(typ), bool(default), keyword, not kw_only))
    returns = clean_type(match.group(2) or "None")
    return Signature(tuple(params), returns, var_args, var_kwargs)


def signatures(doc: str) -> list[Signature]:
    return [s for s in map(parse_signature, doc.splitlines()) if s is not None]


class Standin:
    """One stand-in ``tensorrt`` module (``.module``), its recorded calls and its hooks."""

    def __init__(self, version: str):
        self.version = version
        self.surface = load_surface(version)
        self.calls: list[tuple[str, tuple, dict]] = []
        self.missing: list[str] = []  # names looked up that this release lacks (hasattr too)
        self._returns: dict[str, object] = {}
        self.enums = self._make_enums()
        self.classes: dict[str, type] = {}
        for name, spec in self.surface["classes"].items():
            if name not in self.enums:
                self.classes[name] = self._make_class(name, spec["attrs"])
        for name, enum_cls in self.enums.items():  # extra attributes, e.g. DataType.itemsize
            for attr, spec in self.surface["classes"].get(name, {"attrs": {}})["attrs"].items():
                setattr(enum_cls, attr, self._make_attr(name, attr, spec))
        self.module = self._make_module()
        _CONTROLLERS[self.module] = self

    # -- hooks and inspection ---------------------------------------------------------------
    def set_return(self, name: str, value: object) -> None:
        """Make ``name`` ("Class.method", "Class.property" or a module function) return
        ``value``; a Python function is called instead, with the call's arguments (the object
        first for methods and properties). Unknown names raise, so a hook cannot go stale."""
        owner, _, attr = name.rpartition(".")
        known = self.surface["classes"].get(owner, {"attrs": {}})["attrs"] if owner else {}
        if attr not in (known if owner else self.surface["module"]):
            raise AttributeError(f"tensorrt {self.version} has no {name}")
        self._returns[name] = value

    def missing_attr(self, owner: str, attr: str):
        if not attr.startswith("__"):  # dunders: Python's own probes (copy, pickle, import)
            self.missing.append(f"{owner}.{attr}")
        raise AttributeError(f"tensorrt {self.version}: {owner} has no attribute {attr!r}")

    def calls_to(self, name: str) -> list[tuple[tuple, dict]]:
        return [(args, kwargs) for qual, args, kwargs in self.calls if qual == name]

    def new(self, class_name: str, *data, **props) -> object:
        """An object of ``class_name`` as TensorRT would hand one out (no constructor needed),
        with ``props`` as its property values; ``data`` is the content of IHostMemory / Dims."""
        cls = self.classes[class_name]
        base = _VALUE_BASES.get(class_name, object)
        obj = base.__new__(cls, *data) if base is not object else object.__new__(cls)
        if isinstance(obj, bytes):
            props.setdefault("nbytes", len(obj))
        for key, value in props.items():
            if not isinstance(inspect.getattr_static(cls, key, None), property):
                raise AttributeError(f"tensorrt.{class_name} has no property {key!r}")
            obj.__dict__[key] = value
        return obj

    # -- calls ------------------------------------------------------------------------------
    def _fits(self, sig: Signature, args: tuple, kwargs: dict) -> bool:
        positional = [p for p in sig.params if p.positional]
        if len(args) > len(positional) and not sig.var_args:
            return False
        bound = {p.name: value for p, value in zip(positional, args, strict=False)}
        by_name = {p.name: p for p in sig.params}
        for key, value in kwargs.items():
            param = by_name.get(key)
            if param is None or not param.keyword or key in bound:
                if not sig.var_kwargs:
                    return False
            else:
                bound[key] = value
        for param in sig.params:
            if param.name not in bound:
                if not param.optional:
                    return False
            elif param.type in self.enums and not isinstance(
                bound[param.name], self.enums[param.type]
            ):
                return False  # pybind11 enums do not convert from ints or other enums
        return True

    def _call(self, qual: str, sigs: list[Signature], args: tuple, kwargs: dict, shown: tuple):
        sig = next((s for s in sigs if self._fits(s, args, kwargs)), None)
        if sig is None:
            accepted = "\n  ".join(str([(p.name, p.type) for p in s.params]) for s in sigs)
            raise TypeError(
                f"{qual}(): incompatible arguments {args!r} {kwargs!r}; accepted:\n  {accepted}"
            )
        self.calls.append((qual, shown, kwargs))
        if qual in self._returns:
            return self._hook(qual, args, kwargs)
        if qual.endswith(".__getitem__") and isinstance(args[-1], int):
            raise IndexError(args[-1])  # stand-in containers are empty: iteration stops
        return self._default(sig.returns)

    def _hook(self, qual: str, args: tuple, kwargs: dict):
        value = self._returns[qual]
        if isinstance(value, (types.FunctionType, types.MethodType, functools.partial)):
            return value(*args, **kwargs)
        return value

    def _default(self, typ: str):
        typ = re.sub(r"^(typing\.)?Optional\[(.*)\]$", r"\2", typ)
        if typ in self.enums:
            return next(iter(self.enums[typ]))
        if typ in self.classes:
            return self.new(typ)
        factory = _BUILTIN_DEFAULTS.get(typ.split("[")[0].rsplit(".", 1)[-1])
        return factory() if factory else None  # object, capsule, numpy.ndarray: no stand-in

    # -- building ---------------------------------------------------------------------------
    def _make_enums(self) -> dict[str, type]:
        made: dict[str, type] = {}
        for key, spec in self.surface["enums"].items():
            tail = key.rsplit(".", 1)[-1]
            # Logger.Severity is ILogger.Severity (Logger derives from ILogger): one enum
            same = [e for k, e in made.items() if k.rsplit(".", 1)[-1] == tail]
            twin = next((e for e in same if _values(e) == spec["values"]), None)
            members = [(m, spec["values"][m]) for m in spec["members"]]
            made[key] = twin or _TrtEnum(tail, members, module="tensorrt", qualname=key)
            _OWNERS[made[key]] = self
        return made

    def _make_class(self, name: str, attrs: dict) -> type:
        base = _VALUE_BASES.get(name, object)
        ns: dict[str, object] = {"__module__": "tensorrt", "__qualname__": name}
        for attr, spec in attrs.items():
            if attr == "__init__" or (base is not object and attr in ("__getitem__", "__len__")):
                continue  # constructors below; value classes keep the builtin's sequence methods
            ns[attr] = self._make_attr(name, attr, spec)
        ns.update(self._make_constructor(name, attrs.get("__init__", {"doc": ""})["doc"], base))
        if base is bytes:
            ns["__bool__"] = lambda obj: True  # a pybind11 object is truthy, even if empty
        cell: list[type] = []

        def __setattr__(obj, attr, value):
            # pybind11 objects take no new attributes; Python subclasses of them (a logger) do
            is_prop = isinstance(inspect.getattr_static(type(obj), attr, None), property)
            if type(obj) is cell[0] and not is_prop:
                raise AttributeError(f"'tensorrt.{name}' object has no attribute '{attr}'")
            object.__setattr__(obj, attr, value)

        ns["__setattr__"] = __setattr__
        ns["__getattr__"] = lambda obj, attr: self.missing_attr(name, attr)
        cell.append(_Strict(name, (base,) if base is not object else (), ns))
        _OWNERS[cell[0]] = self
        return cell[0]

    def _make_attr(self, owner: str, attr: str, spec: dict):
        kind, doc = spec["kind"], spec["doc"]
        if kind == "method":
            return self._make_function(owner, attr, doc)
        if kind.startswith("property"):
            return self._make_property(owner, attr, doc, writable="(rw)" in kind)
        if kind == "nested-class":
            return self.enums[f"{owner}.{attr}"]
        return self._value_from_repr(doc)

    def _make_constructor(self, name: str, doc: str, base: type) -> dict:
        sigs, qual = signatures(doc), f"{name}.__init__"

        def check(args: tuple, kwargs: dict) -> None:
            if not sigs:  # what pybind11 says for a class it binds without a constructor
                raise TypeError(f"tensorrt.{name}: No constructor defined!")
            self._call(qual, sigs, args, kwargs, args[1:])

        if base is object:

            def __init__(obj, *args, **kwargs):
                check((obj, *args), kwargs)

            return {"__init__": __init__}

        def __new__(cls, *args, **kwargs):
            check((cls, *args), kwargs)
            data = [*args, *kwargs.values()]
            if len(data) == 1 and not isinstance(data[0], int):
                data = data[0]  # Dims(shape) rather than Dims2(dim0, dim1)
            return base.__new__(cls, data)

        return {"__new__": __new__, "__init__": lambda obj, *args, **kwargs: None}

    def _make_function(self, owner: str | None, name: str, doc: str):
        qual, sigs = (f"{owner}.{name}" if owner else name), signatures(doc)
        if not sigs:  # a Python helper or pybind11 internal: no signature to check
            fallback = _PYTHON_FUNCTIONS.get(name, lambda *args, **kwargs: None)

            def function(*args, **kwargs):
                self.calls.append((qual, args[1:] if owner else args, kwargs))
                if qual in self._returns:
                    return self._hook(qual, args, kwargs)
                return fallback(*args, **kwargs)

            return function
        static = not owner or not sigs[0].params or sigs[0].params[0].name != "self"

        def method(*args, **kwargs):
            return self._call(qual, sigs, args, kwargs, args if static else args[1:])

        method.__name__, method.__qualname__, method.__doc__ = name, qual, doc
        return staticmethod(method) if static and owner else method

    def _make_property(self, owner: str, attr: str, doc: str, writable: bool):
        sigs, qual = signatures(doc), f"{owner}.{attr}"
        returns = sigs[0].returns if sigs else "None"
        if sigs and sigs[0].params and sigs[0].params[0].type == "object":
            return self._default(returns)  # a static property, e.g. Dims.MAX_DIMS

        def fget(obj):
            if attr in obj.__dict__:
                return obj.__dict__[attr]
            return self._hook(qual, (obj,), {}) if qual in self._returns else self._default(returns)

        def fset(obj, value):
            self.calls.append((qual + "=", (value,), {}))
            obj.__dict__[attr] = value

        return property(fget, fset if writable else None, doc=doc)

    def _value_from_repr(self, text: str):
        match = re.fullmatch(r"<(\w+)\.(\w+): -?\d+>", text)
        if match:
            enum_cls = next(e for k, e in self.enums.items() if k.rsplit(".", 1)[-1] == match[1])
            return enum_cls[match[2]]
        with contextlib.suppress(ValueError, SyntaxError):
            return ast.literal_eval(text)
        return _SKIP  # e.g. "<module 'os'>": the dump saw TensorRT's own imports

    def _make_module(self) -> types.ModuleType:
        module = types.ModuleType("tensorrt", f"Strict stand-in for tensorrt {self.version}")
        module.__version__ = self.version
        module.__getattr__ = lambda attr: self.missing_attr("tensorrt", attr)  # PEP 562
        for name, obj in [*self.classes.items(), *self.enums.items()]:
            if "." not in name:
                setattr(module, name, obj)
        for name, spec in self.surface["module"].items():
            if spec["kind"] == "function":
                setattr(module, name, self._make_function(None, name, spec["doc"]))
            elif (value := self._value_from_repr(spec["doc"])) is not _SKIP:
                setattr(module, name, value)
        return module


class _TrtEnum(enum.Enum, metaclass=_StrictEnum):
    """pybind11 enums: int() and indexing work; members do not equal plain ints."""

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self.name}: {self.value}>"


_SKIP = object()


def _values(enum_cls: type) -> dict[str, int]:
    return {name: member.value for name, member in enum_cls.__members__.items()}


def make_standin(version: str) -> Standin:
    return Standin(version)


def make_tensorrt_module(version: str) -> types.ModuleType:
    return Standin(version).module


def standin_of(module: types.ModuleType) -> Standin:
    """The controller (calls, hooks) of a module made by make_tensorrt_module."""
    return _CONTROLLERS[module]


def _forget_polygraphy_tensorrt() -> None:
    """Polygraphy's lazy modules keep the tensorrt they imported first, and its logger is a
    subclass of that module's ILogger: drop both so the next use imports the current one."""
    for name, mod in list(sys.modules.items()):
        if not name.startswith("polygraphy") or mod is None:
            continue
        for value in list(vars(mod).values()):
            if type(value).__name__ != "LazyModule":
                continue
            cached = vars(value).get("module")  # what the lazy module imported, if anything
            if getattr(cached, "__name__", "") == "tensorrt":
                object.__setattr__(value, "module", None)
        if name == "polygraphy.backend.trt.util":
            mod.TRT_LOGGER = None


@contextlib.contextmanager
def installed(version: str):
    """``sys.modules["tensorrt"]`` is a fresh stand-in for ``version`` inside the block."""
    standin, previous = Standin(version), sys.modules.get("tensorrt")
    _forget_polygraphy_tensorrt()
    sys.modules["tensorrt"] = standin.module
    try:
        yield standin
    finally:
        if previous is None:
            sys.modules.pop("tensorrt", None)
        else:
            sys.modules["tensorrt"] = previous
        _forget_polygraphy_tensorrt()


@pytest.fixture
def tensorrt_standin():
    """A factory: ``standin = tensorrt_standin("11.4.0.106")`` installs that stand-in as
    ``tensorrt`` until the test ends and returns its controller (``standin.module`` is it)."""
    with contextlib.ExitStack() as stack:
        yield lambda version: stack.enter_context(installed(version))
