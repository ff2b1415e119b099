"""An on-policy allocator whose agents learn from its advantage, on SaveTheCity.

ALMA's allocation structure with HiMPo's credit assignment, a pairing no paper has:

    level 1   1 PPO allocator  over all agents   every --period env steps, gives each agent a building
    level 0   N PPO agents     one per env agent every env step

- the allocator assigns every agent one of the ``S`` buildings (``command: discrete(S)``,
  a one-hot the agent sees after its observation; ``joint: false``: one action head per
  agent instead of ``S**N`` joint actions) and learns from the env reward over its period;
- each agent learns from the allocator's advantage for the allocation (``upper_advantage``)
  plus ``--env-reward-coef`` times its own env reward. ``--agent-reward subtask`` switches
  to ALMA's rule instead: the reward of the building it was assigned.

Unlike ALMA's allocator (``alma``: amortized Q-learning over proposals), this one is a PPO
policy with a fixed period; it does not re-allocate when a building finishes.

    python docs/examples/advantage_allocator_savethecity.py --steps 400000 --num-envs 32
    python docs/examples/advantage_allocator_savethecity.py --agent-reward subtask
"""
from __future__ import annotations

import argparse
import math

import torch

from hmarl.algorithms.build import build_levels
from hmarl.envs import make_env
from hmarl.run.experiment import CONFIG_DIR, evaluate, load_yaml
from hmarl.run.monitor import EpisodeMonitor


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-agents", type=int, default=3, help="agents (2 to 5); buildings = agents + 1")
    parser.add_argument("--period", type=int, default=5, help="env steps between allocations")
    parser.add_argument("--agent-reward", default="upper_advantage", choices=["upper_advantage", "subtask"])
    parser.add_argument("--env-reward-coef", type=float, default=0.0,
                        help="weight of an agent's env reward next to the allocator's advantage")
    parser.add_argument("--steps", type=int, default=400_000, help="env steps of training, all copies together")
    parser.add_argument("--num-envs", type=int, default=32, help="env copies stepping together")
    parser.add_argument("--rollout-steps", type=int, default=100,
                        help="env steps per copy between updates (a multiple of --period)")
    parser.add_argument("--eval-envs", type=int, default=8, help="copies of the greedy evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: envs, networks and buffers")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    def env(num_envs: int, seed: int) -> EpisodeMonitor:
        return EpisodeMonitor(make_env("savethecity", num_envs=num_envs, seed=seed, n_agents=args.n_agents,
                                       device=args.device))

    train_env = env(args.num_envs, args.seed)
    n_buildings = train_env.spec.entities.n_subtasks
    agents = {"learner": "ppo", "reward": args.agent_reward}
    if args.agent_reward == "upper_advantage":
        agents["reward_options"] = {"env_reward_coef": args.env_reward_coef}
    allocator = {"learner": "ppo", "group_size": "all", "joint": False, "period": args.period,
                 "command": f"discrete({n_buildings})", "options": {"gae_lambda": 0.0}}
    learner_options = {"ppo": {**load_yaml(CONFIG_DIR / "algorithms" / "ippo.yaml")["ppo"], "ent_coef": 0.01}}
    hierarchy = build_levels(train_env, [agents, allocator], learner_options).to(args.device)
    evaluator = hierarchy.attach(env(args.eval_envs, args.seed + 10_000))
    print(f"{args.n_agents} agents, {n_buildings} buildings; allocator actions {hierarchy.levels[1].io.action_space}, "
          f"agents learn from {type(hierarchy.levels[0].reward_rule).__name__}")

    iterations = max(1, args.steps // (args.num_envs * args.rollout_steps))
    hierarchy.reset(seed=args.seed)
    train_return, completed = math.nan, math.nan
    for iteration in range(iterations):
        hierarchy.rollout(args.rollout_steps)
        losses = hierarchy.update(progress=iteration / iterations)
        episode_metrics = train_env.pop_episode_metrics()  # before pop(), which counts the episodes
        mean_return, episodes = train_env.pop()
        if episodes:
            train_return, completed = mean_return, episode_metrics["completed"]
            env_steps = (iteration + 1) * args.num_envs * args.rollout_steps
            print(f"env steps {env_steps:>9,}  train/return {train_return:8.3f}  "
                  f"train/completed {completed:.3f}")

    final = evaluate(evaluator, seed=args.seed + 10_000)
    print("final metrics:")
    print(f"  train/return {train_return:.3f}")
    print(f"  train/completed {completed:.3f}")
    for name, value in final.items():
        print(f"  {name} {value:.3f}")
    for name, value in sorted(losses.items()):
        if name.endswith(("pg_loss", "v_loss")):
            print(f"  {name} {float(value):.4f}")


if __name__ == "__main__":
    main()
