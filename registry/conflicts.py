from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Registration:
    key: str
    value: object
    plugin: str
    builtin: bool


def pick_winners(registrations: list[Registration]) -> tuple[dict[str, Registration], list[str]]:
    """One registration per key. The rule: a third-party plugin overrides a built-in; between
    two third-party plugins the one whose entry-point name sorts first wins. CORRAL_PLUGINS
    chooses explicitly by leaving the loser out."""
    by_key: dict[str, list[Registration]] = {}
    for r in registrations:
        by_key.setdefault(r.key, []).append(r)
    winners, conflicts = {}, []
    for key, regs in by_key.items():
        regs = sorted(regs, key=lambda r: (r.builtin, r.plugin))
        winners[key] = regs[0]
        others = sorted({r.plugin for r in regs[1:] if r.plugin != regs[0].plugin})
        if others:
            conflicts.append(f"{key!r} registered by {regs[0].plugin} and {', '.join(others)}; "
                             f"{regs[0].plugin} wins")
    return winners, conflicts
