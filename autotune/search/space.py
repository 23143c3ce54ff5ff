"""Declarative search spaces: dimensions with choices, conditions and derived values.

A space is YAML (``search_spaces/<name>.yaml`` or a user path)::

    name: megatron
    framework: megatron            # capability table used to reject layouts the framework cannot run
    dimensions:
      tp: {choices: [1, 2, 4, 8]}
      vpp: {choices: [1, 2, 4], when: "pp > 1", default: 1}
    fixed: {overlap_grad_reduce: true}
    derived: [dp, grad_accum]      # documentation: derived by ParallelConfig, never sampled

``when`` is a small boolean expression over earlier dimensions (comparisons, ``and``/``or``/``not``,
``in`` with a literal list); an inactive dimension takes its ``default``. A ``range`` ``[lo, hi]``
expands to the powers of two in it. The expert-parallel dimensions (:data:`EXPERT_DIMS`) apply to
mixture-of-experts models only: :meth:`SearchSpace.specialise` drops them for a dense model.
"""

from __future__ import annotations

import ast
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from autotune.config import DERIVE_KEYS
from autotune.errors import SpecError

__all__ = ["Dimension", "SearchSpace", "load_space", "space_names", "LAYOUT_KEYS", "EXPERT_DIMS"]

#: Dimensions a space may declare (the arguments of :func:`autotune.config.derive`, plus ``nodes``).
LAYOUT_KEYS = (*DERIVE_KEYS, "nodes")
#: Dimensions searched only for mixture-of-experts models (a dense model runs ep = etp = 1).
EXPERT_DIMS = ("ep", "etp")
_FRAMEWORKS = ("megatron", "deepspeed", "torchtitan", "any")
_NODES = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.Compare, ast.Name, ast.Load,
          ast.Constant, ast.List, ast.Tuple, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In,
          ast.NotIn)


def _compile_when(expr: str, where: str) -> Callable[[dict[str, Any]], bool]:
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise SpecError(f"{where}: invalid expression {expr!r}: {e.msg}") from e
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            raise SpecError(f"{where}: {type(node).__name__} is not allowed in {expr!r} "
                            "(allowed: names, literals, comparisons, and/or/not, in)")
    code = compile(tree, where, "eval")

    def when(values: dict[str, Any]) -> bool:
        return bool(eval(code, {"__builtins__": {}}, dict(values)))  # noqa: S307 - AST checked above

    return when


@dataclass(frozen=True)
class Dimension:
    """One searched dimension."""

    name: str
    choices: tuple[Any, ...]
    when: str | None = None
    default: Any = None
    _cond: Callable[[dict[str, Any]], bool] | None = field(default=None, compare=False, repr=False)
    expands: tuple[str, ...] = ()
    """For a joint dimension: the dimensions each choice (``"tp=2 pp=4 cp=1"``) sets."""

    def assign(self, values: dict[str, Any], value: Any) -> None:
        """Set this dimension's value (and, for a joint dimension, the values it stands for)."""
        values[self.name] = value
        if self.expands:
            values.update((k, int(v)) for k, v in (part.split("=") for part in str(value).split()))

    def active(self, values: dict[str, Any]) -> bool:
        """Whether the condition holds for the values chosen so far."""
        if self._cond is None:
            return True
        try:
            return self._cond(values)
        except NameError as e:
            raise SpecError(f"space.dimensions.{self.name}.when: {e} (conditions may use only earlier "
                            "dimensions)") from e


@dataclass(frozen=True)
class SearchSpace:
    """An ordered set of dimensions plus fixed values, for one framework."""

    name: str
    framework: str
    dimensions: tuple[Dimension, ...]
    fixed: dict[str, Any] = field(default_factory=dict)

    def sample(self, suggest: Callable[[str, tuple[Any, ...]], Any]) -> dict[str, Any]:
        """Pick a point define-by-run: ``suggest(name, choices)`` is called for active dimensions only."""
        values: dict[str, Any] = dict(self.fixed)
        for dim in self.dimensions:
            dim.assign(values, suggest(dim.name, dim.choices) if dim.active(values) else dim.default)
        return values

    def active_params(self, point: dict[str, Any]) -> dict[str, Any]:
        """The active dimensions' values of a full point (what a sampler records as a trial's params)."""
        rec: dict[str, Any] = {}
        self.sample(lambda name, _choices: rec.setdefault(name, point[name]))
        return rec

    def points(self) -> Iterator[dict[str, Any]]:
        """Every point of the space once (inactive dimensions at their default)."""
        for point, _ in self.points_with_params():
            yield point

    def points_with_params(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Every point of the space once, with its active params (what :meth:`active_params` returns)."""
        seen: set[tuple[Any, ...]] = set()

        def walk(i: int, values: dict[str, Any], active: dict[str, Any]) -> Iterator[tuple[dict, dict]]:
            if i == len(self.dimensions):
                key = tuple(values[d.name] for d in self.dimensions)
                if key not in seen:
                    seen.add(key)
                    yield dict(values), dict(active)
                return
            dim = self.dimensions[i]
            on = dim.active(values)
            for v in dim.choices if on else (dim.default,):
                dim.assign(values, v)
                yield from walk(i + 1, values, active | {dim.name: v} if on else active)

        yield from walk(0, dict(self.fixed), {})

    def specialise(self, *, layers: int, heads: int, seq_len: int, global_batch: int | list[int],
                   gpu_counts: list[int], experts: int = 0) -> SearchSpace:
        """Drop choices no layout of this problem can use, one dimension at a time.

        tp must divide heads and one of the GPU counts; pp must divide layers and a GPU count; cp must
        divide seq_len and a GPU count; vpp must divide layers; micro_batch must divide one of the global batch sizes;
        ep must divide ``experts`` (routed experts; 0 = a dense model, whose space loses the ep and etp
        dimensions) and a GPU count, etp a GPU count.
        Unconditional tp, pp and cp are then joined into one ``tp_pp_cp`` dimension of the products that
        divide a GPU count, so a sampler never spends trials on meshes that cannot exist (most of the
        raw product does not divide the GPU count, and samplers learn such constraints slowly).
        """
        batches = global_batch if isinstance(global_batch, list) else [global_batch]

        def fits(n: int) -> bool:
            return any(g % n == 0 for g in gpu_counts)

        rules = {
            "tp": lambda v: heads % v == 0 and fits(v),
            "pp": lambda v: layers % v == 0 and fits(v),
            "cp": lambda v: seq_len % v == 0 and fits(v),
            "vpp": lambda v: layers % v == 0,
            "micro_batch": lambda v: any(b % v == 0 for b in batches),
            "ep": lambda v: experts % v == 0 and fits(v),
            "etp": fits,
        }
        dims = []
        for d in self.dimensions:
            if d.name in EXPERT_DIMS and not experts:
                continue
            rule = rules.get(d.name)
            if rule is None:
                dims.append(d)
                continue
            kept = tuple(v for v in d.choices if isinstance(v, int) and rule(v))
            if not kept:
                raise SpecError(f"space.dimensions.{d.name}: no choice of {list(d.choices)} fits this model and "
                                f"cluster (layers={layers}, heads={heads}, seq_len={seq_len}, "
                                f"global_batch={global_batch}, gpus={gpu_counts}, experts={experts})")
            default = d.default if d.default in kept else kept[0]
            dims.append(Dimension(d.name, kept, d.when, default, d._cond))
        return SearchSpace(name=self.name, framework=self.framework, dimensions=_join_mesh(dims, gpu_counts),
                           fixed=dict(self.fixed))



MESH = ("tp", "pp", "cp")


def _join_mesh(dims: list[Dimension], gpu_counts: list[int]) -> tuple[Dimension, ...]:
    """Replace unconditional tp/pp/cp dimensions by one joint dimension of the divisible products."""
    members = [d for d in dims if d.name in MESH and d.when is None]
    if len(members) < 2:
        return tuple(dims)
    combos = [" ".join(f"{d.name}={v}" for d, v in zip(members, vals, strict=True))
              for vals in itertools.product(*(d.choices for d in members))
              if any(g % math.prod(vals) == 0 for g in gpu_counts)]
    joint = Dimension("_".join(d.name for d in members), tuple(combos), None, combos[0],
                      expands=tuple(d.name for d in members))
    first = dims.index(members[0])
    rest = [d for d in dims if d not in members]
    return tuple(rest[:first] + [joint] + rest[first:])


def _scalars(values: list[Any], where: str) -> None:
    """Optuna records only scalar choices (and points are keyed by them): no lists or mappings."""
    bad = [v for v in values if v is not None and not isinstance(v, (bool, int, float, str))]
    if bad:
        raise SpecError(f"{where}: {bad[0]!r} is not a number, string, boolean or null")


def _choices(name: str, body: dict[str, Any], where: str) -> tuple[Any, ...]:
    if "choices" in body:
        ch = body["choices"]
        if not isinstance(ch, list) or not ch:
            raise SpecError(f"{where}.choices: must be a non-empty list")
        _scalars(ch, f"{where}.choices")
        return tuple(ch)
    if "range" in body:
        r = body["range"]
        if not (isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) and x >= 1 for x in r)
                and r[0] <= r[1]):
            raise SpecError(f"{where}.range: must be [lo, hi] with 1 <= lo <= hi integers")
        return tuple(2**k for k in range(r[1].bit_length()) if r[0] <= 2**k <= r[1])
    raise SpecError(f"{where}: give 'choices' or 'range' (allowed keys: choices, range, when, default)")


def parse_space(data: dict[str, Any], source: str) -> SearchSpace:
    """Validate a space mapping."""
    allowed = {"name", "framework", "description", "dimensions", "fixed", "derived"}
    unknown = set(data) - allowed
    if unknown:
        raise SpecError(f"space.{sorted(unknown)[0]}: unknown field (allowed: {', '.join(sorted(allowed))})")
    framework = data.get("framework", "any")
    if framework not in _FRAMEWORKS:
        raise SpecError(f"space.framework: {framework!r} is not one of {', '.join(_FRAMEWORKS)}")
    dims_raw = data.get("dimensions")
    if not isinstance(dims_raw, dict) or not dims_raw:
        raise SpecError("space.dimensions: must be a non-empty mapping of dimension name to {choices|range}")
    dims = []
    for name, body in dims_raw.items():
        where = f"space.dimensions.{name}"
        if name not in LAYOUT_KEYS:
            raise SpecError(f"{where}: unknown dimension (allowed: {', '.join(LAYOUT_KEYS)})")
        if not isinstance(body, dict) or set(body) - {"choices", "range", "when", "default"}:
            raise SpecError(f"{where}: must be a mapping with keys choices|range, when, default")
        choices = _choices(name, body, where)
        when = body.get("when")
        cond = _compile_when(str(when), f"{where}.when") if when is not None else None
        default = body.get("default", choices[0])
        _scalars([default], f"{where}.default")
        dims.append(Dimension(name, choices, None if when is None else str(when), default, cond))
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, dict) or set(fixed) - set(LAYOUT_KEYS):
        raise SpecError(f"space.fixed: must map layout keys ({', '.join(LAYOUT_KEYS)}) to values")
    _scalars(list(fixed.values()), "space.fixed")
    return SearchSpace(name=str(data.get("name", source)), framework=framework, dimensions=tuple(dims),
                       fixed=dict(fixed))


def space_names() -> list[str]:
    """Spaces shipped with autotune."""
    root = resources.files("search_spaces")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_space(ref: str) -> SearchSpace:
    """A shipped space by name, or a user's YAML file."""
    if ref in space_names():
        text = resources.files("search_spaces").joinpath(f"{ref}.yaml").read_text(encoding="utf-8")
        source = ref
    else:
        path = Path(ref)
        if not path.is_file():
            raise SpecError(f"search.space: unknown space {ref!r} (allowed: {', '.join(space_names())}, "
                            "or a YAML path)")
        text, source = path.read_text(encoding="utf-8"), path.stem
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(f"search.space: {ref} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise SpecError(f"search.space: {ref} must hold a mapping")
    return parse_space(data, source)
