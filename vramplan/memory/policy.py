"""How the memory terms read the trainer's :class:`~vramplan.policy.Policy`.

:func:`vramplan.memory.estimate` hands the terms a :class:`PolicySetup`: the Setup with the
policy it is estimated under. A term reads ``policy_of(setup)`` (or one of the byte sizes
below); a plain Setup reads :func:`~vramplan.policy.default_policy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from vramplan.policy import POLICY_INPUTS, Policy, default_policy
from vramplan.setup import Setup
from vramplan.units import nbytes

if TYPE_CHECKING:
    from typing_extensions import Self


class PolicySetup(Setup):
    """A Setup with the trainer's policy beside it: what the terms are given."""

    policy: Policy

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; changing a field the policy was made from needs a policy made again
        (:func:`with_policy`), so it is refused here rather than kept stale."""
        if update and POLICY_INPUTS & update.keys():
            raise AssertionError(f"{sorted(POLICY_INPUTS & update.keys())} change the policy: use with_policy")
        return super().model_copy(update=update, deep=deep)


def with_policy(setup: Setup, policy: Policy) -> PolicySetup:
    """``setup`` (already validated) with ``policy`` beside it."""
    fields = {name: getattr(setup, name) for name in Setup.model_fields}
    return PolicySetup.model_construct(_fields_set=set(setup.model_fields_set), **fields, policy=policy)


def plain(setup: Setup) -> Setup:
    """``setup`` without its policy (a derived run the trainer's policy does not describe)."""
    if not isinstance(setup, PolicySetup):
        return setup
    fields = {name: getattr(setup, name) for name in Setup.model_fields}
    return Setup.model_construct(_fields_set=set(setup.model_fields_set) - {"policy"}, **fields)


def policy_of(setup: Setup) -> Policy:
    """The policy ``setup`` is estimated under."""
    return setup.policy if isinstance(setup, PolicySetup) else default_policy(setup)


def act_bytes(setup: Setup) -> int:
    """Bytes per activation element."""
    return nbytes(1, policy_of(setup).activations)


def upcast_kbit(setup: Setup) -> bool:
    """QLoRA after PEFT ``prepare_model_for_kbit_training``: embeddings, norms and lm_head are
    fp32 (not on GPTQ models), so the residual stream and every non-matmul op run in fp32."""
    return policy_of(setup).kbit_upcast


def residual_bytes(setup: Setup) -> int:
    """Bytes per element of the residual stream (:attr:`Policy.residual`)."""
    return nbytes(1, policy_of(setup).residual)


def pointwise_bytes(setup: Setup) -> int:
    """Bytes per element of MLP intermediates (:attr:`Policy.pointwise`)."""
    return nbytes(1, policy_of(setup).pointwise)
