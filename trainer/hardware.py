"""What machine we are on, and which recipe profile suits it.

Profiles are named after consumer cards (`4060` = 8 GB, `4090` = 24 GB) plus `cpu`, the offline fallback that
trains the embedded tiny model on the recipe's bundled sample.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from trainer.errors import UserError

CARD_MEMORY_GIB = {"4060": 8.0, "4090": 24.0}
"""Memory of the consumer cards that recipe profiles are named after."""


@dataclass(frozen=True)
class Hardware:
    cuda: bool
    name: str = "cpu"
    memory_gib: float = 0.0


@dataclass(frozen=True)
class ProfileChoice:
    name: str | None
    reason: str


def detect() -> Hardware:
    """The first CUDA device, or the CPU."""
    import torch

    if not torch.cuda.is_available():
        return Hardware(cuda=False)
    props = torch.cuda.get_device_properties(0)
    return Hardware(cuda=True, name=props.name, memory_gib=props.total_memory / 2**30)


def pick_profile(requested: str, available: list[str], hardware: Hardware | None) -> ProfileChoice:
    """Resolve `profile` (a name, `auto` or `none`) against the recipe's profiles and the machine."""
    if requested == "none":
        return ProfileChoice(None, "no profile requested")
    if requested != "auto":
        if requested not in available:
            close = difflib.get_close_matches(requested, available, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UserError(f"unknown profile '{requested}'", where="profile",
                            fix=f"{hint}this recipe has: {', '.join(available) or 'none'}, or use auto / none")
        return ProfileChoice(requested, "requested")
    hardware = hardware if hardware is not None else detect()
    if not hardware.cuda:
        return ProfileChoice("cpu" if "cpu" in available else None, "no CUDA GPU found")
    cards = sorted((CARD_MEMORY_GIB[n], n) for n in available if n in CARD_MEMORY_GIB)
    if not cards:
        return ProfileChoice(None, f"{hardware.name}: the recipe has no card profile")
    fitting = [name for memory, name in cards if memory <= hardware.memory_gib + 0.5]
    name = fitting[-1] if fitting else cards[0][1]
    return ProfileChoice(name, f"{hardware.name} with {hardware.memory_gib:.0f} GiB")
