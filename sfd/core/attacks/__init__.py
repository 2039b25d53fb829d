"""The attack library: what an attacker may perturb in a model (`TextSurface`, from its family's hook) and the
white-box attacks on it (`primitives`). Below the trainer: robust SFD (sfd/core/robust.py) trains against these same
primitives, and the evaluators (the robustness table, `sfd attack`) measure with them."""

from sfd.core.attacks.primitives import (AttackBudget, concept_vote_loss, conditioning_attack, inversion_attack, noise_attack,
                                         output_match_loss, soft_prompt_attack)
from sfd.core.attacks.surface import TextSurface, banned_tokens, nearest_tokens

__all__ = ["AttackBudget", "TextSurface", "banned_tokens", "concept_vote_loss", "conditioning_attack",
           "inversion_attack", "nearest_tokens", "noise_attack", "output_match_loss", "soft_prompt_attack"]
