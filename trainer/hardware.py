"""What machine we are on, and which recipe profile suits it.

`cpu` is the offline fallback profile that trains the embedded tiny model on the recipe's bundled sample. On a
CUDA GPU no profile is needed: the memory planner (`trainer.plan`) fits the settings to the card. `GPU=4060`
(or any card name or size in GB that `trainer.plan` knows) names the card to plan for instead of the detected one.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from trainer.errors import UserError

class NoCudaForCard(UserError):
    """`GPU=<card>` on a machine without CUDA: said at once, before anything else is read or loaded."""


@dataclass(frozen=True)
class Hardware:
    cuda: bool
    name: str = "cpu"
    memory_gib: float = 0.0


@dataclass(frozen=True)
class ProfileChoice:
    name: str | None
    reason: str
    card: str | None = None
    """A card named by `GPU=` (not a recipe profile): the planner plans for it."""


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
    if requested != "auto" and requested not in available and is_card(requested):
        hardware = hardware if hardware is not None else detect()
        if not hardware.cuda:
            raise NoCudaForCard(f"GPU={requested} plans training for that card, but this machine has no CUDA GPU",
                            where="GPU", fix=f"see the plan without a GPU: make plan GPU={requested}; or train the "
                                             "tiny offline model here with GPU=cpu")
        return ProfileChoice(None, f"planned for {requested}", card=requested)
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
    return ProfileChoice(None, f"{hardware.name} with {hardware.memory_gib:.0f} GiB: settings from the planner")


def is_card(text: str) -> bool:
    """A card name or size that the planner knows (`4060`, `rtx 4090`, `12`)."""
    from trainer.plan import parse_card

    try:
        parse_card(text)
        return True
    except UserError:
        return False
