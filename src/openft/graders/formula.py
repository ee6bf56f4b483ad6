"""`multi`'s `calculate_output`: arithmetic over the sub-graders' rewards, parsed and walked here, never `eval`-ed.

What OpenAI's graders guide allows: the sub-graders' names, numbers, `+ - * /`, `^` (power; `**` too),
parentheses, and the functions `min`, `max`, `abs`, `floor`, `ceil`, `exp`, `sqrt`, `log`. Anything else
(attributes, subscripts, comparisons, other names or functions, keyword arguments) makes the grader invalid.
Every number is a float, so `9 ^ 9 ^ 9` overflows at once instead of building a huge integer.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Iterable

from openft.graders.base import GraderInvalid, SampleError

FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "floor": lambda x: float(math.floor(x)),
    "ceil": lambda x: float(math.ceil(x)),
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
}
_ONE_ARGUMENT = ("abs", "floor", "ceil", "exp", "sqrt", "log")
_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}
MAX_LENGTH = 2000


def parse(formula: object, names: Iterable[str], param: str) -> ast.Expression:
    """Parse and check `formula`; raise GraderInvalid (naming `param`) for anything outside the whitelist."""
    if not isinstance(formula, str) or not formula.strip():
        raise GraderInvalid("`calculate_output` must be a non-empty formula", param=param)
    if len(formula) > MAX_LENGTH:
        raise GraderInvalid(f"`calculate_output` is longer than {MAX_LENGTH} characters", param=param)
    try:
        tree = ast.parse(formula.replace("^", "**").strip(), mode="eval")
    except SyntaxError as exc:
        raise GraderInvalid(f"`calculate_output` is not a formula: {exc.msg}", param=param) from None
    known = set(names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Expression | ast.Load | ast.USub | ast.UAdd) or type(node) in _BINARY:
            continue
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            continue
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            continue
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            continue
        if isinstance(node, ast.Name):
            if node.id in known or node.id in FUNCTIONS:
                continue
            raise GraderInvalid(
                f"`calculate_output` names `{node.id}`, which is neither a grader in `graders` "
                f"({', '.join(sorted(known)) or 'none'}) nor one of {', '.join(FUNCTIONS)}",
                param=param,
            )
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
                raise GraderInvalid(f"`calculate_output` may call only {', '.join(FUNCTIONS)}", param=param)
            name = node.func.id
            if (name in _ONE_ARGUMENT and len(node.args) != 1) or not node.args:
                raise GraderInvalid(f"`{name}` in `calculate_output` takes the wrong number of arguments", param=param)
            continue
        raise GraderInvalid(f"`calculate_output` may not contain `{ast.unparse(node)}`", param=param)
    called = {id(c.func) for c in ast.walk(tree) if isinstance(c, ast.Call)}
    for node in ast.walk(tree):  # a function's name used as a value
        if isinstance(node, ast.Name) and node.id in FUNCTIONS and node.id not in known and id(node) not in called:
            raise GraderInvalid(f"`{node.id}` in `calculate_output` must be called", param=param)
    return tree


def evaluate(tree: ast.Expression, values: dict[str, float]) -> float:
    """The formula's value; a math failure (division by zero, log of 0, overflow) is a sample error."""
    try:
        result = float(_walk(tree.body, values))
    except (ArithmeticError, ValueError) as exc:
        raise SampleError("other_error", f"calculate_output failed: {exc}") from None
    if not math.isfinite(result):
        raise SampleError("other_error", f"calculate_output gave {result}")
    return result


def _walk(node: ast.expr, values: dict[str, float]) -> float:
    if isinstance(node, ast.Constant):
        assert isinstance(node.value, int | float)  # parse() let no other constant through
        return float(node.value)
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.UnaryOp):
        operand = _walk(node.operand, values)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_walk(node.left, values), _walk(node.right, values))
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)
        return float(FUNCTIONS[node.func.id](*(_walk(a, values) for a in node.args)))
    raise AssertionError(ast.dump(node))
