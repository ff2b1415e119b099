"""The one registry type: names known before their modules load, registration, clear lookups."""
import pytest

from hmarl.registry import Registry


def test_lookup_names_the_available_entries():
    rules = Registry("reward", {"sum_up": int})
    assert rules.lookup("sum_up") is int
    with pytest.raises(ValueError, match=r"^level 2: unknown reward 'sumup'; available: sum_up$"):
        rules.lookup("sumup", "level 2")


def test_register_decorates_and_lazy_entries_load_on_first_lookup():
    registry = Registry("learner")
    loaded = []

    @registry.register("mine")
    class Mine:
        pass

    registry.add_lazy("later", lambda: loaded.append(1) or float)
    assert list(registry) == ["mine", "later"] and "later" in registry and not loaded
    assert registry["mine"] is Mine and registry.lookup("later") is float and loaded == [1]
    registry.lookup("later")
    assert loaded == [1]


def test_every_named_part_is_a_registry():
    from hmarl.algorithms import FAMILIES, LEARNERS
    from hmarl.comm import COMMUNICATION
    from hmarl.envs import ENVS
    from hmarl.rewards import REWARD_RULES
    from hmarl.strategies import TERMINATIONS

    for registry in (FAMILIES, LEARNERS, COMMUNICATION, ENVS, REWARD_RULES, TERMINATIONS):
        assert isinstance(registry, Registry)
