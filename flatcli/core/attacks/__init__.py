"""Adversarial attacks behind one interface (:class:`Attack`), one file each, and their registry.

* :mod:`.base`: the interface, the attack result and the restart selection;
* :mod:`.recording`: the trajectory recorder every attack calls per step;
* :mod:`.geometry`: steps, projection, random starts; :mod:`.checks`: option limits, presets, range checks;
* :mod:`.registry`: ``{kind: class}``, :func:`make_attack`, :func:`attack_kinds`;
* the attacks: :mod:`.pgd`, :mod:`.apgd`, :mod:`.square`, each registered below by one line.
"""

from flatcli.core.attacks.apgd import APGD
from flatcli.core.attacks.base import Attack, AttackResult, keep_better, least_likely
from flatcli.core.attacks.checks import MAX_RADIUS, MAX_RESTARTS, MAX_STEPS, PRESETS
from flatcli.core.attacks.geometry import NORMS, batch_generator
from flatcli.core.attacks.pgd import PGD, pgd
from flatcli.core.attacks.recording import Recorder
from flatcli.core.attacks.registry import ATTACKS, attack_class, attack_kinds, make_attack, register
from flatcli.core.attacks.square import DEFAULT_QUERIES, MAX_QUERIES, Square

register(PGD)
register(APGD)
register(Square)

__all__ = [
    "APGD", "ATTACKS", "Attack", "AttackResult", "DEFAULT_QUERIES", "MAX_QUERIES", "MAX_RADIUS", "MAX_RESTARTS",
    "MAX_STEPS", "NORMS", "PGD", "PRESETS", "Recorder", "Square", "attack_class", "attack_kinds",
    "batch_generator", "keep_better", "least_likely", "make_attack", "pgd", "register",
]
