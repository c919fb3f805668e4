"""Model-extraction attacks on TF Serving image classifiers, as objects with one verb.

    from attack import Knockoff, KerasVictim, Surrogate

    result = Knockoff(budget=2000).extract(KerasVictim(model), transfer,
                                           surrogate=Surrogate(backbone="cnn", weights="none"))

Attacks (`attack.base.Attack`): `Knockoff` (Orekondy et al. 2019), `SemiSupervisedKnockoff`
(Jagielski et al. 2020), `Copycat` (da Silva et al. 2018), `JBDA` (Papernot et al. 2017),
`EquationSolving` (Tramèr et al. 2016), `FEE` (Jagielski et al. 2020), `DataFree` (DFME,
MAZE and a label-only DFMS-HL variant: no natural images), `Synthetic` (a procedural image
prior searched by the victim's answers: no natural images). Victims
(`attack.victim`): `ServingVictim` (gRPC), `RestVictim`, `KerasVictim`, `open_victim`. Each
attack's command line is ``python -m attack.<module>``.

The names are loaded on first use (PEP 562), so ``import attack`` and the CLIs' ``--help``
do not import TensorFlow.
"""

from __future__ import annotations

from common.lazy import lazy_exports

__all__ = [
    "FEE",
    "JBDA",
    "Attack",
    "Copycat",
    "DataFree",
    "EquationSolving",
    "ExtractionResult",
    "KerasVictim",
    "Knockoff",
    "RestVictim",
    "SemiSupervisedKnockoff",
    "ServingVictim",
    "Surrogate",
    "Synthetic",
    "Victim",
    "open_victim",
]

_WHERE = {
    "Attack": "attack.base",
    "ExtractionResult": "attack.base",
    "Surrogate": "attack.base",
    "Knockoff": "attack.knockoff",
    "SemiSupervisedKnockoff": "attack.knockoff",
    "Copycat": "attack.copycat",
    "DataFree": "attack.datafree",
    "Synthetic": "attack.synthetic",
    "JBDA": "attack.jbda",
    "EquationSolving": "attack.equation_solving",
    "FEE": "attack.fee",
    "Victim": "attack.victim",
    "ServingVictim": "attack.victim",
    "RestVictim": "attack.victim",
    "KerasVictim": "attack.victim",
    "open_victim": "attack.victim",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals(), __all__)
