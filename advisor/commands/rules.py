"""`npu-advise rules [CODE]`: list every rule, or print one rule's documentation."""
from __future__ import annotations

import click

from ..errors import UserError


@click.command()
@click.argument("code", required=False)
def rules(code):
    """List all rules (code, name, category), or show the documentation of rule CODE."""
    from ..rules import all_rules

    registry = all_rules()
    if code is None:
        width = max((len(r.name) for r in registry.values()), default=0)
        for r in registry.values():
            click.echo(f"{r.code}  {r.name:<{width}}  {r.category}")
        return
    rule = registry.get(code.strip().upper())
    if rule is None:
        raise UserError(f"unknown rule {code!r} (run `npu-advise rules` for the list)")
    click.echo(rule.text())
