"""hefl's family of models, by name.

``get_model("linear")`` returns the model users asked for with ``--model linear``. To add a
member, write one module with a :class:`~hefl.models.base.Model` subclass decorated with
:func:`register`, and import it below (README "Adding a model" has the steps and the test
pattern every model passes: the encrypted model equals the float64 replica).
"""

from __future__ import annotations

from hefl.errors import InvalidArgument
from hefl.models.base import Defaults, KernelForm, Model

_REGISTRY: dict[str, type[Model]] = {}


def register(cls: type[Model]) -> type[Model]:
    """Class decorator: make ``cls`` trainable as ``--model cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a model named {cls.name!r} is registered already")
    _REGISTRY[cls.name] = cls
    return cls


def model_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_model(name: str = "", *, interval: float = 0.0, classes: int = 0) -> Model:
    """The model called ``name`` ("" is logistic, hefl's original and default).

    Raises:
        InvalidArgument: No model has that name, or a multiclass model without classes.
    """
    cls = _REGISTRY.get(name or "logistic")
    if cls is None:
        raise InvalidArgument(f"unknown model {name!r}; hefl trains {sorted(_REGISTRY)}")
    return cls(interval=interval, classes=classes)


def _load_members() -> None:
    # Imported for their @register side effect; a new member adds its module here.
    from hefl.models import linear, logistic, multiclass, poisson  # noqa: F401


_load_members()


__all__ = ["Defaults", "KernelForm", "Model", "get_model", "model_names", "register"]
