"""Print the README's settings table from txwatch.settings (every TXWATCH_* variable).

    .venv/bin/python scripts/settings_table.py
"""

from __future__ import annotations

import ast
import inspect

from txwatch.settings import Settings


def rows() -> list[tuple[str, str, str]]:
    src = inspect.getsource(Settings)
    tree = ast.parse(src)
    cls = tree.body[0]
    assert isinstance(cls, ast.ClassDef)
    docs: dict[str, str] = {}
    body = cls.body
    for i, node in enumerate(body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            nxt = body[i + 1] if i + 1 < len(body) else None
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                text = " ".join(str(nxt.value.value).split())
                docs[node.target.id] = text.split(": ", 1)[1] if ": " in text else text
    out = []
    for name, field in Settings.model_fields.items():
        default = field.default if field.default_factory is None else field.default_factory()
        if hasattr(default, "get_secret_value"):
            default = "(secret)"
        if isinstance(default, dict):
            default = "{" + ", ".join(f"{k}: {v}" for k, v in list(default.items())[:3]) + (
                ", …}" if len(default) > 3 else "}")
        out.append((f"TXWATCH_{name.upper()}", f"`{default}`", docs.get(name, "")))
    return out


def table() -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{a}` | {b} | {c} |" for a, b, c in rows()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
