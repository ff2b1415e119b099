"""Every hint names a system that exists, and a system's refusals name the system.

For every named system and every named env the system does not support (``supported`` of
``tests/test_systems.py``), the config is checked as the command line checks it
(``check_config``) and its refusal collected. The hint of a refusal, what follows its first
``; `` (what to change), may name a system to use instead: every bare name in it that is a
learner, a family or a system (``use td3 for a Box one``; not a key's value such as
``family: tag``) must be a named config of ``hmarl/configs/algorithms/``. A refusal of a
system whose family has another name (``hrl`` of the family ``hrl_cg``) must not speak of the
family as if the user had named it.
"""
from __future__ import annotations

import re

import pytest

from hmarl.algorithms import FAMILIES, LEARNERS
from hmarl.run.experiment import CONFIG_DIR, check_config, load_yaml, named_configs
from tests.test_systems import supported

SYSTEMS = sorted(named_configs("algorithms"))
ENVS = sorted(named_configs("envs"))
#: what a hint could mean as something to run instead
VOCABULARY = set(LEARNERS) | set(FAMILIES) | set(SYSTEMS)
NAME = re.compile(r"(?<![\w.=:-])[a-z][a-z0-9_]*(?![\w=:-])")

#: hints that name no system, in modules another change owns; each entry says what to write
KNOWN: dict[str, str] = {}  # system -> why its hints still name something that does not exist


def refusals(system: str) -> dict[str, str]:
    """env -> the refusal of ``system`` on each env it does not support (a few steps' budget)."""
    found = {}
    for env in ENVS:
        if supported(system, env):
            continue
        config = {**load_yaml(CONFIG_DIR / "default.yaml"), **load_yaml(named_configs()[system]),
                  **load_yaml(named_configs()[env])}
        config.update(num_envs=2, rollout_steps=40,  # each env at its own configured number of agents
                      total_steps=80, eval_envs=2, eval_interval=0, max_steps=40, progress=False,
                      checkpoint_interval=0)
        try:
            check_config(config, warn=lambda warning: None)
        except ValueError as error:
            found[env] = str(error)
    return found


def hint_names(message: str) -> list[str]:
    """The learner, family or system names a refusal's hint (after its first ``; ``) uses bare."""
    _, _, hint = message.partition("; ")
    without_keys = re.sub(r"\b\w+\s*[:=]\s*[\w.{}\[\]]+", " ", hint)  # `family: tag`, `device=cpu`: keys' values
    return [name for name in NAME.findall(without_keys) if name in VOCABULARY]


def test_hint_names_finds_bare_names_only():
    assert hint_names("level 0: DQN needs a Discrete action space; use td3 for a Box one") == ["td3"]
    assert hint_names("a flat system has exactly one level, got 2; use family: tag") == []
    assert hint_names("level 1: allocator reads the messages; give it group_size 1 and comm: concat") == []
    assert hint_names("TD3 needs a Box; use dqn for a Discrete one, or mappo") == ["dqn", "mappo"]


@pytest.mark.parametrize("system", [pytest.param(name, marks=pytest.mark.xfail(reason=KNOWN[name], strict=True))
                                    if name in KNOWN else name for name in SYSTEMS])
def test_refusals_name_real_systems(system):
    found = refusals(system)
    family = load_yaml(named_configs()[system])["family"]
    unknown = {env: names for env, message in found.items()
               if (names := [n for n in hint_names(message) if n not in SYSTEMS])}
    assert not unknown, f"{system}: hints name no system: {unknown} ({found})"
    if family != system:
        as_family = {env: message for env, message in found.items()
                     if re.match(rf"(level \d+: )?(the )?{family}\b", message)}
        assert not as_family, f"{system}'s refusals speak of {family}, not {system}: {as_family}"


def test_a_system_refusal_names_the_system():
    """Pins what started this: ``hrl`` on an env without goal dims said ``hrl_cg needs ...``, naming its
    family, not the system the user chose (``hrl`` now runs on every env: ``alma_nomask`` stands in)."""
    message = refusals("alma_nomask")["vmas_balance"]
    assert message.startswith("alma_nomask needs an env with entities; vmas_balance has")