"""Preflight: read a training script and its job spec before the job runs, and say what would lose results.

A job's disk is wiped when it ends, and most ways to lose results only show up hours in: a TypeError
from a removed argument, a 401 on the final push, a repo name made up from `output_dir`, a timeout
with no checkpoint pushed. All of that can be seen in the script and the job spec beforehand.

The script is parsed, never run. Values are followed through assignments, f-strings, literal dicts
and `os.environ.get(NAME, default)` only as far as they are certain: whatever depends on a branch,
a function argument or the command line is reported as unknown rather than guessed. Argument names
are checked against the config classes actually installed (imported on first use, then cached).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import enum
import functools
import importlib
import importlib.metadata
import importlib.util
import operator
import posixpath
import re
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from keephub.hub import naming
from keephub.wire import BadRequest

Status = Literal["ok", "warn", "fail"]
ICONS: dict[str, str] = {"ok": "✅", "warn": "⚠️", "fail": "❌"}
LONG_JOB_SECONDS = 3600

SAVE_STRATEGIES = ("no", "steps", "epoch", "best")
HUB_STRATEGIES = ("end", "every_save", "checkpoint", "all_checkpoints")
RESUMABLE_HUB_STRATEGIES = ("checkpoint", "all_checkpoints")
# transformers 5 defaults, used when the installed class cannot be read (its own defaults win otherwise).
_DEFAULTS: dict[str, Any] = {
    "push_to_hub": False, "hub_strategy": "every_save", "save_strategy": "steps", "save_steps": 500,
    "max_steps": -1, "num_train_epochs": 3.0, "output_dir": "trainer_output", "resume_from_checkpoint": None,
}
# trl classes named *Config that configure something other than a trainer.
_NOT_TRAINER_CONFIGS = frozenset({"ModelConfig", "DatasetMixtureConfig"})
_PARSERS = ("HfArgumentParser", "TrlParser")
# Hugging Face (hf_) and keephub (kh_) access tokens, as they appear when pasted into code.
_TOKEN = re.compile(r"\b(?:hf_[A-Za-z0-9]{30,}|kh_[A-Za-z0-9_-]{40,})")
_TRAINING_OUTPUT = frozenset({
    "config.json", "adapter_config.json", "training_args.bin", "trainer_state.json", "model.safetensors",
    "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin",
})
_CHECKPOINT_DIR = re.compile(r"^(?:checkpoint-\d+|last-checkpoint)$")
_NEUTRAL_FILES = frozenset({"README.md", ".gitattributes"})
_HUB_STRATEGY_MEANING = {
    "end": "the model is pushed only when training ends",
    "every_save": "the model is pushed at every save",
    "checkpoint": "every save is pushed, the latest checkpoint to last-checkpoint/",
    "all_checkpoints": "every checkpoint is pushed in its own folder",
}
# The script is untrusted input to the server: values it can make the analysis build stay small.
_MAX_TEXT = 1000  # longer strings are not followed; repo ids and paths are far shorter
_MAX_INT = 10**18
_STR_METHODS = frozenset({"lower", "upper", "strip", "lstrip", "rstrip", "split", "rsplit", "replace",
                          "removeprefix", "removesuffix"})
_BINARY_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}
_WIDE_FORMAT = re.compile(r"\d{4,}")
_CONVERSIONS: dict[int, Callable[[Any], str]] = {ord("s"): str, ord("r"): repr, ord("a"): ascii}
_MUTATORS = frozenset({"update", "pop", "popitem", "setdefault", "clear"})


class _Unknown:
    """A value that depends on something only known at run time (a branch, an argument, the command line)."""

    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN = _Unknown()


# -- what the script says ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    """One argument of a config call: its value (or UNKNOWN), the expression written, and where."""

    value: Any
    source: str
    line: int
    attribute: bool = False  # set later as `config.name = ...` rather than passed to the call

    @property
    def known(self) -> bool:
        return self.value is not UNKNOWN


@dataclass(eq=False)
class ConfigCall:
    """A `TrainingArguments(...)` or TRL `*Config(...)` call, with the arguments it could resolve."""

    name: str  # as the class is called, e.g. "SFTConfig"
    qualname: str  # where it is imported from, e.g. "trl.SFTConfig"
    line: int
    kwargs: dict[str, Arg] = field(default_factory=dict)
    opaque: list[str] = field(default_factory=list)  # arguments that could not be read, e.g. "**overrides"

    def value(self, key: str, default: Any = None) -> Any:
        """The argument's value, UNKNOWN, or `default` when the script does not pass it."""
        return self.kwargs[key].value if key in self.kwargs else default


# "resume": train() with a resume_from_checkpoint the script sets; "train": a trainer's train() without one
# (or None), which keephub's resume hook resumes from the checkpoint it restores on a retried attempt;
# "from_scratch": a trainer's train(resume_from_checkpoint=False).
Kind = Literal["resume", "train", "from_scratch", "push", "save_model"]
_METHODS: dict[str, Kind] = {"train": "resume", "push_to_hub": "push", "save_model": "save_model"}


@dataclass(frozen=True)
class MethodCall:
    """A call that decides what reaches the Hub: `.train(resume_from_checkpoint=...)` ("resume"),
    `.push_to_hub()` ("push") or `.save_model()` ("save_model", which pushes when push_to_hub is on)."""

    kind: Kind
    line: int
    config: ConfigCall | None  # the config of the trainer it is called on, when that can be told


@dataclass(frozen=True, eq=False)
class _TrainerOf:
    """A `*Trainer(...)` object, so that `trainer.train(...)` is known to be a Trainer's and is tied to its
    config (`args=config`; None when that cannot be told)."""

    config: ConfigCall | None


@dataclass
class ScriptFacts:
    """What the static analysis found. The first config call is the one the shortcuts describe."""

    configs: list[ConfigCall] = field(default_factory=list)
    calls: list[MethodCall] = field(default_factory=list)
    token_lines: list[int] = field(default_factory=list)  # hard-coded access tokens
    parser: str | None = None  # HfArgumentParser/TrlParser: the config comes from the command line

    def lines(self, kind: Kind, config: ConfigCall | None = None) -> list[int]:
        """Where calls of `kind` are: all of them, or those that may act on `config` (its trainer's, or
        calls on an object that could not be told apart)."""
        return [c.line for c in self.calls
                if c.kind == kind and (config is None or c.config is None or c.config is config)]

    def _first(self, key: str) -> Any:
        return self.configs[0].value(key) if self.configs else None

    @property
    def hub_model_id(self) -> Any:
        """The target repo id, UNKNOWN, or None when not set."""
        return self._first("hub_model_id")

    @property
    def output_dir(self) -> Any:
        """The local output folder, UNKNOWN, or None when not set (transformers uses "trainer_output")."""
        return self._first("output_dir")

    @property
    def push_to_hub(self) -> Any:
        return self._first("push_to_hub")

    @property
    def hub_strategy(self) -> Any:
        return self._first("hub_strategy")

    @property
    def save_strategy(self) -> Any:
        return self._first("save_strategy")

    @property
    def save_steps(self) -> Any:
        return self._first("save_steps")

    @property
    def resumes(self) -> bool:
        return bool(self.lines("resume"))

    @property
    def pushes_itself(self) -> bool:
        """Whether the script may upload results itself: push_to_hub on (or not known to be off), or a
        push_to_hub() call. With no config call found, nothing can be ruled out."""
        return not self.configs or bool(self.lines("push")) or any(
            _is_on(c.value("push_to_hub")) for c in self.configs)


def analyze_script(source: str, *, environment: Mapping[str, str] | None = None) -> ScriptFacts:
    """Find the training configs and the calls that decide what reaches the Hub. Raises SyntaxError.

    `environment` is the job's environment: `os.environ[...]` lookups of its names resolve to its
    values; other lookups fall back to the default written in the code, or are unknown.
    """
    tree = ast.parse(source)
    stores = Counter(n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
    analyzer = _Analyzer(dict(environment or {}), stores)
    analyzer.block(tree.body)
    facts = analyzer.facts
    facts.token_lines = sorted({node.lineno for node in ast.walk(tree)
                                if isinstance(node, ast.Constant) and isinstance(node.value, str)
                                and _TOKEN.search(node.value)})
    return facts


class _Analyzer:
    """Walks statements in order, keeping what each name certainly holds at that point."""

    def __init__(self, environment: dict[str, str], stores: Counter[str]) -> None:
        self.environment = environment
        self.stores = stores  # how often each name is assigned anywhere in the script
        self.scopes: list[dict[str, Any]] = [{}]
        self.imports: dict[str, str] = {}
        self.facts = ScriptFacts()
        self.calls: dict[ast.Call, ConfigCall] = {}
        self.created_depth: dict[ConfigCall, int] = {}
        self.depth = 0  # how many branches, loops or function bodies enclose the current statement

    # -- statements ------------------------------------------------------------------------------------------
    def block(self, body: Sequence[ast.stmt]) -> None:
        for stmt in body:
            self.statement(stmt)

    def statement(self, stmt: ast.stmt) -> None:
        match stmt:
            case ast.Import(names=names):
                for alias in names:
                    if alias.asname:
                        self.imports[alias.asname] = alias.name
                    else:
                        root = alias.name.split(".")[0]
                        self.imports[root] = root
            case ast.ImportFrom(module=module, names=names) if module and not stmt.level:
                for alias in names:
                    self.imports[alias.asname or alias.name] = f"{module}.{alias.name}"
            case ast.FunctionDef() | ast.AsyncFunctionDef() | ast.ClassDef():
                self.scopes.append({name: UNKNOWN for name in _parameters(stmt)})
                self.depth += 1
                self.block(stmt.body)
                self.depth -= 1
                self.scopes.pop()
            case ast.If(test=test, body=body, orelse=orelse):
                self.scan(test)
                self.branches(body, orelse)
            case ast.For(target=target, iter=iterable) | ast.AsyncFor(target=target, iter=iterable):
                self.scan(iterable)
                self.bind(target, UNKNOWN, stmt.lineno)
                self.branches(stmt.body, [])
                self.block(stmt.orelse)
            case ast.While(test=test):
                self.scan(test)
                self.branches(stmt.body, [])
                self.block(stmt.orelse)
            case ast.Try() | ast.TryStar():
                self.branches([*stmt.body, *stmt.orelse], *[handler.body for handler in stmt.handlers], [])
                self.block(stmt.finalbody)
            case ast.With() | ast.AsyncWith():
                for item in stmt.items:
                    self.scan(item.context_expr)
                    if item.optional_vars is not None:
                        self.bind(item.optional_vars, UNKNOWN, stmt.lineno)
                self.block(stmt.body)
            case ast.Match(subject=subject, cases=cases):
                self.scan(subject)
                self.branches(*[case.body for case in cases], [])
            case _:
                self.scan(stmt)
                self.assignment(stmt)

    def assignment(self, stmt: ast.stmt) -> None:
        match stmt:
            case ast.Assign(targets=targets, value=value):
                result = self.eval(value)
                for target in targets:
                    self.bind(target, result, stmt.lineno, value)
            case ast.AnnAssign(target=target, value=value) if value is not None:
                self.bind(target, self.eval(value), stmt.lineno, value)
            case ast.AugAssign(target=ast.Name() as target, op=op, value=value):
                self.bind(target, self.eval(ast.BinOp(ast.Name(target.id), op, value)), stmt.lineno)

    def branches(self, *bodies: Sequence[ast.stmt]) -> None:
        """Run each alternative from the same state; afterwards a name keeps only a value all agree on."""
        before = self.scopes[-1]
        outcomes = []
        self.depth += 1
        for body in bodies:
            self.scopes[-1] = dict(before)
            self.block(body)
            outcomes.append(self.scopes[-1])
        self.depth -= 1
        merged = {}
        for name in set().union(*outcomes):
            values = [outcome.get(name, UNKNOWN) for outcome in outcomes]
            merged[name] = values[0] if all(_same(values[0], v) for v in values[1:]) else UNKNOWN
        self.scopes[-1] = merged

    def bind(self, target: ast.expr, value: Any, line: int, node: ast.expr | None = None) -> None:
        match target:
            case ast.Name(id=name):
                self.scopes[-1][name] = value
            case ast.Tuple(elts=elts) | ast.List(elts=elts):
                parts = value if isinstance(value, (tuple, list)) and len(value) == len(elts) else None
                for index, element in enumerate(elts):
                    self.bind(element, parts[index] if parts else UNKNOWN, line)
            case ast.Attribute(value=ast.Name(id=name), attr=attr) if isinstance(
                    self.lookup(name), ConfigCall):
                call = self.lookup(name)
                if self.depth > self.created_depth[call] and not _same(call.value(attr, UNKNOWN), value):
                    value = UNKNOWN
                source = _source(node) if node is not None else "..."
                call.kwargs[attr] = Arg(value, source, line, attribute=True)
            case ast.Subscript(value=ast.Name(id=name), slice=ast.Constant(value=str() as key)) if isinstance(
                    self.lookup(name), dict):
                self.scopes[-1][name] = {**self.lookup(name), key: value}
            case ast.Subscript(value=ast.Name(id=name)) | ast.Attribute(value=ast.Name(id=name)):
                if isinstance(self.lookup(name), dict):
                    self.scopes[-1][name] = UNKNOWN

    def lookup(self, name: str) -> Any:
        """A function body is read where it is defined, not where it runs: it can only rely on outer
        names that are assigned once in the whole script."""
        for depth, scope in enumerate(reversed(self.scopes)):
            if name in scope:
                return scope[name] if depth == 0 or self.stores[name] == 1 else UNKNOWN
        return UNKNOWN

    # -- calls -----------------------------------------------------------------------------------------------
    def scan(self, node: ast.AST) -> None:
        """Record the calls in one statement (not in statements nested in it)."""
        for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
            qualname = self.qualname(call.func)
            last = qualname.rsplit(".", 1)[-1]
            if _is_training_config(qualname):
                self.calls[call] = self.config_call(call, qualname)
            elif last in _PARSERS:
                self.facts.parser = last
            elif isinstance(call.func, ast.Attribute) and call.func.attr in _METHODS:
                kind = _METHODS[call.func.attr]
                owner = self.eval(call.func.value)
                config = owner.config if isinstance(owner, _TrainerOf) else None
                passed = [self.eval(kw.value) for kw in call.keywords if kw.arg == "resume_from_checkpoint"]
                if kind == "resume" and not any(value not in (None, False) for value in passed):
                    if not isinstance(owner, _TrainerOf) or call.args:
                        continue
                    kind = "from_scratch" if False in passed else "train"
                self.facts.calls.append(MethodCall(kind, call.lineno, config))
            elif isinstance(call.func, ast.Attribute) and call.func.attr in _MUTATORS and isinstance(
                    call.func.value, ast.Name) and isinstance(self.lookup(call.func.value.id), dict):
                self.scopes[-1][call.func.value.id] = UNKNOWN

    def config_call(self, call: ast.Call, qualname: str) -> ConfigCall:
        config = ConfigCall(name=qualname.rsplit(".", 1)[-1], qualname=qualname, line=call.lineno)
        for index, positional in enumerate(call.args):
            if index == 0 and not isinstance(positional, ast.Starred):  # output_dir is the first field
                config.kwargs["output_dir"] = Arg(self.eval(positional), _source(positional), call.lineno)
            else:
                config.opaque.append(_source(positional))
        for keyword in call.keywords:
            if keyword.arg is not None:
                config.kwargs[keyword.arg] = Arg(self.eval(keyword.value), _source(keyword.value),
                                                 keyword.value.lineno)
                continue
            unpacked = self.eval(keyword.value)
            written = _source(keyword.value)
            if not isinstance(unpacked, dict):
                config.opaque.append(f"**{written}")
                continue
            for key, value in unpacked.items():
                config.kwargs[key] = Arg(value, f"{written}[{key!r}]", keyword.value.lineno)
        self.facts.configs.append(config)
        self.created_depth[config] = self.depth
        return config

    def qualname(self, node: ast.expr) -> str:
        """`trl.SFTConfig` for `SFTConfig` after `from trl import SFTConfig`; else the name as written."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return ""
        parts.append(self.imports.get(node.id, node.id))
        return ".".join(reversed(parts))

    # -- expressions -----------------------------------------------------------------------------------------
    def eval(self, node: ast.expr) -> Any:
        """The value `node` certainly has when this line runs, or UNKNOWN."""
        value = self.evaluate(node)
        if isinstance(value, str) and len(value) > _MAX_TEXT:
            return UNKNOWN
        if isinstance(value, int) and abs(value) > _MAX_INT:
            return UNKNOWN
        return value

    def evaluate(self, node: ast.expr) -> Any:
        match node:
            case ast.Constant(value=value):
                return value
            case ast.Name(id=name):
                return self.lookup(name)
            case ast.JoinedStr(values=values):
                joined = ""
                for part in values:
                    text = self.eval(part)
                    if not isinstance(text, str) or len(joined) + len(text) > _MAX_TEXT:
                        return UNKNOWN
                    joined += text
                return joined
            case ast.FormattedValue(value=value, conversion=conversion, format_spec=spec):
                result = self.eval(value)
                fmt = self.eval(spec) if spec is not None else ""
                if result is UNKNOWN or not (result is None or isinstance(result, (str, int, float))):
                    return UNKNOWN
                if not isinstance(fmt, str) or _WIDE_FORMAT.search(fmt):
                    return UNKNOWN
                if conversion in _CONVERSIONS:
                    result = _CONVERSIONS[conversion](result)
                return _safely(format, result, fmt)
            case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINARY_OPS:
                a, b = self.eval(left), self.eval(right)
                if not (_scalar(a) and _scalar(b)) or (isinstance(op, (ast.Mult, ast.Mod)) and (
                        isinstance(a, str) or isinstance(b, str))):
                    return UNKNOWN
                return _safely(_BINARY_OPS[type(op)], a, b)
            case ast.UnaryOp(op=ast.USub(), operand=operand):
                value = self.eval(operand)
                return -value if isinstance(value, (int, float)) and not isinstance(value, bool) else UNKNOWN
            case ast.UnaryOp(op=ast.Not(), operand=operand):
                value = self.eval(operand)
                return UNKNOWN if value is UNKNOWN else not value
            case ast.BoolOp(op=op, values=operands):
                for operand in operands:
                    value = self.eval(operand)
                    if value is UNKNOWN or bool(value) == isinstance(op, ast.Or) or operand is operands[-1]:
                        return value
            case ast.IfExp(test=test, body=body, orelse=orelse):
                condition = self.eval(test)
                if condition is not UNKNOWN:
                    return self.eval(body if condition else orelse)
                a, b = self.eval(body), self.eval(orelse)
                return a if _same(a, b) else UNKNOWN
            case ast.List(elts=elts) | ast.Tuple(elts=elts):
                items = [UNKNOWN if isinstance(e, ast.Starred) else self.eval(e) for e in elts]
                return UNKNOWN if UNKNOWN in items else (list if isinstance(node, ast.List) else tuple)(items)
            case ast.Dict(keys=keys, values=values):
                mapping: dict[str, Any] = {}
                for key, value in zip(keys, values, strict=True):
                    if key is None:  # {**other}
                        other = self.eval(value)
                        if not isinstance(other, dict):
                            return UNKNOWN
                        mapping.update(other)
                        continue
                    name = self.eval(key)
                    if not isinstance(name, str):
                        return UNKNOWN
                    mapping[name] = self.eval(value)
                return mapping
            case ast.Subscript(value=container, slice=index):
                qualname = self.qualname(container)
                key = self.eval(index)
                if qualname == "os.environ":
                    return self.environment.get(key, UNKNOWN) if isinstance(key, str) else UNKNOWN
                return _safely(operator.getitem, self.eval(container), key)
            case ast.Attribute(value=ast.Name(id=name), attr=attr) if isinstance(
                    self.lookup(name), ConfigCall):  # config.output_dir
                return self.lookup(name).value(attr, _DEFAULTS.get(attr, UNKNOWN))
            case ast.Attribute(attr=attr):
                # SaveStrategy.STEPS, HubStrategy.CHECKPOINT, IntervalStrategy.NO, ...
                owner = self.qualname(node.value).rsplit(".", 1)[-1]
                return attr.lower() if owner.endswith("Strategy") and attr.isupper() else UNKNOWN
            case ast.Call():
                return self.eval_call(node)
        return UNKNOWN

    def eval_call(self, call: ast.Call) -> Any:
        if call in self.calls:
            return self.calls[call]
        qualname = self.qualname(call.func)
        args = [UNKNOWN if isinstance(a, ast.Starred) else self.eval(a) for a in call.args]
        if qualname in ("os.environ.get", "os.getenv"):
            name = args[0] if args else UNKNOWN
            if not isinstance(name, str):
                return UNKNOWN
            if name in self.environment:
                return self.environment[name]
            return args[1] if len(args) > 1 else UNKNOWN  # unset without a default: the job may still set it
        if qualname.endswith("Trainer"):
            configs = [config for keyword in call.keywords
                       if keyword.arg == "args" and isinstance(config := self.eval(keyword.value), ConfigCall)]
            return _TrainerOf(configs[0] if configs else None)
        if qualname == "dict" and not args:
            keys: list[ast.expr | None] = [None if kw.arg is None else ast.Constant(kw.arg)
                                           for kw in call.keywords]
            return self.eval(ast.Dict(keys, [kw.value for kw in call.keywords]))
        if UNKNOWN in args or call.keywords:
            return UNKNOWN
        strings = [a for a in args if isinstance(a, str)]
        if qualname == "os.path.join" and len(strings) == len(args) and sum(map(len, strings)) <= _MAX_TEXT:
            return posixpath.join(*strings)
        if isinstance(call.func, ast.Attribute) and call.func.attr in _STR_METHODS:
            owner = self.eval(call.func.value)
            if isinstance(owner, str) and all(_scalar(a) or a is None for a in args):
                return _safely(getattr(owner, call.func.attr), *args)
        return UNKNOWN


def _source(node: ast.expr) -> str:
    """The expression as written, for messages; tokens in it are cut short so reports never carry them."""
    return _TOKEN.sub(lambda m: m.group()[:5] + "…", ast.unparse(node))


def _parameters(node: ast.stmt) -> list[str]:
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return []
    arguments = node.args
    names = [a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]]
    names += [a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None]
    return names


def _is_training_config(qualname: str) -> bool:
    root, _, rest = qualname.partition(".")
    last = qualname.rsplit(".", 1)[-1]
    if root == "transformers" and rest:
        return last.endswith("TrainingArguments")
    return root == "trl" and bool(rest) and last.endswith("Config") and last not in _NOT_TRAINER_CONFIGS


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, ConfigCall) or isinstance(b, ConfigCall) or type(a) is not type(b):
        return False
    return bool(a == b)


def _safely(function: Callable[..., Any], *args: Any) -> Any:
    try:
        return function(*args)
    except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError, OverflowError):
        return UNKNOWN


# -- what is installed ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Installed:
    """A config class as installed: its init fields with defaults, or why it could not be loaded."""

    fields: dict[str, Any] | None
    attributes: frozenset[str] = frozenset()
    package: str = ""  # e.g. "trl 1.16.0"
    problem: str | None = None
    missing: bool = False  # the package is installed but has no such class: the script's import fails
    moved_to: str | None = None  # where the class lives instead, as an import line


@functools.cache
def _installed(qualname: str) -> _Installed:
    module_name, _, class_name = qualname.rpartition(".")
    root = module_name.split(".")[0]
    try:
        package = f"{root} {importlib.metadata.version(root)}"
    except importlib.metadata.PackageNotFoundError:
        return _Installed(None, problem=f"{root} is not installed on this keephub server")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trl.experimental warns on import
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            return _Installed(None, package=package, problem=f"{package} has no {qualname}", missing=True,
                              moved_to=_experimental_home(root, class_name))
        except Exception as exc:  # a broken install must not stop job submission; it is reported instead
            return _Installed(None, package=package, problem=f"importing {module_name} failed: {exc!r}")
    if not dataclasses.is_dataclass(cls):
        return _Installed(None, package=package, problem=f"{qualname} in {package} is not a dataclass")
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else UNKNOWN
                for f in dataclasses.fields(cls) if f.init}
    return _Installed(defaults, frozenset(dir(cls)) | {f.name for f in dataclasses.fields(cls)}, package)


def _experimental_home(root: str, class_name: str) -> str | None:
    """TRL moves trainers it no longer maintains to trl.experimental (ORPOConfig: trl.experimental.orpo)."""
    stem = class_name.removesuffix("Config")
    for module in {stem.lower(), re.sub(r"(?<=[a-z])(?=[A-Z])", "_", stem).lower()}:
        name = f"{root}.experimental.{module}"
        try:
            if importlib.util.find_spec(name) and hasattr(importlib.import_module(name), class_name):
                return f"from {name} import {class_name}"
        except ImportError:
            continue
    return None


# -- the report ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str
    fix: str | None = None

    def to_wire(self) -> dict:
        return {"name": self.name, "status": self.status, "message": self.message, "fix": self.fix}


@dataclass(frozen=True)
class WriteAccess:
    """Whether the token the job will hold may push to a repo: True, False (why, and the fix when the general
    one would mislead), or None when keephub cannot tell (why) and says so rather than guess."""

    allowed: bool | None
    reason: str = ""
    fix: str | None = None


def _ok(name: str, message: str) -> Check:
    return Check(name, "ok", message)


def _warn(name: str, message: str, fix: str) -> Check:
    return Check(name, "warn", message, fix)


def _fail(name: str, message: str, fix: str) -> Check:
    return Check(name, "fail", message, fix)


@dataclass
class PreflightReport:
    checks: list[Check]
    facts: ScriptFacts | None = None  # None when the script does not parse

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == "warn"]

    def render(self) -> str:
        """The checklist: one line per check, the fix indented under it."""
        lines = []
        for check in self.checks:
            lines.append(f"{ICONS[check.status]} {check.name}: {check.message}")
            if check.fix and check.status != "ok":
                lines.append(f"   fix: {check.fix}")
        return "\n".join(lines)

    def to_wire(self) -> dict:
        return {"ok": not self.failed, "failed": len(self.failed), "warnings": len(self.warnings),
                "checks": [c.to_wire() for c in self.checks]}


def preflight(
    source: str,
    *,
    secret_names: Sequence[str],
    timeout_seconds: int,
    can_write: Callable[[str], WriteAccess] | None = None,
    repo_files: Callable[[str], list[str] | None] | None = None,
    keephub_saving: bool = False,
    environment: Mapping[str, str] | None = None,
    bucket_mounts: Mapping[str, str] | None = None,
) -> PreflightReport:
    """Check a training script against its job spec before it runs.

    `can_write(repo_id)` says whether the job's token may push there, and why not; `repo_files(repo_id)`
    lists the repo's files, or None when it does not exist. Either may be None to skip that check (offline).
    `keephub_saving` means keephub itself pushes the job's checkpoints, so the script need not.
    `environment` is the job's (non-secret) environment, used to resolve `os.environ` lookups.
    `bucket_mounts` (mount path → bucket) are the job's read-write bucket volumes: an output_dir under one is
    kept by the bucket, so that config need not push.
    """
    secrets = set(secret_names)
    try:
        facts = analyze_script(source, environment=environment)
    except SyntaxError as exc:
        where = f" at line {exc.lineno}" if exc.lineno else ""
        broken = _fail("script", f"does not parse: SyntaxError{where}: {exc.msg}",
                       f"fix the syntax error{where}; `python -m py_compile <script>` shows the same error")
        return PreflightReport([broken, *_token_checks(None, secrets, environment)])
    except RecursionError:  # expressions nested thousands deep: Python may run them, the analysis cannot
        unread = _warn("script", "nested too deeply for keephub to analyze; checks are limited to the job "
                       "spec", "split the deepest expressions into several statements")
        return PreflightReport([unread, *_token_checks(None, secrets, environment)])
    context = _Context(facts, timeout_seconds, keephub_saving, can_write, repo_files, dict(bucket_mounts or {}))
    checks: list[Check] = []
    if not facts.configs:
        where = (f"the config comes from the command line through {facts.parser}, which preflight does not "
                 "read" if facts.parser else "checks are limited to the job spec")
        checks.append(_warn("training config",
                            f"keephub could not find a TrainingArguments/SFTConfig call; {where}",
                            'pass the config inline, e.g. SFTConfig(output_dir=..., push_to_hub=True, '
                            'hub_model_id="namespace/name"), so it can be checked before the run'))

    def labelled(call: ConfigCall, found: list[Check]) -> list[Check]:
        if len(facts.configs) == 1:
            return found
        return [dataclasses.replace(c, name=f"{c.name} ({call.name}, line {call.line})") for c in found]

    for call in facts.configs:
        checks += labelled(call, context.hub_checks(call))
    token_checks = _token_checks(facts, secrets, environment)
    kept = [context.kept_in(call) for call in facts.configs]
    if facts.configs and all(kept) and not facts.lines("push") and token_checks[0].status == "fail":
        token_checks[0] = _ok("HF_TOKEN", "not needed: the script does not push, and keephub pushes its bucket "
                              "volume with a token of the job's own")
    checks += token_checks
    for call in facts.configs:
        checks += labelled(call, [*context.argument_checks(call), *context.save_checks(call)])
    if keephub_saving:
        checks.append(_resume_check(facts))
    return PreflightReport(checks, facts)


def _resume_check(facts: ScriptFacts) -> Check:
    """How a retried attempt resumes. keephub restores the newest checkpoint on the hub into the output
    directory first; a Trainer's train() then resumes from it by itself (keephub's resume hook), unless the
    script says where to resume from; any other training loop has to load it itself."""
    if own := facts.lines("resume"):
        return _ok("resume", f"the script passes resume_from_checkpoint itself (line {own[0]}); keephub puts the "
                   "newest checkpoint on the hub into the output directory before a retried attempt starts")
    if trains := facts.lines("train"):
        return _ok("resume", f"keephub will resume Trainer.train() (line {trains[0]}) from the newest checkpoint "
                   "on the hub when an attempt is retried")
    if fresh := facts.lines("from_scratch"):
        return _warn("resume", f"the script passes resume_from_checkpoint=False (line {fresh[0]}): a retried attempt "
                     "starts from scratch, though keephub puts the newest checkpoint on the hub into the output "
                     "directory first", "leave resume_from_checkpoint out, and keephub resumes from it")
    return _warn("resume", "not a transformers Trainer (keephub found no trainer.train() call it can resume): a "
                 "retried attempt resumes only if the script loads the checkpoint itself, which keephub puts "
                 "into the output directory (checkpoint-N/) before the attempt starts",
                 "at the start, load the newest checkpoint-N/ in the output directory when there is one, e.g. "
                 "with accelerator.load_state(path), or train with a transformers Trainer")


def _token_checks(facts: ScriptFacts | None, secrets: set[str], environment: Mapping[str, str] | None) -> list[Check]:
    """HF_TOKEN must reach the job as a secret (keephub's sidecar pushes with it too), and no token may be
    written into the script."""
    configs = facts.configs if facts else []
    hub_tokens = [c.kwargs["hub_token"] for c in configs if "hub_token" in c.kwargs]
    passed = [arg for arg in hub_tokens if arg.value is not None]
    fix = 'add secrets={"HF_TOKEN": "$HF_TOKEN"} to the job; keephub replaces $HF_TOKEN with a token for it'
    if "HF_TOKEN" in secrets:
        check = _ok("HF_TOKEN", "passed to the job as a secret")
    elif "HUGGING_FACE_HUB_TOKEN" in secrets:
        check = _ok("HF_TOKEN", "passed as the secret HUGGING_FACE_HUB_TOKEN (huggingface_hub's older name)")
    elif environment is not None and "HF_TOKEN" in environment:
        check = _warn("HF_TOKEN", "passed as a plain environment variable: it is stored in clear and shown "
                      "in the job's details", 'move it to the secrets: secrets={"HF_TOKEN": "$HF_TOKEN"}')
    elif passed:
        how = "a token written into the script" if passed[0].known else f"hub_token={passed[0].source}"
        check = _warn("HF_TOKEN", f"not among the job's secrets; the script passes {how} instead: make sure "
                      "it is a token that reaches the job as a secret", fix)
    else:
        check = _fail("HF_TOKEN", "not among the job's secrets: pushing fails with 401 Unauthorized, after "
                      "the training time is spent", fix)
    lines = sorted({*(facts.token_lines if facts else []),
                    *(a.line for a in hub_tokens if isinstance(a.value, str) and a.value)})
    if not lines:
        return [check]
    where = ", ".join(map(str, lines))
    return [check, _warn("token in code", f"an access token is written into the script (line {where}): "
                         "anyone who can read the script, the job's details or its logs can use it",
                         'remove it, revoke it, and pass secrets={"HF_TOKEN": "$HF_TOKEN"} instead')]


def _is_on(value: Any) -> bool:
    """push_to_hub as far as a check can rely on it: unknown counts as on, so nothing is reported wrongly."""
    return value is UNKNOWN or bool(value)


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:g}{unit}"
    return f"{seconds}s"


@dataclass
class _Context:
    """The per-config checks, with what they share: the facts, the job's timeout, the server's callbacks."""

    facts: ScriptFacts
    timeout_seconds: int
    keephub_saving: bool
    can_write: Callable[[str], WriteAccess] | None
    repo_files: Callable[[str], list[str] | None] | None
    bucket_mounts: dict[str, str]

    @property
    def long(self) -> bool:
        return self.timeout_seconds > LONG_JOB_SECONDS

    def setting(self, call: ConfigCall, key: str) -> Any:
        """What the config will hold: the script's value, else the installed class's default."""
        if key in call.kwargs:
            return call.kwargs[key].value
        default = (_installed(call.qualname).fields or {}).get(key)
        if default is None or default is UNKNOWN:
            return _DEFAULTS[key]
        return default.value if isinstance(default, enum.Enum) else default

    def written(self, call: ConfigCall, key: str) -> str:
        if key not in call.kwargs:
            return f"{key} is not set"
        return f"{key}={call.kwargs[key].source} (line {call.kwargs[key].line})"

    def unresolved(self, call: ConfigCall, key: str) -> str:
        return f"{self.written(call, key)}, which keephub cannot resolve before the run"

    # -- checks 1, 2 and 6: is the push configured, and where does it go? ------------------------------------
    def hub_checks(self, call: ConfigCall) -> list[Check]:
        checks = [self.push_check(call)]
        pushes = _is_on(call.value("push_to_hub", False)) or bool(self.facts.lines("push", call))
        if "hub_model_id" in call.kwargs or (pushes and not call.opaque):
            checks += self.repo_id_checks(call)
        return checks

    def push_check(self, call: ConfigCall) -> Check:
        push = call.value("push_to_hub", False)
        where = f"{call.name}(...) (line {call.line})"
        fix = f'pass push_to_hub=True, hub_model_id="{self.suggested_id(call)}" to {where}'
        if self.keephub_saving:
            return _ok("push_to_hub", "keephub will push checkpoints itself")
        if not _is_on(push) and (kept := self.kept_in(call)):
            return _ok("push_to_hub", f"not needed: {kept}")
        if push is UNKNOWN:
            return _warn("push_to_hub", self.unresolved(call, "push_to_hub"), "write push_to_hub=True")
        if push:
            if self.pushes_during_training(call) or self.facts.lines("push", call) or self.facts.lines(
                    "save_model", call):
                return _ok("push_to_hub", f"push_to_hub=True (line {call.kwargs['push_to_hub'].line})")
            save, hub = self.setting(call, "save_strategy"), self.setting(call, "hub_strategy")
            return _fail("push_to_hub", "push_to_hub=True uploads only when a checkpoint is saved or "
                         f"trainer.push_to_hub() / save_model() is called; with save_strategy={save!r}, "
                         f"hub_strategy={hub!r} and neither call, nothing reaches the Hub",
                         'call trainer.push_to_hub() after trainer.train(), or save checkpoints with '
                         'save_strategy="steps" and hub_strategy="every_save"')
        if "push_to_hub" not in call.kwargs and call.opaque:
            return _warn("push_to_hub", f"not set in {where}, unless it comes from {', '.join(call.opaque)}, "
                         "which keephub cannot read", fix)
        state = ("push_to_hub=False" if "push_to_hub" in call.kwargs
                 else "push_to_hub is not set (it defaults to False)")
        if pushes := self.facts.lines("push", call):
            return _warn("push_to_hub", f"{state}: only the push_to_hub() call at line "
                         f"{pushes[0]} uploads, after training ends; a crash or the timeout "
                         "before then loses everything", fix)
        return _fail("push_to_hub", f"{state} in {where}: nothing is uploaded and every result is lost when "
                     "the job ends", fix)

    def kept_in(self, call: ConfigCall) -> str | None:
        """How the job's output survives it when output_dir lies in a read-write bucket volume; None otherwise."""
        output_dir = self.setting(call, "output_dir")
        if not isinstance(output_dir, str):
            return None
        where = posixpath.normpath(output_dir)
        for mount, bucket in self.bucket_mounts.items():
            if where == mount or where.startswith(mount + "/"):
                return (f"output_dir {output_dir} lies in the read-write volume of bucket {bucket} at {mount}: "
                        "keephub pushes what the job writes there to the bucket while it runs and when it ends")
        return None

    def pushes_during_training(self, call: ConfigCall) -> bool:
        save, hub = self.setting(call, "save_strategy"), self.setting(call, "hub_strategy")
        return save is UNKNOWN or hub is UNKNOWN or (save != "no" and hub != "end")

    def suggested_id(self, call: ConfigCall) -> str:
        repo_id = call.value("hub_model_id")
        if isinstance(repo_id, str) and repo_id.count("/") == 1:
            return repo_id
        return f"<namespace>/{_clean_name(_folder_name(call.value('output_dir'))) or '<name>'}"

    def repo_id_checks(self, call: ConfigCall) -> list[Check]:
        if "hub_model_id" not in call.kwargs:
            derived = _folder_name(self.setting(call, "output_dir")) or "<output_dir>"
            return [_fail("hub_model_id", "not set: the Trainer makes up the repo name from output_dir and "
                          f"pushes to <token owner>/{derived}, which may not be where you look for it",
                          f'pass hub_model_id="{self.suggested_id(call)}" to {call.name}(...)')]
        arg = call.kwargs["hub_model_id"]
        repo_id = arg.value
        if repo_id is UNKNOWN:
            return [_warn("hub_model_id", self.unresolved(call, "hub_model_id") + ", so its form and your "
                          "write access are not checked",
                          'write it as a literal, a variable, or os.environ.get("NAME", "namespace/name")')]
        if not isinstance(repo_id, str) or not repo_id:
            return [_fail("hub_model_id", f"{self.written(call, 'hub_model_id')} is not a repo id",
                          f'pass hub_model_id="{self.suggested_id(call)}"')]
        problem = _name_problem(repo_id)
        if problem:
            return [_fail("hub_model_id", f"{problem}; the push fails after training",
                          f'hub_model_id="{_clean_id(repo_id)}"')]
        if "/" not in repo_id:
            return [_warn("hub_model_id", f"{repo_id!r} has no namespace: the repo is created under the "
                          "token owner's account, and keephub cannot check write access",
                          f'write it as namespace/name: hub_model_id="<namespace>/{_clean_name(repo_id)}"')]
        namespace, name = repo_id.split("/")
        if name != name.lower():
            checks = [_warn("hub_model_id", f"{repo_id!r}: uppercase in repo names is discouraged on the Hub",
                            f'hub_model_id="{namespace}/{name.lower()}"')]
        else:
            shown = repo_id if arg.source == repr(repo_id) else f"{repo_id} (from {arg.source})"
            checks = [_ok("hub_model_id", shown)]
        if self.can_write is not None:
            checks.append(self.write_check(call, repo_id))
        if self.repo_files is not None:
            checks.append(self.repo_check(call, repo_id, self.repo_files(repo_id)))
        return checks

    def write_check(self, call: ConfigCall, repo_id: str) -> Check:
        """Judged for the token the push will use: the script's own `hub_token` cannot be looked at here."""
        assert self.can_write is not None
        token = call.kwargs.get("hub_token")
        if token is not None and token.value is not None:
            access = WriteAccess(None, f"the script pushes with its own token ({self.written(call, 'hub_token')}), "
                                 "which keephub does not look at before the run",
                                 'drop hub_token and pass secrets={"HF_TOKEN": "$HF_TOKEN"}, so keephub can '
                                 "check the token the push uses")
        else:
            access = self.can_write(repo_id)
        if access.allowed:
            return _ok("write access", f"the job's token can write to {repo_id}")
        if access.allowed is None:
            return _warn("write access", f"not checked for {repo_id}: {access.reason}",
                         access.fix or "make sure the job's token can write to it")
        return _fail("write access", f"the job's token cannot write to {repo_id}: {access.reason}",
                     access.fix or "push to a namespace you can write to (your own, or an organization where "
                     "you have the write role), or get write access to this one")

    def repo_check(self, call: ConfigCall, repo_id: str, files: list[str] | None) -> Check:
        if files is None:
            return _ok("target repo", f"{repo_id} is new; the first push creates it")
        content = [f for f in files if f not in _NEUTRAL_FILES]
        if not content:
            return _ok("target repo", f"{repo_id} exists and is empty")
        if any(posixpath.basename(f) in _TRAINING_OUTPUT or _CHECKPOINT_DIR.match(f.split("/")[0])
               for f in content):
            return _ok("target repo", f"{repo_id} already holds a trained model; this run's pushes are added "
                       "on top as new commits, the earlier ones stay in its history")
        examples = ", ".join(content[:3]) + (", ..." if len(content) > 3 else "")
        suffix = call.name.removesuffix("Config").lower() if call.name.endswith("Config") else "trained"
        return _warn("target repo", f"{repo_id} already holds {len(content)} files that do not look like a "
                     f"trained model ({examples}): this run's files would be mixed into it",
                     f'push to a new repo, e.g. hub_model_id="{repo_id}-{suffix}"')

    # -- checks 4 and 5: will the config construct, and does it save as it goes? -----------------------------
    def argument_checks(self, call: ConfigCall) -> list[Check]:
        installed = _installed(call.qualname)
        if installed.fields is None:
            if installed.missing:
                return [_fail(f"import {call.name}", f"{installed.problem}: the script stops before training",
                              installed.moved_to or f"use a config class that {installed.package} provides")]
            return [_warn("arguments", f"could not check {call.name}'s arguments: {installed.problem}",
                          "install the training extra on the keephub server: pip install 'keephub[train]'")]
        checks = []
        for key, arg in call.kwargs.items():
            if key in installed.fields or (arg.attribute and key in installed.attributes):
                continue
            effect = "it is silently ignored" if arg.attribute else "the script stops with TypeError"
            message = (f"{call.name} in {installed.package} has no argument {key!r} (line {arg.line}): "
                       f"{effect}")
            checks.append(_fail(f"argument {key}", message, _argument_fix(key, arg, call, installed.fields)))
        if checks:
            return checks
        if call.opaque:
            return [_warn("arguments", f"not checked for {', '.join(call.opaque)}, which keephub cannot read "
                          f"before the run; every other argument exists in {installed.package}'s {call.name}",
                          "pass the config's arguments as keywords, so they can be checked")]
        return [_ok("arguments", f"every argument passed exists in {installed.package}'s {call.name}")]

    def save_checks(self, call: ConfigCall) -> list[Check]:
        save = self.setting(call, "save_strategy")
        if save is not UNKNOWN and save not in SAVE_STRATEGIES:
            checks = [_fail("checkpoints", f"save_strategy={save!r} is not one of "
                            f"{', '.join(SAVE_STRATEGIES)}: the config raises ValueError",
                            'save_strategy="steps"')]
        else:
            checks = [self.checkpoint_check(call, save)]
        hub_check = self.hub_strategy_check(call)
        return [*checks, hub_check] if hub_check else checks

    def checkpoint_check(self, call: ConfigCall, save: Any) -> Check:
        duration = _duration(self.timeout_seconds)
        periodic = 'save_strategy="steps", save_steps=<steps in about half an hour>'
        if save is UNKNOWN:
            return _warn("checkpoints", f"not checked: {self.unresolved(call, 'save_strategy')}",
                         f"make sure it is {periodic}" if self.long else "write save_strategy as a literal")
        if save == "no":
            if not self.long:
                return _ok("checkpoints", f"none (save_strategy='no'), acceptable for a {duration} job")
            return _warn("checkpoints", f"save_strategy='no' saves nothing during this {duration} job: a "
                         "crash or the timeout loses all progress", f"{periodic}, save_total_limit=2")
        steps, max_steps = self.setting(call, "save_steps"), self.setting(call, "max_steps")
        if save == "steps":
            default = "" if "save_steps" in call.kwargs else " (default)"
            if not isinstance(steps, (int, float)):
                return _ok("checkpoints", f"with {self.written(call, 'save_steps')}")
            if steps < 1:
                return _ok("checkpoints", f"every {steps:.0%} of training")
            if self.long and isinstance(max_steps, int) and 0 < max_steps <= steps:
                return _warn("checkpoints", f"save_steps={steps:g}{default} but max_steps={max_steps}: the "
                             f"only save is at the end of this {duration} job",
                             f"save_steps={max(1, max_steps // 10)}")
            return _ok("checkpoints", f"every {steps:g} steps{default}")
        epochs = self.setting(call, "num_train_epochs")
        if (save == "epoch" and self.long and isinstance(epochs, (int, float)) and epochs <= 1
                and not (isinstance(max_steps, int) and max_steps > 0)):
            return _warn("checkpoints", f"save_strategy='epoch' with num_train_epochs={epochs:g}: the only "
                         f"save is at the end of this {duration} job", periodic)
        return _ok("checkpoints", "at the end of every epoch" if save == "epoch"
                   else "whenever the evaluation metric improves")

    def hub_strategy_check(self, call: ConfigCall) -> Check | None:
        """Only where it matters: when the script pushes, or resumes from a checkpoint."""
        hub = self.setting(call, "hub_strategy")
        push = call.value("push_to_hub", False)
        resume = next(iter(self.facts.lines("resume", call)), None)
        to_resume = ('hub_strategy="checkpoint": the latest checkpoint is then pushed to last-checkpoint/ '
                     "in the repo, where the next run can download it and resume")
        if not (_is_on(push) or resume):
            return None
        if hub is UNKNOWN:
            return _warn("hub_strategy", f"not checked: {self.unresolved(call, 'hub_strategy')}",
                         to_resume if resume else "write hub_strategy as a literal")
        if hub not in HUB_STRATEGIES:
            return _fail("hub_strategy", f"hub_strategy={hub!r} is not one of {', '.join(HUB_STRATEGIES)}: "
                         "the config raises ValueError",
                         'hub_strategy="every_save" (the default) or "checkpoint"')
        if resume and not self.keephub_saving and hub not in RESUMABLE_HUB_STRATEGIES:
            return _warn("hub_strategy", f"the script resumes from a checkpoint (line {resume}), but with "
                         f"hub_strategy={hub!r} checkpoints stay on the job's disk, which is wiped when the "
                         "job ends: a retried or new job has nothing to resume from", to_resume)
        if hub == "end" and push is True and self.long and not self.keephub_saving:
            return _warn("hub_strategy", "hub_strategy='end' pushes only when training ends: nothing from "
                         f"this {_duration(self.timeout_seconds)} job reaches the Hub before then",
                         'hub_strategy="every_save" (the default) or "checkpoint"')
        default = "" if "hub_strategy" in call.kwargs else " (default)"
        return _ok("hub_strategy", f"{hub!r}{default}: {_HUB_STRATEGY_MEANING[hub]}")


# Arguments TrainingArguments dropped, which old guides (and the reference's "Complete Example") still pass.
_REMOVED: dict[str, str] = {
    "push_to_hub_model_id": "hub_model_id",
    "push_to_hub_organization": "hub_model_id",  # the organization becomes hub_model_id's namespace
    "push_to_hub_token": "hub_token",
}


def _argument_fix(key: str, arg: Arg, call: ConfigCall, fields: dict[str, Any]) -> str:
    target = _REMOVED.get(key)
    if target in fields:
        repo_id = call.value("hub_model_id")
        if key == "push_to_hub_organization":
            name = repo_id.split("/")[-1] if isinstance(repo_id, str) else "<name>"
            if arg.value is None:
                return f'remove it; to push to an organization, name it in hub_model_id="<org>/{name}"'
            org = arg.value if isinstance(arg.value, str) else "<org>"
            return f'remove it and name the organization in hub_model_id="{org}/{name}"'
        if key == "push_to_hub_token":
            if arg.value is None:
                return "remove it; the token comes from the HF_TOKEN secret"
            return "remove it and pass the token as the HF_TOKEN secret, not in code"
        if target in call.kwargs and _same(call.kwargs[target].value, arg.value):
            return f"remove it; {target}={call.kwargs[target].source} already names the same repo"
        return f"rename it to {target}: {target}={arg.source}"
    matches = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
    if matches:
        return f"did you mean {matches[0]!r}? e.g. {matches[0]}={arg.source}"
    return f"remove it; {call.name}'s arguments are listed in its documentation"


def _name_problem(repo_id: str) -> str | None:
    """The Hub's naming rules, as the keephub server applies them, in the server's words."""
    try:
        if "/" in repo_id:
            naming.split_repo_id(repo_id)
        else:
            naming.check_repo_name(repo_id)
    except BadRequest as exc:
        return str(exc)
    return None


def _folder_name(output_dir: Any) -> str:
    return posixpath.basename(output_dir.rstrip("/")) if isinstance(output_dir, str) else ""


def _clean_name(name: str, lower: bool = True) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
    name = name.lower() if lower else name
    return re.sub(r"([-.])[-.]+", r"\1", name).strip("-.").removesuffix(".git")[:naming.MAX_NAME]


def _clean_id(repo_id: str) -> str:
    parts = [part.strip() for part in repo_id.split("/") if part.strip()]
    namespace, name = (parts[0], "-".join(parts[1:])) if len(parts) > 1 else ("<namespace>", "".join(parts))
    return f"{_clean_name(namespace, lower=False) or '<namespace>'}/{_clean_name(name) or '<name>'}"
