"""Component registries backed by entry points: one `ComponentRegistry` per kind of component.

Built-in components and third-party plugins take the same path: a distribution declares entry
points in the group `sphinx_mllm_<kind>` (for example `sphinx_mllm_encoders`), each naming one
factory. `register()` adds a component at run time, without packaging. Listing loads each entry
point, which imports the module that defines the factory but never calls it, so nothing is
built; a plugin whose import fails is reported (name, distribution, error) and skipped.

Built on `catalogue`: its `Registry` names the entry-point group and stores the run-time
registrations. Three of its behaviours are replaced here, for these reasons: catalogue reads the
entry points once, when it is first imported, so a plugin installed later in the process would
never be seen; it loads every entry point unguarded, so one broken plugin would break every
listing; and two distributions declaring the same name would silently shadow each other.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib.metadata
import inspect
import re
import warnings
from dataclasses import dataclass
from typing import Any

import catalogue

NAMESPACE = "sphinx_mllm"
RUNTIME_DISTRIBUTION = "<registered at run time>"
_KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_]*s$")


class UnknownComponentError(catalogue.RegistryError, LookupError):
    """A name that no entry point and no run-time registration provides."""


class PluginImportError(ImportError):
    """An entry point whose module or attribute could not be loaded."""


class PluginLoadWarning(UserWarning):
    """Issued once for each plugin that is skipped because it failed to load."""


@dataclass(frozen=True)
class PluginLoadError:
    """Why one entry point of a registry could not be loaded."""

    kind: str
    name: str
    distribution: str
    target: str
    error: str

    def __str__(self) -> str:
        return (
            f"{self.kind} plugin {self.name!r} from distribution {self.distribution!r} "
            f"({self.target}) failed to load and is skipped: {self.error}"
        )


@dataclass(frozen=True)
class ComponentInfo:
    """Where a registered component comes from, read without calling it."""

    kind: str
    name: str
    distribution: str
    target: str
    summary: str


def _distribution_name(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    return dist.metadata["Name"] if dist is not None else "<unknown distribution>"


class ComponentRegistry(catalogue.Registry):
    """The registry of one kind of component, e.g. `ComponentRegistry("encoders")`."""

    def __init__(self, kind: str) -> None:
        if not _KIND_PATTERN.match(kind):
            raise ValueError(
                f"Registry kind {kind!r} must be a plural snake_case noun, e.g. 'encoders'"
            )
        super().__init__((NAMESPACE, kind), entry_points=True)
        self.kind = kind
        self.singular = kind[:-1]
        self._declared_cache: dict[str, importlib.metadata.EntryPoint] | None = None
        self._loaded: dict[str, Any] = {}
        self._failures: dict[str, PluginLoadError] = {}

    def __repr__(self) -> str:
        return f"ComponentRegistry({self.kind!r}, group={self.group!r})"

    @property
    def group(self) -> str:
        """The entry-point group a plugin declares its components in."""
        return self.entry_point_namespace

    @property
    def load_errors(self) -> list[PluginLoadError]:
        """The plugins skipped so far because they failed to load."""
        return list(self._failures.values())

    def refresh(self) -> None:
        """Forget discovered entry points, so plugins installed since are seen."""
        self._declared_cache = None
        self._loaded.clear()
        self._failures.clear()

    # -- the public interface ------------------------------------------------------------------

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a shell wildcard pattern (`*dinov2*`); broken plugins skipped."""
        return sorted(name for name in self.get_all() if fnmatch.fnmatchcase(name, pattern))

    def get(self, name: str) -> Any:
        """The registered factory for `name`; run-time registrations win over entry points."""
        runtime_key = (*self.namespace, name)
        if runtime_key in catalogue.REGISTRY:
            return catalogue.REGISTRY[runtime_key]
        if name in self._declared():
            return self._load(name)
        raise UnknownComponentError(self._unknown_message(name))

    def info(self, name: str) -> ComponentInfo:
        """Provenance and one-line summary of a component."""
        component = self.get(name)
        own = getattr(
            component, "summary", None
        )  # objects such as merge methods describe themselves
        summary = (
            own
            if isinstance(own, str)
            else (inspect.getdoc(component) or "").strip().split("\n", 1)[0]
        )
        if (*self.namespace, name) in catalogue.REGISTRY:
            module = getattr(component, "__module__", "?")
            qualname = getattr(component, "__qualname__", type(component).__name__)
            return ComponentInfo(
                self.kind, name, RUNTIME_DISTRIBUTION, f"{module}:{qualname}", summary
            )
        entry_point = self._declared()[name]
        return ComponentInfo(
            self.kind, name, _distribution_name(entry_point), entry_point.value, summary
        )

    def unregister(self, name: str) -> None:
        """Remove a run-time registration (entry points are removed by uninstalling)."""
        runtime_key = (*self.namespace, name)
        if runtime_key not in catalogue.REGISTRY:
            raise UnknownComponentError(f"No {self.singular} {name!r} was registered at run time")
        del catalogue.REGISTRY[runtime_key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (
            (*self.namespace, name) in catalogue.REGISTRY or name in self._declared()
        )

    # -- catalogue's entry-point hooks, replaced (see the module docstring) --------------------

    def _get_entry_points(self) -> list[importlib.metadata.EntryPoint]:
        return list(self._declared().values())

    def get_entry_points(self) -> dict[str, Any]:
        loaded = {}
        for name in self._declared():
            try:
                loaded[name] = self._load(name)
            except PluginImportError:
                continue  # already recorded in load_errors and warned about by _load
        return loaded

    def get_entry_point(self, name: str, default: Any = None) -> Any:
        return self._load(name) if name in self._declared() else default

    # -- internals -----------------------------------------------------------------------------

    def _declared(self) -> dict[str, importlib.metadata.EntryPoint]:
        if self._declared_cache is None:
            declared: dict[str, importlib.metadata.EntryPoint] = {}
            for entry_point in importlib.metadata.entry_points(group=self.group):
                first = declared.setdefault(entry_point.name, entry_point)
                if first is not entry_point:
                    warnings.warn(
                        f"{self.singular} {entry_point.name!r} is declared by both "
                        f"{_distribution_name(first)!r} and {_distribution_name(entry_point)!r}; "
                        f"using {first.value} from {_distribution_name(first)!r}, the first on "
                        "sys.path",
                        PluginLoadWarning,
                        stacklevel=3,
                    )
            self._declared_cache = declared
        return self._declared_cache

    def _load(self, name: str) -> Any:
        if name in self._loaded:
            return self._loaded[name]
        entry_point = self._declared()[name]
        try:
            component = entry_point.load()
        except Exception as error:
            failure = PluginLoadError(
                kind=self.kind,
                name=name,
                distribution=_distribution_name(entry_point),
                target=entry_point.value,
                error=f"{type(error).__name__}: {error}",
            )
            if name not in self._failures:
                self._failures[name] = failure
                warnings.warn(str(failure), PluginLoadWarning, stacklevel=4)
            raise PluginImportError(str(failure)) from error
        self._loaded[name] = component
        return component

    def _unknown_message(self, name: str) -> str:
        known = sorted(self.get_all())
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        message = f"Unknown {self.singular} {name!r}."
        if close:
            message += f" Did you mean: {', '.join(close)}?"
        elif known:
            shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
            message += f" Registered {self.kind}: {shown}."
        else:
            message += f" No {self.kind} are registered."
        return message + f" Plugins declare entry points in the group {self.group!r}."
