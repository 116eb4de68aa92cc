"""``@app.task(pydantic=True)``: arguments validated into Pydantic models, model results dumped.

Celery 5.5's option, with its companions ``pydantic_strict``, ``pydantic_context`` and
``pydantic_dump_kwargs``. A message carries plain JSON; a parameter annotated with a
``BaseModel`` subclass (or ``Optional[...]`` of one) gets ``Model.model_validate(value)``, and a
returned model is stored as ``model.model_dump(mode="json", ...)``. Layer: task.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from typing import Any, Callable

from ..exceptions import ImproperlyConfigured


def _model_class(annotation: Any, base: type) -> type | None:
    """The model an annotation names: ``Model``, ``Model | None`` or ``Optional[Model]``."""
    if isinstance(annotation, type):
        return annotation if issubclass(annotation, base) else None
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _model_class(members[0], base)
    return None


def wrap(fun: Callable[..., Any], task_name: str, *, strict: bool = False,
         context: dict[str, Any] | None = None,
         dump_kwargs: dict[str, Any] | None = None) -> Callable[..., Any]:
    """``fun`` with its model-annotated arguments validated and a model result dumped."""
    try:
        import pydantic
    except ImportError:
        raise ImproperlyConfigured(
            f"task {task_name}: pydantic=True needs the 'pydantic' package: "
            f"pip install pydantic") from None
    base = pydantic.BaseModel
    signature = inspect.signature(fun)
    try:
        # string annotations (``from __future__ import annotations``, "Model") resolved
        hints = typing.get_type_hints(fun)
    except (NameError, AttributeError, TypeError):
        hints = {}
    models: dict[str, Any] = {}
    for name, parameter in signature.parameters.items():
        model = _model_class(hints.get(name, parameter.annotation), base)
        if model is not None:
            models[name] = model
    dump = {"mode": "json", **(dump_kwargs or {})}

    @functools.wraps(fun)
    def run(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        for name, model in models.items():
            if name in bound.arguments and bound.arguments[name] is not None:
                bound.arguments[name] = model.model_validate(
                    bound.arguments[name], strict=strict, context=context)
        result = fun(*bound.args, **bound.kwargs)
        if isinstance(result, base):
            return result.model_dump(**dump)
        return result

    return run
