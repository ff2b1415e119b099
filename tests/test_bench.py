"""The bench's update-bound limit runs each system's own gradient steps outside training
(``hmarl.studies.bench.limit_throughput``); it measures, so nothing here checks a speed."""
from hmarl.run.experiment import CONFIG_DIR, load_yaml
from hmarl.studies.bench import limit_throughput, system_config


def test_the_limit_takes_hrl_cg_managers_steps_in_their_update_context():
    # The manager's connected-gradient loss (Eq. 14) reads the worker's critic from the
    # update's context; outside one it failed ('NoneType' object has no attribute 'below_learner').
    shipped = load_yaml(CONFIG_DIR / "algorithms" / "hrl_cg.yaml")
    small = {"batch_size": 8, "hidden_sizes": [16], "learning_starts": 100, "random_steps": 100}
    blocks = {name: {**shipped[name], **{k: v for k, v in small.items() if k in shipped[name]}}
              for name in ("goal_manager", "td3")}
    run = system_config("hrl_cg", "point_maze", 1, 4, 1200, 1, "cpu", overrides=blocks)
    result = limit_throughput(run)
    # the worker takes one gradient step per env step; only the manager's own steps lift the
    # gradient steps above the env steps (a manager that never stepped would pass unseen)
    assert result["gradient_steps_per_s"] > result["steps_per_s"] > 0
